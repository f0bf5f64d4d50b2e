"""Beam search (seqserve/generation/beam.py): against an exhaustive search over a tiny vocabulary
and short lengths (with enough beams it must find the exact best), beams=1 against greedy, the
same hypotheses from ONNX Runtime and torch on real exports, and bad parameters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from seqserve.errors import SeqserveError
from seqserve.generation import SamplingParams, generate_text
from seqserve.generation.beam import BeamParams, _log_softmax, beam_search
from seqserve.tasks.causal_lm import causal_lm_spec


class ToyLM:
    """A backend whose next-token logits are a fixed random function of (last token, position):
    small enough to enumerate every continuation. Its one state tensor holds the position."""

    name = "toy"

    def __init__(self, vocab: int = 4, seed: int = 0):
        self.vocab = vocab
        self.spec = causal_lm_spec("toy", vocab, [("past_h", "present_h", ("batch", 1, 1), None)], {}).step
        self.table = np.random.default_rng(seed).normal(size=(vocab, 16, vocab)) * 2   # (last, pos, V)

    def run(self, feeds):
        ids, h = feeds["input_ids"], feeds["past_h"]           # (B, S), (B, 1, 1)
        pos = h[:, 0, 0].astype(int)
        logits = np.stack([self.table[ids[:, s], pos + s] for s in range(ids.shape[1])], axis=1)
        return {"logits": logits.astype(np.float32), "present_h": (h + ids.shape[1]).astype(np.float32)}

    def to_host(self, v):
        return v

    def from_host(self, a):
        return a


def exhaustive_best(be: ToyLM, prompt: list[int], max_tokens: int, eos: int, length_penalty: float):
    """The best (score, tokens) over every sequence that ends in <eos> or reaches max_tokens."""
    def logprobs(prefix):
        out = be.run({"input_ids": np.array([prompt + list(prefix)]), "past_h": np.zeros((1, 1, 1), np.float32)})
        return _log_softmax(out["logits"][:, -1])[0]

    best = None
    for n in range(1, max_tokens + 1):
        for seq in itertools.product(range(be.vocab), repeat=n):
            if eos in seq[:-1] or (n < max_tokens and seq[-1] != eos):
                continue
            total = sum(logprobs(seq[:i])[seq[i]] for i in range(n))
            score = total / n ** length_penalty
            if best is None or score > best[0] + 1e-12:
                best = (score, seq)
    return best


@pytest.mark.parametrize("length_penalty", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("eos", [0, 3])
@pytest.mark.parametrize("max_tokens", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_enough_beams_find_the_exhaustive_best(length_penalty, eos, max_tokens, seed):
    be = ToyLM(seed=seed)
    hyps = beam_search(be, [1, 2], BeamParams(beams=64, max_tokens=max_tokens, length_penalty=length_penalty), eos)
    score, tokens = exhaustive_best(be, [1, 2], max_tokens, eos, length_penalty)
    assert hyps[0].tokens == tokens
    assert hyps[0].score == pytest.approx(score, abs=1e-9)
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert all(h.finish_reason == ("eos" if h.tokens[-1] == eos else "length") for h in hyps)


def test_fewer_beams_are_never_better_than_exhaustive_and_often_equal():
    hits = 0
    for seed in range(6):
        be = ToyLM(seed=seed)
        best = exhaustive_best(be, [1], 4, 0, 1.0)
        got = beam_search(be, [1], BeamParams(beams=3, max_tokens=4, length_penalty=1.0), 0)[0]
        assert got.score <= best[0] + 1e-9
        hits += got.tokens == best[1]
    assert hits >= 3, hits      # a beam of 3 over 4 tokens finds the best most of the time


def test_one_beam_without_eos_is_greedy():
    be = ToyLM(seed=3)
    [hyp] = beam_search(be, [2], BeamParams(beams=1, max_tokens=6, stop_at_eos=False), eos_id=0)
    greedy, ids = [], [2]
    for _ in range(6):
        logits = be.run({"input_ids": np.array([ids]), "past_h": np.zeros((1, 1, 1), np.float32)})["logits"]
        ids.append(int(logits[0, -1].argmax()))
        greedy.append(ids[-1])
    assert list(hyp.tokens) == greedy


@pytest.mark.parametrize("bad", [dict(beams=0), dict(beams=65), dict(beams=True), dict(beams=2.0),
                                 dict(max_tokens=0), dict(length_penalty=-1.0), dict(length_penalty=float("nan"))])
def test_bad_beam_parameters_are_clear_errors(bad):
    with pytest.raises(SeqserveError):
        BeamParams(**bad)


@pytest.mark.parametrize("family", ["lstm", "gpt"])
def test_beams_are_identical_from_onnxruntime_and_torch(exported, family):
    from seqserve.export import load_export
    from seqserve.runtime import make_backend

    info = load_export(exported(family))
    ids = info.tokenizer.encode("def ")
    params = BeamParams(beams=4, max_tokens=12)
    ort = beam_search(make_backend(info, "ort"), ids, params, info.tokenizer.eos_id)
    torch = beam_search(make_backend(info, "torch"), ids, params, info.tokenizer.eos_id)
    assert [h.tokens for h in ort] == [h.tokens for h in torch]
    assert np.allclose([h.score for h in ort], [h.score for h in torch], atol=1e-4)
    assert len(ort) == 4 and len({h.tokens for h in ort}) == 4
    # the best beam is at least as likely as greedy decoding of the same length
    greedy = generate_text(make_backend(info, "ort"), info.tokenizer, ["def "],
                           SamplingParams(max_tokens=12, greedy=True, stop_at_eos=False))[0]
    g = beam_search(make_backend(info, "ort"), ids, BeamParams(beams=1, max_tokens=12, stop_at_eos=False),
                    info.tokenizer.eos_id)[0]
    assert list(g.tokens) == greedy.tokens
    best_no_eos = beam_search(make_backend(info, "ort"), ids, BeamParams(beams=4, max_tokens=12, stop_at_eos=False),
                              info.tokenizer.eos_id)[0]
    assert best_no_eos.logprob >= g.logprob - 1e-6


def test_generate_cli_with_beams(exported):
    from helpers import assert_one_line_error, run

    res = run("generate", exported("lstm"), "--prompt", "def ", "--beams", "3", "--max-tokens", "8")
    assert res.exit_code == 0, res.output
    assert any(line.startswith("def ") for line in res.output.splitlines()), res.output
    assert "3 beams for 'def '" in res.output and res.output.count("│ length") + res.output.count("│ eos") == 3
    for bad in (["--beams", "0"], ["--beams", "65"], ["--beams", "2", "--length-penalty", "-1"]):
        assert_one_line_error(run("generate", exported("lstm"), "--prompt", "def ", *bad), bad[-1].lstrip("-"))
    # --url --beams asks the server's beam search (NAME_generate's `beams` input); no server: one line
    assert_one_line_error(run("generate", "--url", "http://127.0.0.1:1", "--model", "m", "--prompt", "x",
                              "--beams", "2"), "127.0.0.1:1")


@pytest.mark.parametrize("family", ["lstm", "gpt"])
def test_served_beams_equal_local_beam_search(served_repo, exported, tmp_path, family):
    """NAME_generate with `beams` (a request parameter, or the optional input) answers the best
    hypothesis of the same beam search the CLI runs; out-of-range beams are a 400."""
    import json

    from serving import start_server

    from seqserve.export import load_export
    from seqserve.generation.beam import beam_texts
    from seqserve.runtime import make_backend

    info = load_export(exported(family))
    want = beam_texts(make_backend(info, "ort"), info.tokenizer, ["def "], BeamParams(beams=3, max_tokens=10))[0][0]
    with start_server(served_repo(), tmp_path) as s:
        for body in ({"text_input": "def ", "max_tokens": 10, "beams": 3},
                     {"text_input": "def ", "max_tokens": 10, "parameters": {"beams": 3}}):
            status, _, data = s.request("POST", f"/v2/models/{family}_generate/generate", body)
            assert status == 200, data
            doc = json.loads(data)
            assert (doc["text_output"], doc["finish_reason"]) == (want.text, want.finish_reason)
        for bad in (0, 65, 2.5):
            status, _, data = s.request("POST", f"/v2/models/{family}_generate/generate",
                                        {"text_input": "def ", "parameters": {"beams": bad}})
            assert status == 400 and b"beams" in data, (bad, status, data)
        # length_penalty ranks the hypotheses as the CLI's --length-penalty does
        for lp in (0.0, 2.0):
            want = beam_texts(make_backend(info, "ort"), info.tokenizer, ["def "],
                              BeamParams(beams=3, max_tokens=10, length_penalty=lp))[0][0]
            status, _, data = s.request("POST", f"/v2/models/{family}_generate/generate",
                                        {"text_input": "def ", "max_tokens": 10, "beams": 3, "length_penalty": lp})
            assert status == 200 and json.loads(data)["text_output"] == want.text, data
        for body, word in (({"text_input": "def ", "beams": 3, "length_penalty": -1}, b"length_penalty"),
                           ({"text_input": "def ", "length_penalty": 1.0}, b"beams > 1")):
            status, _, data = s.request("POST", f"/v2/models/{family}_generate/generate", body)
            assert status == 400 and word in data, (body, status, data)
        assert s.request("GET", "/v2/health/ready")[0] == 200
