"""Model families in torch: incremental stepping equals the full forward, state layout, spec names."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ALL_FAMILIES
from seqserve.checkpoint import load_checkpoint, save_checkpoint
from seqserve.data import Tokenizer
from seqserve.errors import SeqserveError
from seqserve.models import RecurrentConfig, build_model, make_config
from seqserve.tasks.spec import PAST, SEQ, TaskSpec, resolve_dims

V = 23  # vocabulary size of the test models

# Per-family expectations. test_registry fails when a registered family has no entry here.
FAMILY_FACTS = {
    "rnn": dict(kind="recurrent", states=("hidden",),
                tie=dict(tie_weights=True, embed_dim=64, hidden_size=64)),
    "lstm": dict(kind="recurrent", states=("hidden", "cell"),
                 tie=dict(tie_weights=True, embed_dim=64, hidden_size=64)),
    "gru": dict(kind="recurrent", states=("hidden",),
                tie=dict(tie_weights=True, embed_dim=64, hidden_size=64)),
    "gpt": dict(kind="kv", tie=dict(tie_weights=True)),
}


def tiny(family: str, **overrides):
    torch.manual_seed(0)
    return build_model(family, make_config(family, "tiny", V, **overrides)).eval()


def ids(batch: int, seq: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, V, (batch, seq), generator=torch.Generator().manual_seed(seed))


def step_in_chunks(model, x: torch.Tensor, sizes: list[int]):
    state, out, t = model.initial_state(x.shape[0]), [], 0
    for n in sizes:
        logits, state = model.step(x[:, t: t + n], state)
        out.append(logits)
        t += n
    assert t == x.shape[1]
    return torch.cat(out, dim=1), state


@pytest.mark.parametrize("family", ALL_FAMILIES)
@torch.no_grad()
def test_step_by_step_equals_full_forward(family):
    model, x = tiny(family), ids(3, 11)
    full = model(x)
    stepped, _ = step_in_chunks(model, x, [1] * 11)
    assert full.shape == (3, 11, V)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("sizes", [[4, 1, 6], [10, 1], [1, 2, 3, 5]])
@torch.no_grad()
def test_chunked_stepping_equals_full_forward(family, sizes):
    model, x = tiny(family), ids(2, 11, seed=2)
    chunked, _ = step_in_chunks(model, x, sizes)
    torch.testing.assert_close(chunked, model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ALL_FAMILIES)
@torch.no_grad()
def test_state_shapes_match_the_spec(family):
    facts, model = FAMILY_FACTS[family], tiny(family)
    spec = model.spec().step
    B = 3
    state = model.initial_state(B)
    assert len(state) == len(spec.state)
    for S, P in ((4, 0), (2, 4)):
        for t, pair in zip(state, spec.state):
            assert tuple(t.shape) == resolve_dims(spec.input(pair.input), {"batch": B, SEQ: S, PAST: P})
        logits, state = model.step(ids(B, S), state)
        assert tuple(logits.shape) == resolve_dims(spec.output("logits"), {"batch": B, SEQ: S, PAST: P})
        for t, pair in zip(state, spec.state):
            assert tuple(t.shape) == resolve_dims(spec.output(pair.output), {"batch": B, SEQ: S, PAST: P})
    c = model.config
    if facts["kind"] == "recurrent":   # batch-first [B, layers, hidden], fixed size
        assert all(tuple(t.shape) == (B, c.num_layers, c.hidden_size) for t in state)
    else:                              # KV cache [B, heads, P, head_dim], grows by S each call
        assert all(tuple(t.shape) == (B, c.n_heads, 6, c.head_dim) for t in state)


@pytest.mark.parametrize("family", ALL_FAMILIES)
@torch.no_grad()
def test_run_step_by_name_matches_step_and_the_spec(family):
    model = tiny(family)
    spec = model.spec().step
    x, B = ids(2, 3), 2
    feeds = {"input_ids": x}
    state = model.initial_state(B)
    for pair, t in zip(spec.state, state):
        feeds[pair.input] = t
    if spec.has_attention_mask:
        feeds["attention_mask"] = torch.ones(B, 3, dtype=torch.int64)
        feeds["position_ids"] = torch.arange(3).expand(B, 3)
    assert set(feeds) == set(spec.input_names)
    out = model.run_step(feeds)
    assert list(out) == spec.output_names
    logits, nxt = model.step(x, state)
    torch.testing.assert_close(out["logits"], logits)
    for pair, t in zip(spec.state, nxt):
        torch.testing.assert_close(out[pair.output], t)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_spec_names_and_state_pairs(family):
    facts, model = FAMILY_FACTS[family], tiny(family)
    spec = model.spec()
    assert spec.family == family
    assert spec.full.input_names == ["input_ids"] and spec.full.output_names == ["logits"]
    assert spec.full.input("input_ids").dims == ("batch", "sequence")
    assert spec.full.output("logits").dims == ("batch", "sequence", V)
    step = spec.step
    if facts["kind"] == "recurrent":
        past = [f"past_{n}" for n in facts["states"]]
        present = [f"present_{n}" for n in facts["states"]]
        assert step.input_names == ["input_ids", *past]
        assert step.output_names == ["logits", *present]
        assert [(p.input, p.output, p.seq_axis) for p in step.state] == [(a, b, None) for a, b in zip(past, present)]
        assert not step.has_attention_mask
        assert spec.extra == {"num_layers": model.config.num_layers, "hidden_size": model.config.hidden_size}
    else:
        n = model.config.n_layers
        past = [f"past_key_values.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
        present = [f"present.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
        assert step.input_names == ["input_ids", "attention_mask", "position_ids", *past]
        assert step.output_names == ["logits", *present]
        assert [(p.input, p.output, p.seq_axis) for p in step.state] == [(a, b, 2) for a, b in zip(past, present)]
        assert step.input("attention_mask").dims == ("batch", "total_sequence")
        assert step.input("position_ids").dims == ("batch", "sequence")
        assert step.input(past[0]).dims[2] == "past_sequence"
        assert step.output(present[0]).dims[2] == "total_sequence"
        assert spec.extra["max_seq_len"] == model.config.max_seq_len
    assert all(t.dtype in ("int64", "float32") for t in step.inputs + step.outputs)
    assert TaskSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


@pytest.mark.parametrize("family", ALL_FAMILIES)
@torch.no_grad()
def test_tied_weights_share_storage_and_survive_a_checkpoint(family, tmp_path):
    model = tiny(family, **FAMILY_FACTS[family]["tie"])
    emb = model.tok if family == "gpt" else model.embed
    assert model.head.weight is emb.weight
    assert model.head.weight.data_ptr() == emb.weight.data_ptr()
    emb.weight[5].fill_(0.25)                          # one storage: the head sees the change
    assert torch.all(model.head.weight[5] == 0.25)

    tok = Tokenizer("char", tuple(chr(ord("a") + i) for i in range(V - 3)))
    save_checkpoint(tmp_path / "ck", family, model, tok, {})
    loaded = load_checkpoint(tmp_path / "ck").model
    emb2 = loaded.tok if family == "gpt" else loaded.embed
    assert loaded.head.weight.data_ptr() == emb2.weight.data_ptr()
    x = ids(2, 6)
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_untied_weights_are_separate(family):
    model = tiny(family, tie_weights=False)
    emb = model.tok if family == "gpt" else model.embed
    assert model.head.weight.data_ptr() != emb.weight.data_ptr()


def test_tie_weights_needs_equal_widths():
    with pytest.raises(SeqserveError, match="embed_dim == hidden_size"):
        make_config("lstm", "tiny", V, tie_weights=True, embed_dim=32)   # tiny: hidden 64
    with pytest.raises(ValueError, match="embed_dim == hidden_size"):
        RecurrentConfig(vocab_size=V, embed_dim=32, hidden_size=64, tie_weights=True)


@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_tie_weights_widens_a_preset_embedding_to_the_hidden_size(family, preset):
    # The presets have embed_dim < hidden_size: --tie-weights alone must still build.
    c = make_config(family, preset, V, tie_weights=True)
    assert c.tie_weights and c.embed_dim == c.hidden_size
    assert make_config(family, preset, V, tie_weights=True, hidden_size=48).embed_dim == 48
    assert make_config(family, preset, V).embed_dim < c.hidden_size       # untied: the preset's
    model = build_model(family, c)
    assert model.head.weight is model.embed.weight


@pytest.mark.parametrize("overrides, match", [
    (dict(n_layers=0), "n_layers must be >= 1, got 0"),
    (dict(n_heads=0), "n_heads must be >= 1, got 0"),
    (dict(n_heads=-2), "n_heads must be >= 1, got -2"),
    (dict(d_model=0), "d_model must be >= 1, got 0"),
    (dict(d_ff=0), "d_ff must be >= 1, got 0"),
    (dict(max_seq_len=0), "max_seq_len must be >= 1, got 0"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
    (dict(n_heads=3), "d_model 64 is not divisible by n_heads 3"),
])
def test_gpt_config_rejects_nonsense(overrides, match):
    with pytest.raises(SeqserveError, match=f"bad gpt config: {match}"):
        make_config("gpt", "tiny", V, **overrides)


@pytest.mark.parametrize("overrides, match", [
    (dict(embed_dim=0), "embed_dim must be >= 1, got 0"),
    (dict(hidden_size=0), "hidden_size must be >= 1, got 0"),
    (dict(hidden_size=-5), "hidden_size must be >= 1, got -5"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (dict(dropout=-0.5), r"dropout must be in \[0, 1\)"),
])
@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
def test_recurrent_config_rejects_nonsense(family, overrides, match):
    with pytest.raises(SeqserveError, match=f"bad {family} config: {match}"):
        make_config(family, "tiny", V, **overrides)


@torch.no_grad()
def test_rnn_relu_nonlinearity():
    relu, tanh = tiny("rnn", nonlinearity="relu"), tiny("rnn")
    assert relu.rnn.nonlinearity == "relu" and tanh.rnn.nonlinearity == "tanh"
    x = ids(4, 20)
    (h_relu,) = relu.step(x, relu.initial_state(4))[1]
    (h_tanh,) = tanh.step(x, tanh.initial_state(4))[1]
    assert h_relu.min() >= 0 and h_relu.max() > 1.0     # unbounded above, never negative
    assert h_tanh.min() < 0 and h_tanh.abs().max() <= 1.0
    step, _ = step_in_chunks(relu, x, [7, 13])
    torch.testing.assert_close(step, relu(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [0, 5, -1])
def test_num_layers_outside_1_to_4_is_rejected(family, layers):
    with pytest.raises(SeqserveError, match="num_layers must be 1-4"):
        make_config(family, "tiny", V, num_layers=layers)
    with pytest.raises(ValueError):
        RecurrentConfig(vocab_size=V, cell=family, num_layers=layers)


@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 4])
def test_num_layers_1_and_4_build(family, layers):
    model = tiny(family, num_layers=layers)
    assert model.rnn.num_layers == layers
    assert model.initial_state(2)[0].shape == (2, layers, 64)


@torch.no_grad()
def test_gpt_sinusoidal_positions_step_equals_full():
    model, x = tiny("gpt", positional="sinusoidal"), ids(2, 9)
    chunked, _ = step_in_chunks(model, x, [5, 1, 3])
    torch.testing.assert_close(chunked, model(x), atol=1e-5, rtol=1e-4)
    assert not any("pos" in k for k in model.state_dict())    # the table is rebuilt, not saved


@torch.no_grad()
def test_gpt_left_padding_gives_the_unpadded_logits_and_no_nan():
    model = tiny("gpt")
    short, long = ids(1, 7, seed=3), ids(1, 11, seed=4)
    pad = long.shape[1] - short.shape[1]
    x = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), short], 1), long])
    mask = torch.ones(2, 11, dtype=torch.int64)
    mask[0, :pad] = 0
    pos = torch.arange(11).repeat(2, 1)
    pos[0] = torch.cat([torch.zeros(pad, dtype=torch.long), torch.arange(7)])   # 0 at the first real token
    logits, present = model.step(x, model.initial_state(2), mask, pos)

    assert not torch.isnan(logits).any()
    assert not any(torch.isnan(p).any() for p in present)
    torch.testing.assert_close(logits[0, -1], model(short)[0, -1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[1, -1], model(long)[0, -1], atol=1e-5, rtol=1e-4)

    # Decode one more token on the padded cache: still the unpadded result.
    nxt = torch.tensor([[5], [6]])
    mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.int64)], 1)
    pos2 = torch.tensor([[7], [11]])
    logits2, present2 = model.step(nxt, present, mask2, pos2)
    assert not torch.isnan(logits2).any() and not any(torch.isnan(p).any() for p in present2)
    torch.testing.assert_close(logits2[0, -1], model(torch.cat([short, nxt[:1]], 1))[0, -1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits2[1, -1], model(torch.cat([long, nxt[1:]], 1))[0, -1], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_gpt_padding_rows_do_not_change_real_rows_through_run_step():
    model = tiny("gpt")
    spec = model.spec().step
    x = ids(1, 5)
    feeds = {"input_ids": torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1),
             "attention_mask": torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]]),
             "position_ids": torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4]])}
    for pair, t in zip(spec.state, model.initial_state(1)):
        feeds[pair.input] = t
    out = model.run_step(feeds)
    assert all(not torch.isnan(v).any() for v in out.values())
    torch.testing.assert_close(out["logits"][0, -1], model(x)[0, -1], atol=1e-5, rtol=1e-4)
