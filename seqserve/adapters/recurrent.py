"""The automatic adapter for a user's recurrent model (one nn.RNN / nn.LSTM / nn.GRU core).

Everything is decided by inspecting and probing the user's module, never by asking the user:
    ids layout     a forward pre-hook on the core sees which axis of its input is the batch
    output form    by shape ([B, S, V], [S, B, V], [B, C]); a flattened [N, V] by which rows
                   change when one batch row's tokens change ([S*B, V] or [B*S, V]); log_softmax
                   or probabilities by the rows' exp-sums
    state form     what forward returns: a tuple (h, c) or a tensor, [L, B, H] (or batch-first)
    initial state  what the core receives on the full forward: zeros, or (init_hidden / the
                   user's own) non-zero values: the step graph then keeps its state relative to
                   them, so the chain still starts from zeros as every decoding loop does
    step graph     the user's forward when it takes a state; else embedding -> core -> last
                   Linear, kept only if it equals the user's forward on random probes
The full graph is always the user's forward, in the user's layout, mapped to [B, S, V] / [B, C].
The spec's state is batch-first [B, L, H] (seqserve/models/recurrent.py).
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from seqserve.adapters.protocol import RECURRENT_EXPORT, Adapted, RecurrentPieces
from seqserve.errors import SeqserveError
from seqserve.tasks.causal_lm import causal_lm_spec
from seqserve.tasks.classify import classify_spec
from seqserve.tasks.spec import BATCH
from seqserve.tasks.tag import tag_spec

INIT_NAMES = ("init_hidden", "initial_hidden", "init_state", "initial_state", "begin_state", "zero_state")
TASKS = ("causal-lm", "classify", "tag")
PROBES = ((1, 1), (2, 5), (3, 2))          # (batch, length) pairs every probe runs at
ATOL = 1e-5
_ADAPTER_HINT = "pass --adapter FILE.py:NAME returning RecurrentPieces(core=..., embed=..., head=...)"
_FORMS = {"bsv": "[B, S, V]", "sbv": "[S, B, V]", "flat_sb": "flattened [S*B, V]",
          "flat_bs": "flattened [B*S, V]", "bc": "[B, C]"}


def detect(model: nn.Module, task: str, labels: list[str] | None) -> Adapted | None:
    """The adapted model, or None when `model` holds no nn.RNN / nn.LSTM / nn.GRU."""
    cores = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.RNNBase)]
    if not cores:
        return None
    if len(cores) > 1:
        names = ", ".join(f"user.{n} ({type(m).__name__})" for n, m in cores)
        raise SeqserveError(f"{type(model).__name__} has {len(cores)} recurrent cores ({names}) and "
                            f"seqserve cannot tell which carries the state; {_ADAPTER_HINT}")
    return RecurrentAdapted(model, task, labels, cores[0][0])


def from_pieces(model: nn.Module, pieces: RecurrentPieces, task: str, labels: list[str] | None) -> Adapted:
    """The user-adapter path: the full graph is still the user's forward; the step graph is
    embed -> core -> head from `pieces` (checked equal to the forward on probes)."""
    path = next((n for n, m in model.named_modules() if m is pieces.core), None)
    if path is None or not isinstance(pieces.core, nn.RNNBase):
        raise SeqserveError(f"RecurrentPieces.core must be an nn.RNN/LSTM/GRU inside {type(model).__name__}")
    return RecurrentAdapted(model, task, labels, path, pieces)


@torch.jit.script
def _lstm_proj_layer(x, h, c, w_ih, w_hh, b, w_hr):
    """One LSTM layer and direction with a projection, as nn.LSTM computes it. x [S, B, I],
    h [B, P], c [B, H] -> y [S, B, P], h, c. Scripted so the TorchScript exporter writes an ONNX
    Loop over a dynamic S (it refuses nn.LSTM with proj_size)."""
    gx = torch.matmul(x, w_ih.t()) + b                   # every step's input gates at once [S, B, 4H]
    ys = []
    for t in range(x.shape[0]):
        i, f, g, o = (gx[t] + torch.matmul(h, w_hh.t())).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.matmul(torch.sigmoid(o) * torch.tanh(c), w_hr.t())
        ys.append(h)
    return torch.stack(ys), h, c


class _ScriptedProjLSTM(nn.Module):
    """Stands in for an nn.LSTM with proj_size while a graph is traced: same call, its weights."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self.lstm = lstm

    def forward(self, input, hx=None):
        m, D = self.lstm, 2 if self.lstm.bidirectional else 1
        x = input.transpose(0, 1) if m.batch_first else input                 # [S, B, I]
        if hx is None:
            hx = (x.new_zeros(m.num_layers * D, x.shape[1], m.proj_size),
                  x.new_zeros(m.num_layers * D, x.shape[1], m.hidden_size))
        hs, cs = [], []
        for k in range(m.num_layers):
            outs = []
            for d in range(D):
                sfx = f"_l{k}_reverse" if d else f"_l{k}"
                w = lambda n: getattr(m, n + sfx)                             # noqa: E731
                b = w("bias_ih") + w("bias_hh") if m.bias else x.new_zeros(4 * m.hidden_size)
                y, h, c = _lstm_proj_layer(x.flip(0) if d else x, hx[0][k * D + d], hx[1][k * D + d],
                                           w("weight_ih"), w("weight_hh"), b, w("weight_hr"))
                outs.append(y.flip(0) if d else y)
                hs.append(h)
                cs.append(c)
            x = torch.cat(outs, 2)                                            # next layer's input
        return (x.transpose(0, 1) if m.batch_first else x), (torch.stack(hs), torch.stack(cs))


