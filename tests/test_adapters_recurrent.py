"""The automatic recurrent adapter (seqserve/adapters/recurrent.py) on models written the way users
write them (tests/user_models): the adapted full graph is the user's forward, the step chain
(token by token and in chunks) equals it, both exported graphs agree with the user's module in
ONNX Runtime, the decisions are recorded, and what cannot be adapted fails with the module named."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from seqserve.adapters.protocol import RecurrentPieces
from seqserve.adapters.recurrent import detect, from_pieces
from seqserve.errors import SeqserveError
from seqserve.export.onnx_graphs import conform_dims, export_graph
from seqserve.tasks.spec import resolve_dims

torch.set_num_threads(1)
USER_MODELS = Path(__file__).parent / "user_models"


def load(name: str) -> nn.Module:
    spec = importlib.util.spec_from_file_location(f"user_models_{name}", USER_MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build().eval()


# What each user's own forward gives on ids [B, S], mapped to batch-first by hand (the test knows
# each model's layout; the adapter had to find it out).
def user_lstm_lm(m, ids):
    out, _ = m(ids.t(), m.init_hidden(ids.shape[0]))                 # [S*B, V], sequence-major
    return out.view(ids.shape[1], ids.shape[0], -1).transpose(0, 1)


REFERENCE = {"lstm_lm": user_lstm_lm, "gru_classifier": lambda m, ids: m(ids), "lstm_proj": lambda m, ids: m(ids)[0]}
TASK = {"lstm_lm": "causal-lm", "gru_classifier": "classify", "lstm_proj": "causal-lm"}
DECISIONS = {
    "lstm_lm": {"kind": "recurrent", "core": "user.rnn (LSTM, 2 layers, hidden 16)", "layout": "sequence-first",
                "state": "tuple (h, c) [L, B, H]", "output": "log_softmax, flattened [S*B, V]",
                "initial_state": "init_hidden", "step": "user forward"},
    "gru_classifier": {"kind": "recurrent", "core": "user.gru (GRU, 2 layers, hidden 12)", "layout": "batch-first",
                       "state": "none: forward takes no state", "output": "raw logits, [B, C]",
                       "initial_state": "zeros", "step": "pieces (probed equal)"},
    "lstm_proj": {"kind": "recurrent", "core": "user.lstm (LSTM, 2 layers, hidden 20, proj 8)",
                  "layout": "batch-first", "state": "tuple (h, c) [L, B, H]", "output": "raw logits, [B, S, V]",
                  "initial_state": "zeros", "step": "user forward"},
}


@pytest.fixture(scope="module", params=list(TASK))
def case(request):
    name = request.param
    user = load(name)
    return name, user, detect(user, TASK[name], None)


def ids_for(adapted, b, s, seed=0):
    return torch.randint(0, adapted.vocab, (b, s), generator=torch.Generator().manual_seed(seed))


def chain(run, spec, ids, chunks, tensor):
    """The step graph over ids in `chunks` from the zero state; run(feeds) -> outputs by name."""
    g, pos, outs = spec.step, 0, []
    state = {t.name: tensor(np.zeros(resolve_dims(t, {"batch": ids.shape[0], "sequence": 0}), np.float32))
             for t in g.inputs[1:]}
    for n in chunks:
        out = run({g.inputs[0].name: ids[:, pos:pos + n], **state})
        outs.append(out[g.outputs[0].name])
        state = {p.input: out[p.output] for p in g.state}
        pos += n
    return outs[-1] if spec.task == "classify" else np.concatenate([np.asarray(o) for o in outs], 1)


def test_decisions_and_spec(case):
    name, _, adapted = case
    assert adapted.decisions == DECISIONS[name]
    spec = adapted.spec()
    assert spec.family == "module" and spec.extra["num_layers"] == 2 and list(spec.graphs) == ["full", "step"]
    dims = {t.name: t.dims for t in spec.step.inputs[1:]}
    if name == "lstm_proj":          # h carries the projection, c the cell width
        assert dims == {"past_hidden": ("batch", 2, 8), "past_cell": ("batch", 2, 20)}
    if name == "gru_classifier":
        assert spec.io["labels"] == ["0", "1", "2"] and list(dims) == ["past_hidden"]
    assert not adapted.user.training


def test_torch_full_and_step_chain_match_the_users_forward(case):
    name, user, adapted = case
    for b, s in ((1, 1), (2, 6), (3, 4)):
        ids = ids_for(adapted, b, s, seed=b * s)
        with torch.no_grad():
            ref = REFERENCE[name](user, ids)
            torch.testing.assert_close(adapted(ids), ref, atol=1e-6, rtol=0)
            for chunks in ([1] * s, [2, s - 2] if s > 2 else [s]):
                inc = chain(lambda f: adapted.run_step(f), adapted.spec(), ids, chunks, torch.from_numpy)
                torch.testing.assert_close(torch.as_tensor(inc), ref, atol=1e-5, rtol=0)


def test_onnx_graphs_match_the_users_module(case, tmp_path):
    name, user, adapted = case
    sessions = {}
    for g in adapted.spec().graphs.values():
        path = tmp_path / f"{name}_{g.name}.onnx"
        export_graph(adapted, g, path, *adapted.export_with)
        conform_dims(path, g)
        sessions[g.name] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = adapted.spec()
    step = sessions["step"]
    run = lambda f: dict(zip([o.name for o in step.get_outputs()], step.run(None, f)))   # noqa: E731
    for b, s in ((1, 3), (2, 7)):                       # sizes other than the traced ones: axes stayed dynamic
        ids = ids_for(adapted, b, s, seed=7 + s)
        with torch.no_grad():
            ref = REFERENCE[name](user, ids).numpy()
        full = sessions["full"].run(None, {"input_ids": ids.numpy()})[0]
        np.testing.assert_allclose(full, ref, atol=1e-5, rtol=0)
        for chunks in ([1] * s, [2, s - 2]):
            np.testing.assert_allclose(chain(run, spec, ids.numpy(), chunks, lambda a: a), ref, atol=1e-5, rtol=0)


# --- models the adapter reads differently, or refuses ---------------------------------------------

class TwoCores(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.encoder, self.decoder = nn.LSTM(4, 6, batch_first=True), nn.GRU(6, 6, batch_first=True)
        self.out = nn.Linear(6, 10)

    def forward(self, x):
        return self.out(self.decoder(self.encoder(self.embed(x))[0])[0])


class BiTagger(nn.Module):
    def __init__(self, bidirectional=True, mlp=False):
        super().__init__()
        torch.manual_seed(1)
        self.emb = nn.Embedding(12, 4)
        self.rnn = nn.LSTM(4, 5, batch_first=True, bidirectional=bidirectional)
        w = 10 if bidirectional else 5
        self.head = nn.Sequential(nn.Linear(w, 5), nn.Tanh(), nn.Linear(5, 3)) if mlp else nn.Linear(w, 3)

    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0])


class LearnedStartLM(nn.Module):
    """A sequence-first GRU LM with a learned initial state and no hidden argument."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.emb, self.gru, self.proj = nn.Embedding(15, 6), nn.GRU(6, 7), nn.Linear(7, 15)
        self.h0 = nn.Parameter(torch.randn(1, 1, 7))

    def forward(self, x):                               # x [S, B]
        y, _ = self.gru(self.emb(x), self.h0.expand(1, x.shape[1], 7).contiguous())
        return torch.log_softmax(self.proj(y), -1)      # [S, B, V]


