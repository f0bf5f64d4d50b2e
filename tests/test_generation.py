"""Sampling and the decoding loop over the ONNX Runtime and torch backends, for every family."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ALL_FAMILIES
from seqserve.data import Tokenizer
from seqserve.errors import SeqserveError
from seqserve.export import load_export
from seqserve.generation import (DecodeState, SamplingParams, decode_step, filtered_probs, generate,
                                 generate_text, prefill, sample_next)
from seqserve.generation.loop import _TextStream
from seqserve.generation.sampling import make_rngs
from seqserve.models import build_model, make_config
from seqserve.runtime import OrtBackend, RuntimeOptions, create_session, make_backend
from seqserve.runtime.torch_backend import TorchBackend

# Per-family expectations. test_registry fails when a registered family has no entry here.
FAMILY_FACTS = {
    "rnn": dict(bounded_context=False, kv_cache=False),
    "lstm": dict(bounded_context=False, kv_cache=False),
    "gru": dict(bounded_context=False, kv_cache=False),
    "gpt": dict(bounded_context=True, kv_cache=True),
}
PROMPTS = ["def main(", "x", "import os\nimport sys\n\n"]   # different lengths on purpose
GREEDY = SamplingParams(max_tokens=12, greedy=True)


# --- sampling ----------------------------------------------------------------------------------

def rand_logits(shape, seed=0):
    return np.random.default_rng(seed).normal(0, 2, shape).astype(np.float32)


def test_greedy_is_argmax():
    logits = rand_logits((5, 40))
    want = logits.argmax(-1)
    for p in (SamplingParams(greedy=True), SamplingParams(temperature=0.0)):
        assert p.is_greedy
        got = sample_next(logits, p, make_rngs(p, 5))
        assert got.dtype == np.int64 and np.array_equal(got, want)


def test_top_k_1_is_greedy():
    logits = rand_logits((6, 40), seed=1)
    p = SamplingParams(top_k=1, temperature=1.5, seed=0)
    for _ in range(5):
        assert np.array_equal(sample_next(logits, p, make_rngs(p, 6)), logits.argmax(-1))


def test_top_k_keeps_the_k_most_likely():
    probs = np.array([0.1, 0.4, 0.05, 0.3, 0.15])
    got = filtered_probs(np.log(probs), SamplingParams(top_k=2))
    np.testing.assert_allclose(got, [0, 0.4 / 0.7, 0, 0.3 / 0.7, 0], atol=1e-12)


@pytest.mark.parametrize("top_p, kept", [(0.3, [1]), (0.6, [1, 3]), (0.8, [1, 3, 4]), (0.93, [1, 3, 4, 0]),
                                         (0.99, [1, 3, 4, 0, 2])])
def test_top_p_keeps_the_smallest_nucleus(top_p, kept):
    probs = np.array([0.1, 0.4, 0.05, 0.3, 0.15])        # sorted: 0.4, 0.3, 0.15, 0.1, 0.05
    got = filtered_probs(np.log(probs), SamplingParams(top_p=top_p))
    want = np.zeros(5)
    want[kept] = probs[kept] / probs[kept].sum()
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_top_p_and_top_k_together():
    probs = np.array([0.1, 0.4, 0.05, 0.3, 0.15])
    got = filtered_probs(np.log(probs), SamplingParams(top_k=3, top_p=0.6))   # top 3, then 0.4 + 0.3 of it
    np.testing.assert_allclose(got, [0, 0.4 / 0.7, 0, 0.3 / 0.7, 0], atol=1e-12)


def test_temperature_sharpens_and_flattens():
    logits = rand_logits((30,), seed=2)
    soft = np.exp(logits - logits.max())
    np.testing.assert_allclose(filtered_probs(logits, SamplingParams()), soft / soft.sum(), rtol=1e-6)
    maxp = [filtered_probs(logits, SamplingParams(temperature=t)).max() for t in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert maxp == sorted(maxp, reverse=True) and maxp[0] > 0.8 and maxp[-1] < 0.3
    ent = lambda q: -(q[q > 0] * np.log(q[q > 0])).sum()   # noqa: E731
    assert ent(filtered_probs(logits, SamplingParams(temperature=0.5))) < ent(filtered_probs(logits, SamplingParams()))


def test_seed_determinism():
    logits = np.zeros((3, 50), np.float32)                  # flat: every token equally likely
    draw = lambda p: np.stack([sample_next(logits, p, rngs) for rngs in [make_rngs(p, 3)] for _ in range(20)])  # noqa: E731
    a, b = draw(SamplingParams(seed=11)), draw(SamplingParams(seed=11))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, draw(SamplingParams(seed=12)))
    assert not np.array_equal(a[:, 0], a[:, 1])           # each prompt has its own generator


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_tokens=0), "max_tokens must be >= 1"),
    (dict(temperature=-0.1), "temperature must be a finite number >= 0"),
    (dict(top_k=-1), "top_k must be >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(stop=("ok", "")), "stop strings must not be empty"),
        (dict(temperature=float("nan")), "temperature must be a finite number"),
])
def test_sampling_params_validation(kwargs, match):
    with pytest.raises(SeqserveError, match=match):
        SamplingParams(**kwargs)


# --- stop-string streaming (unit) --------------------------------------------------------------

def test_text_stream_holds_back_a_possible_stop_string():
    tok = Tokenizer.fit("abcdx", "char")
    s = _TextStream(tok, ("bcd",))
    deltas = [s.push(t) for t in tok.encode("abxbcd")]
    assert deltas == [("a", False), ("", False), ("bx", False), ("", False), ("", False), ("", True)]
    s = _TextStream(tok, ("bcd",))
    assert [s.push(t)[0] for t in tok.encode("abc")] == ["a", "", ""]
    assert s.flush() == "bc"                               # no stop after all: the rest is shown


def test_text_stream_byte_kind_waits_for_whole_characters():
    tok = Tokenizer.fit("", "byte")
    s = _TextStream(tok, ())
    assert [s.push(t)[0] for t in tok.encode("é!")] == ["", "é", "!"]


# --- decoding loop, every family ---------------------------------------------------------------

@pytest.fixture(scope="module")
def backends(exported):
    cache = {}

    def get(family: str, kind: str = "ort", **options):
        key = (family, kind, tuple(sorted(options.items())))
        if key not in cache:
            info = load_export(exported(family))
            cache[key] = info, make_backend(info, kind, options=RuntimeOptions(**options))
        return cache[key]

    return get


def run(backends, family, prompts, params, kind="ort", **options):
    info, be = backends(family, kind, **options)
    return generate_text(be, info.tokenizer, prompts, params, info.max_context)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_ort_and_torch_give_identical_greedy_tokens(backends, family):
    ort = run(backends, family, PROMPTS, GREEDY)
    torch_ = run(backends, family, PROMPTS, GREEDY, kind="torch")
    assert [c.tokens for c in ort] == [c.tokens for c in torch_]
    assert [c.text for c in ort] == [c.text for c in torch_]
    assert all(c.finish_reason in ("length", "eos") for c in ort)
    assert all(c.prompt == p for c, p in zip(ort, PROMPTS))


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_incremental_decoding_matches_the_full_graph(backends, family):
    info, be = backends(family)
    full = create_session(info.graph_path("full"))
    ids = info.tokenizer.encode("for i in range(10):")
    logits, state = prefill(be, ids[:7])
    for t in ids[7:]:
        logits, state = decode_step(be, state, np.array([t], np.int64))
    (ref,) = full.run(["logits"], {"input_ids": np.array([ids], np.int64)})
    np.testing.assert_allclose(logits[0], ref[0, -1], atol=2e-4, rtol=1e-3)
    assert state.positions.tolist() == [len(ids)]
    if FAMILY_FACTS[family]["kv_cache"]:
        assert state.mask.shape == (1, len(ids)) and state.mask.all()
    else:
        assert state.mask is None


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_merged_prefill_states(backends, family):
    info, be = backends(family)
    short, long = info.tokenizer.encode("ab"), info.tokenizer.encode("abcdef")
    (_, s1), (_, s2) = prefill(be, short), prefill(be, long)
    merged = DecodeState.merge([s1, s2], be)
    assert merged.batch == 2 and merged.positions.tolist() == [2, 6]
    if FAMILY_FACTS[family]["kv_cache"]:                 # left-padded KV cache, masked
        assert merged.mask.tolist() == [[0, 0, 0, 0, 1, 1], [1] * 6]
        for pair in merged.spec.state:
            assert be.to_host(merged.state[pair.input]).shape[pair.seq_axis] == 6
    else:                                                # fixed-size state: concatenated
        assert merged.mask is None
        for name, v in merged.state.items():
            np.testing.assert_array_equal(be.to_host(v), np.concatenate([be.to_host(s1.state[name]),
                                                                         be.to_host(s2.state[name])]))
    # One batched decode step gives each row its own result.
    tok = np.array([5, 6], np.int64)
    logits, _ = decode_step(be, merged, tok)
    a, _ = decode_step(be, s1, tok[:1])
    b, _ = decode_step(be, s2, tok[1:])
    np.testing.assert_allclose(logits, np.concatenate([a, b]), atol=2e-4, rtol=1e-3)
    # select keeps rows
    only = merged.select([1], be)
    assert only.batch == 1 and only.positions.tolist() == [6]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_batched_prompts_give_the_same_tokens_as_each_alone(backends, family):
    batched = run(backends, family, PROMPTS, GREEDY)
    alone = [run(backends, family, [p], GREEDY)[0] for p in PROMPTS]
    assert [c.tokens for c in batched] == [c.tokens for c in alone]
    assert [c.text for c in batched] == [c.text for c in alone]

    # Rows that stop early leave the batch (select); the others must not notice.
    first = batched[0].text
    stop = first[2:4] if len(first) >= 4 else first[:1] or "\n"
    params = SamplingParams(max_tokens=12, greedy=True, stop=(stop,))
    batched = run(backends, family, PROMPTS, params)
    alone = [run(backends, family, [p], params)[0] for p in PROMPTS]
    assert [(c.tokens, c.text, c.finish_reason) for c in batched] == [(c.tokens, c.text, c.finish_reason) for c in alone]
    assert batched[0].finish_reason == "stop"


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_stop_string_ends_the_text_before_it_and_is_never_streamed(backends, family):
    info, be = backends(family)
    free = SamplingParams(max_tokens=40, temperature=1.0, seed=3, stop_at_eos=False)
    text = run(backends, family, ["def "], free)[0].text
    assert len(text) >= 12, text
    stop = text[len(text) // 3: len(text) // 3 + 3]
    expected = text[: text.find(stop)]

    params = SamplingParams(max_tokens=40, temperature=1.0, seed=3, stop_at_eos=False, stop=(stop,))
    events = list(generate(be, info.tokenizer, ["def "], params, info.max_context))
    deltas = [e.text for e in events]
    assert "".join(deltas) == expected
    assert all(stop not in d for d in deltas) and stop not in "".join(deltas)
    assert [e.finish_reason for e in events] == [None] * (len(events) - 1) + ["stop"]
    assert all(e.index == 0 for e in events)
    assert len(events) < 40


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_max_tokens_is_respected(backends, family):
    params = SamplingParams(max_tokens=5, temperature=1.0, seed=0, stop_at_eos=False)
    out = run(backends, family, PROMPTS, params)
    assert [len(c.tokens) for c in out] == [5, 5, 5]
    assert {c.finish_reason for c in out} == {"length"}


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_seeded_sampling_is_reproducible(backends, family):
    params = SamplingParams(max_tokens=20, temperature=1.0, seed=5)
    a, b = run(backends, family, PROMPTS, params), run(backends, family, PROMPTS, params)
    assert [c.tokens for c in a] == [c.tokens for c in b]
    c = run(backends, family, PROMPTS, SamplingParams(max_tokens=20, temperature=1.0, seed=6))
    assert [x.tokens for x in a] != [x.tokens for x in c]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_prompt_errors(backends, family):
    info, be = backends(family)
    with pytest.raises(SeqserveError, match="prompt 1 is empty"):
        list(generate(be, info.tokenizer, ["ok", ""], GREEDY, info.max_context))
    oov = next(c for c in "☃€Ωж" if c not in info.tokenizer.chars)
    with pytest.raises(SeqserveError, match=repr(oov)):
        list(generate(be, info.tokenizer, [f"x{oov}"], GREEDY, info.max_context))


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_context_limit(backends, family):
    info, be = backends(family)
    assert (info.max_context is not None) == FAMILY_FACTS[family]["bounded_context"]
    if info.max_context is None:
        out = run(backends, family, [" " * 300], SamplingParams(max_tokens=2, greedy=True))
        assert len(out[0].tokens) >= 1                       # recurrent: no positional limit
        return
    n = info.max_context
    with pytest.raises(SeqserveError, match=f"context of {n} positions"):
        list(generate(be, info.tokenizer, [" " * (n + 1)], GREEDY, n))
    with pytest.raises(SeqserveError, match="prompt 0 has 250 tokens; with max_tokens 12"):
        list(generate(be, info.tokenizer, [" " * 250], GREEDY, n))
    # Up to the limit exactly is fine: the last position used is max_context - 1.
    params = SamplingParams(max_tokens=6, greedy=True, stop_at_eos=False)
    out = run(backends, family, [" " * (n - 6)], params)
    assert len(out[0].tokens) == 6


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_io_binding_on_cpu_gives_the_plain_output(backends, family):
    _, bound = backends(family, io_binding=True)
    assert bound._binding is not None
    plain = run(backends, family, PROMPTS, GREEDY)
    got = run(backends, family, PROMPTS, GREEDY, io_binding=True)
    assert [c.tokens for c in got] == [c.tokens for c in plain]
    # Early finishers leave the batch: select/merge on device values.
    stop = plain[1].text[1:3] or plain[1].text[:1] or " "
    params = SamplingParams(max_tokens=12, greedy=True, stop=(stop,))
    a = run(backends, family, PROMPTS, params)
    b = run(backends, family, PROMPTS, params, io_binding=True)
    assert [(c.tokens, c.finish_reason) for c in a] == [(c.tokens, c.finish_reason) for c in b]


def test_io_binding_keeps_state_as_device_values(backends):
    import onnxruntime as ort

    info, be = backends("gpt", io_binding=True)
    logits, state = prefill(be, info.tokenizer.encode("abc"))
    assert isinstance(logits, np.ndarray)
    assert all(isinstance(v, ort.OrtValue) for v in state.state.values())
    logits2, state2 = decode_step(be, state, np.array([4], np.int64))
    assert be.to_host(state2.state["past_key_values.0.key"]).shape[2] == 4
    _, plain = backends("gpt")
    ref, _ = decode_step(plain, prefill(plain, info.tokenizer.encode("abc"))[1], np.array([4], np.int64))
    np.testing.assert_allclose(logits2, ref, atol=1e-6, rtol=1e-6)


# --- finish reasons with a model that always says <eos> ----------------------------------------

def eos_model():
    torch.manual_seed(0)
    tok = Tokenizer.fit("abcdef", "char")
    model = build_model("gru", make_config("gru", "tiny", tok.vocab_size))
    with torch.no_grad():
        model.head.bias[tok.eos_id] = 100.0
    return TorchBackend(model), tok


def test_finish_reason_eos():
    be, tok = eos_model()
    events = list(generate(be, tok, ["abc", "f"], SamplingParams(max_tokens=8, greedy=True)))
    assert [(e.index, e.token, e.text, e.finish_reason) for e in events] == [(0, 2, "", "eos"), (1, 2, "", "eos")]
    out = generate_text(be, tok, ["abc"], SamplingParams(max_tokens=4, greedy=True, stop_at_eos=False))
    assert out[0].tokens == [2, 2, 2, 2] and out[0].text == "" and out[0].finish_reason == "length"


# --- devices -----------------------------------------------------------------------------------

def _cuda_usable() -> bool:
    import onnxruntime as ort

    gpu = Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None
    return gpu and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(_cuda_usable(), reason="a GPU and the CUDA provider are present: no fallback to report")
def test_cuda_without_a_gpu_says_it_fell_back(exported):
    info = load_export(exported("rnn"))
    with pytest.raises(SeqserveError, match="fell back to CPU"):
        OrtBackend(info, options=RuntimeOptions(device="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_usable(), reason="needs an NVIDIA GPU and onnxruntime-gpu's CUDA provider")
@pytest.mark.parametrize("family", ["gpt", "lstm"])
def test_cuda_io_binding_matches_cpu(exported, family):
    # On CUDA the state stays on the device between steps (I/O binding); tokens must not change.
    info = load_export(exported(family))
    params = SamplingParams(max_tokens=24, greedy=True, stop_at_eos=False)
    prompts = ["def ", "import os\n"]
    cpu = generate_text(OrtBackend(info), info.tokenizer, prompts, params, info.max_context)
    gpu = generate_text(OrtBackend(info, options=RuntimeOptions(device="cuda")), info.tokenizer, prompts, params,
                        info.max_context)
    assert [c.tokens for c in gpu] == [c.tokens for c in cpu]


def test_unknown_device_and_backend(exported):
    info = load_export(exported("rnn"))
    with pytest.raises(SeqserveError, match="unknown device 'tpu'"):
        make_backend(info, options=RuntimeOptions(device="tpu"))
    with pytest.raises(SeqserveError, match="unknown backend 'jax'"):
        make_backend(info, "jax")
    with pytest.raises(SeqserveError, match="does not exist"):
        create_session(info.path / "nope.onnx")