class RecurrentAdapted(Adapted):
    export_with = RECURRENT_EXPORT

    def __init__(self, user: nn.Module, task: str, labels, core_path: str, pieces: RecurrentPieces | None = None):
        super().__init__(user)
        if task not in TASKS:
            raise SeqserveError(f"a recurrent model exports as {', '.join(TASKS)}, not {task!r}")
        user.eval()                                            # dropout off: probes are deterministic
        self.task, self.core_path, self.pieces = task, core_path, pieces
        core = user.get_submodule(core_path)
        # Held outside the module tree (object.__setattr__): Adapted's only child stays `user`.
        object.__setattr__(self, "core", core)
        object.__setattr__(self, "embedding", self._embedding(user, core))
        self.cell = type(core).__name__
        self.L, self.H, self.P = core.num_layers, core.hidden_size, getattr(core, "proj_size", 0)
        self.D = 2 if core.bidirectional else 1
        self.state_names = ["hidden", "cell"] if isinstance(core, nn.LSTM) else ["hidden"]
        self.vocab = self.embedding.num_embeddings
        params = [p for p in inspect.signature(user.forward).parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        self.takes_state = len(params) >= 2
        self.state_required = self.takes_state and params[1].default is inspect.Parameter.empty
        self.init_name = next((n for n in INIT_NAMES if callable(getattr(user, n, None))), None)
        self.state_tuple, self.state_bf, self.h0, self.post = isinstance(core, nn.LSTM), False, None, None
        # Probe sizes: batch != length != layers, so every axis is told apart by its size.
        self.B, self.S = [n for n in (3, 5, 7, 11) if n != self.L * self.D][:2]
        self._read_layout_and_output()
        self._spec = self._build_spec(labels)

    # --- probing -------------------------------------------------------------------------------

    @staticmethod
    def _embedding(user, core) -> nn.Embedding:
        embs = [m for m in user.modules() if isinstance(m, nn.Embedding)]
        if len(embs) > 1:
            embs = [m for m in embs if m.embedding_dim == core.input_size]
        if len(embs) != 1:
            raise SeqserveError(f"{type(user).__name__}: seqserve reads the vocabulary from the one nn.Embedding "
                                f"feeding user.{_path(user, core)}, found {len(embs)}; {_ADAPTER_HINT}")
        return embs[0]

    def _ids(self, b, s, seed=0):
        return torch.randint(0, self.vocab, (b, s), generator=torch.Generator().manual_seed(seed))

    def _call_user(self, ids):
        """ids [B, S] -> (the user's output, its state or None, what the core received)."""
        seen = {}

        def hook(_, args, kwargs):                            # the first call only: it gets the initial state
            if not seen:
                seen["x"] = args[0] if args else kwargs.get("input")
                seen["hx"] = args[1] if len(args) > 1 else kwargs.get("hx")
        handle = self.core.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                out, state = self._user_full(ids)
        finally:
            handle.remove()
        return out, state, seen

    def _read_layout_and_output(self):
        B, S, core, err = self.B, self.S, self.core, None
        for self.ids_bf in (core.batch_first, not core.batch_first):
            try:
                out, state, seen = self._call_user(self._ids(B, S))
            except Exception as e:                            # the other layout may be the right one
                err = e
                continue
            x = seen.get("x")
            if isinstance(x, torch.Tensor) and x.shape[0 if core.batch_first else 1] == B:
                break
        else:
            raise SeqserveError(f"cannot call {type(self.user).__name__}.forward with token ids [B, S] or [S, B] "
                                f"and see user.{self.core_path} get that batch ({err or 'another batch size'}); "
                                f"{_ADAPTER_HINT}")
        if not isinstance(out, torch.Tensor):
            raise SeqserveError(f"{type(self.user).__name__}.forward returns {type(out).__name__}, not a tensor first")
        self.form = self._output_form(out)
        y = self._to_bf(out, B, S)
        sums = y.exp().sum(-1)
        self.scores = ("log_softmax" if torch.allclose(sums, torch.ones_like(sums), atol=1e-4) else
                       "probabilities" if (y >= 0).all() and torch.allclose(y.sum(-1), sums.new_ones(()), atol=1e-4)
                       else "raw logits")
        if self.takes_state and state is not None:            # the form the forward hands back
            parts = state if isinstance(state, (tuple, list)) else (state,)
            self.state_tuple = isinstance(state, (tuple, list))
            self.state_bf = parts[0].shape[0] == B and parts[0].shape[1] == self.L * self.D
        hx = seen["hx"]                                       # the initial state, core layout [L*D, B, H]
        parts = () if hx is None else (hx if isinstance(hx, (tuple, list)) else (hx,))
        if any(bool(p.abs().max() > 0) for p in parts):
            if any(not torch.equal(p, p[:, :1].expand_as(p)) for p in parts):
                raise SeqserveError(f"the initial state user.{self.core_path} receives differs between batch rows; "
                                    f"{_ADAPTER_HINT}")
            self.h0 = [p[:, :1].transpose(0, 1).detach().clone() for p in parts]     # [1, L, H] each

    def _output_form(self, out) -> str:
        B, S, per_token = self.B, self.S, self.task != "classify"
        if per_token and out.dim() == 3 and out.shape[:2] in ((B, S), (S, B)):
            return "bsv" if out.shape[:2] == (B, S) else "sbv"
        if per_token and out.dim() == 2 and out.shape[0] == B * S:
            # Change batch row 1's tokens: the rows that change say how the output was flattened.
            ids = self._ids(B, S)
            ids2 = ids.clone()
            ids2[1] = (ids[1] + 1) % self.vocab
            changed = (self._call_user(ids2)[0] != self._call_user(ids)[0]).any(-1).nonzero().flatten().tolist()
            if changed == list(range(S, 2 * S)):
                return "flat_bs"
            if changed == list(range(1, B * S, B)):
                return "flat_sb"
        if not per_token and out.dim() == 2 and out.shape[0] == B:
            return "bc"
        raise SeqserveError(f"{type(self.user).__name__}.forward on ids of batch {B}, length {S} returns "
                            f"{list(out.shape)}, not {'per-token scores' if per_token else 'one row per sequence'} "
                            f"for task {self.task}; {_ADAPTER_HINT}")

    def _chain_matches(self) -> bool:
        """The step graph from the zero state, in two chunks, equals the full graph."""
        for i, (b, s) in enumerate(PROBES):
            ids, state = self._ids(b, s, seed=i + 1), [torch.zeros(b, self.L, n) for n in self._widths]
            with torch.no_grad():
                full, outs = self(ids), []
                for chunk in ((ids,) if s == 1 else (ids[:, :1], ids[:, 1:])):
                    out = self._step(chunk, state)
                    outs.append(out[0])
                    state = out[1]
            inc = outs[-1] if self.task == "classify" else torch.cat(outs, 1)
            if inc.shape != full.shape or not torch.allclose(inc, full, atol=ATOL):
                return False
        return True

    def _decide_step(self) -> str:
        if self.D == 2:
            if self.task == "causal-lm":
                raise SeqserveError(f"user.{self.core_path} is bidirectional: it reads right to left, so it "
                                    "cannot generate (causal-lm); export it as classify or tag (full graph only)")
            return "none: bidirectional core (reads right to left): full graph only"
        auto = self.pieces is None
        if self.takes_state and auto:                        # the user's forward, fed the state
            self.mode = "user"
            if self._chain_matches():
                return "user forward"
            why = "the user's forward, fed its state chunk by chunk, differs from the full forward"
        else:
            if auto:                                         # the stock parts, if they are the whole model
                heads = [m for m in self.user.modules()
                         if isinstance(m, nn.Linear) and m.in_features == self._widths[0]]
                self.pieces = RecurrentPieces(self.core, self.embedding, heads[-1]) if heads else None
            self.mode = "pieces"
            for self.post in (None, "log_softmax"):         # the head may stop before the forward's log_softmax
                if self.pieces is not None and self._chain_matches():
                    return "pieces (probed equal)" if auto else "adapter pieces (probed equal)"
            if not auto:
                raise SeqserveError(f"the adapter's RecurrentPieces for {type(self.user).__name__} do not compute "
                                    f"what its forward computes (probed at atol {ATOL})")
            why = "embedding -> core -> last Linear is not what the forward computes"
        if self.task == "causal-lm":
            raise SeqserveError(f"no step graph for {type(self.user).__name__}: {why}; {_ADAPTER_HINT}")
        self.mode = self.pieces = self.post = None
        return f"none: {why}"

    @property
    def _widths(self) -> list[int]:          # h is [.., proj_size] with a projection, c is [.., hidden]
        return [self.P or self.H, self.H][:len(self.state_names)]

    def _build_spec(self, labels):
        self.mode = None
        step = self._decide_step()
        state = [(f"past_{n}", f"present_{n}", (BATCH, self.L, w)) for n, w in zip(self.state_names, self._widths)]
        extra = {"num_layers": self.L, "hidden_size": self.H, "cell": self.cell.lower()}
        if self.P:
            extra["proj_size"] = self.P
        width = self._to_bf(self._call_user(self._ids(self.B, self.S))[0], self.B, self.S).shape[-1]
        init = "init_hidden" if self.state_required and self.init_name else "zeros"
        if self.h0 is not None:
            init = f"{init if init != 'zeros' else 'forward'} (non-zero: the step state is kept relative to it)"
        form = ("tuple (h, c)" if self.state_tuple else "tensor h") + (" [B, L, H]" if self.state_bf else " [L, B, H]")
        self.decisions = {
            "kind": "recurrent",
            "core": f"user.{self.core_path} ({self.cell}, {self.L} layer{'s' * (self.L > 1)}, hidden {self.H}"
                    + (f", proj {self.P}" if self.P else "") + (", bidirectional" if self.D == 2 else "") + ")",
            "layout": ("batch-first" if self.ids_bf else "sequence-first")
                      + ("" if self.ids_bf == self.core.batch_first else " (core: the other way)"),
            "state": form if self.takes_state else "none: forward takes no state",
            "output": f"{self.scores}{' (the graphs take their log)' * (self.scores == 'probabilities')}, "
                      f"{_FORMS[self.form]}", "initial_state": init, "step": step}
        if self.task == "causal-lm":
            if self.vocab < width:
                raise SeqserveError(f"the nn.Embedding has {self.vocab} tokens but the logits {width}")
            return causal_lm_spec("module", width, [(*s, None) for s in state], extra)
        labels = [str(i) for i in range(width)] if labels is None else list(labels)
        if len(labels) != width:
            raise SeqserveError(f"{len(labels)} labels given but {type(self.user).__name__} scores {width}")
        return (classify_spec if self.task == "classify" else tag_spec)(
            "module", self.vocab, labels, state if self.mode else [], extra)

    # --- the graphs ----------------------------------------------------------------------------

    def spec(self):
        return self._spec

    @contextlib.contextmanager
    def _exportable(self):
        """While tracing, swap an LSTM with projections for its scripted twin (same weights)."""
        if not (self.P and torch.jit.is_tracing()):
            yield
            return
        parent, _, name = self.core_path.rpartition(".")
        parent = self.user.get_submodule(parent) if parent else self.user
        parent._modules[name] = _ScriptedProjLSTM(self.core)
        try:
            yield
        finally:
            parent._modules[name] = self.core

    def _user_full(self, ids):
        """The user's own forward on ids [B, S] in the user's layout (from init_hidden or zeros)."""
        ids_u = ids if self.ids_bf else ids.t()
        if not self.state_required:
            res = self.user(ids_u)
        elif self.init_name:
            res = self.user(ids_u, getattr(self.user, self.init_name)(ids.shape[0]))
        else:
            res = self.user(ids_u, self._to_user([ids.new_zeros(ids.shape[0], self.L * self.D, w, dtype=torch.float)
                                                   for w in self._widths]))
        return (res[0], res[1] if len(res) > 1 else None) if isinstance(res, (tuple, list)) else (res, None)

    def _to_bf(self, out, B, S):
        """The user's output -> [B, S, V] (causal-lm, tag) or [B, C] (classify); log of probabilities."""
        out = {"bsv": lambda: out, "sbv": lambda: out.transpose(0, 1), "bc": lambda: out,
               "flat_bs": lambda: out.reshape(B, S, -1),
               "flat_sb": lambda: out.reshape(S, B, -1).transpose(0, 1)}[self.form]()
        return out.log() if getattr(self, "scores", None) == "probabilities" else out

    def _to_user(self, state):
        """Batch-first [B, L, H] per part -> the user's state (tuple or tensor, [L, B, H])."""
        parts = tuple(s if self.state_bf else s.transpose(0, 1).contiguous() for s in state)
        return parts if self.state_tuple else parts[0]

    def forward(self, ids):
        """The full graph: ids [B, S] -> logits [B, S, V] / class_logits [B, C] / tag_logits [B, S, T]."""
        with self._exportable():
            return self._to_bf(self._user_full(ids)[0], ids.shape[0], ids.shape[1])

    def _step(self, ids, state):
        """ids [B, S] + batch-first state -> scores, next batch-first state."""
        B, S = ids.shape
        if self.h0 is not None:
            state = [s + h for s, h in zip(state, self.h0)]
        with self._exportable():
            if self.mode == "user":
                out, hn = self.user(ids if self.ids_bf else ids.t(), self._to_user(state))[:2]
                out = self._to_bf(out, B, S)
            else:
                x = self.pieces.embed(ids)                                            # [B, S, E]
                hx = tuple(s.transpose(0, 1).contiguous() for s in state)             # [L, B, H]
                core = self.user.get_submodule(self.core_path)                        # (swapped when tracing)
                y, hn = core(x if self.core.batch_first else x.transpose(0, 1), hx if len(hx) > 1 else hx[0])
                y = y if self.core.batch_first else y.transpose(0, 1)                 # [B, S, H]
                out = self.pieces.head(y[:, -1] if self.task == "classify" else y)
                out = F.log_softmax(out, -1) if self.post else out
        parts = hn if isinstance(hn, (tuple, list)) else (hn,)
        parts = [p if (self.state_bf and self.mode == "user") else p.transpose(0, 1) for p in parts]
        if self.h0 is not None:
            parts = [p - h for p, h in zip(parts, self.h0)]
        return out, parts

    def run_step(self, inputs: dict) -> dict:
        g = self._spec.step
        out, nxt = self._step(inputs[g.inputs[0].name], [inputs[f"past_{n}"] for n in self.state_names])
        return {g.outputs[0].name: out, **{f"present_{n}": s for n, s in zip(self.state_names, nxt)}}


def _path(model, module) -> str:
    return next((n for n, m in model.named_modules() if m is module), "?")