def test_two_cores_is_an_error_naming_both():
    both = r"user\.encoder \(LSTM\), user\.decoder \(GRU\).*--adapter.*RecurrentPieces"
    with pytest.raises(SeqserveError, match=both):
        detect(TwoCores(), "causal-lm", None)


def test_not_recurrent_is_none():
    assert detect(nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5)), "causal-lm", None) is None


def test_bidirectional_full_graph_only_and_no_causal_lm():
    with pytest.raises(SeqserveError, match=r"user\.rnn is bidirectional"):
        detect(BiTagger(), "causal-lm", None)
    adapted = detect(BiTagger(), "tag", ["O", "B", "I"])
    assert list(adapted.spec().graphs) == ["full"] and adapted.decisions["step"].startswith("none: bidirectional")
    ids = torch.randint(0, 12, (2, 5))
    torch.testing.assert_close(adapted(ids), adapted.user(ids))


def test_pieces_that_differ_from_forward_give_no_step_graph():
    adapted = detect(BiTagger(bidirectional=False, mlp=True), "tag", None)
    assert list(adapted.spec().graphs) == ["full"] and adapted.decisions["step"].startswith("none: embedding")
    with pytest.raises(SeqserveError, match="no step graph"):
        detect(BiTagger(bidirectional=False, mlp=True), "causal-lm", None)


def test_from_pieces_with_an_mlp_head():
    user = BiTagger(bidirectional=False, mlp=True)
    adapted = from_pieces(user, RecurrentPieces(user.rnn, user.emb, user.head), "tag", None)
    assert adapted.decisions["step"] == "adapter pieces (probed equal)"
    ids = torch.randint(0, 12, (2, 5))
    with torch.no_grad():
        inc = chain(lambda f: adapted.run_step(f), adapted.spec(), ids, [2, 3], torch.from_numpy)
        torch.testing.assert_close(torch.as_tensor(inc), user(ids), atol=1e-5, rtol=0)
    with pytest.raises(SeqserveError, match="do not compute what its forward computes"):
        from_pieces(user, RecurrentPieces(user.rnn, user.emb, user.head[0]), "tag", None)


def test_learned_initial_state_is_kept_relative_to_it():
    user = LearnedStartLM().eval()
    adapted = detect(user, "causal-lm", None)
    d = adapted.decisions
    assert (d["layout"], d["output"]) == ("sequence-first", "log_softmax, [S, B, V]")
    assert d["step"] == "pieces (probed equal)"
    assert d["initial_state"].startswith("forward (non-zero")
    ids = torch.randint(0, 15, (2, 6))
    with torch.no_grad():
        ref = user(ids.t()).transpose(0, 1)
        inc = chain(lambda f: adapted.run_step(f), adapted.spec(), ids, [1, 2, 3], torch.from_numpy)
    torch.testing.assert_close(torch.as_tensor(inc), ref, atol=1e-5, rtol=0)
