"""A user's decoder-only causal LM built from stock nn.TransformerEncoderLayer blocks (+ causal mask).

    full   the USER's forward: ids [B, S] mapped to the user's layout (an [S, B] input for
           sequence-first code), the user's own mask (or the causal mask its signature asks for),
           the output mapped back to [B, S, V]; run with explicit_masks() (no fused fast path,
           no runtime causal detection)
    step   the same layers rebuilt with a KV cache (seqserve.adapters.layers) from their own
           weights: embed(ids, positions) -> cached layers -> final norm -> head, past 0 allowed

How the user's forward combines the embedding (scaled by sqrt(d_model) or not, learned positions
added or none), its layout, its mask and its output (logits or log_softmax) is found by PROBING:
each candidate is run against the user's own forward on random ids of several lengths, and the
first that matches (atol 1e-5) is recorded in `decisions`. What no candidate explains (a custom
positional-encoding module, say) needs an adapter returning DecoderPieces.
"""

from __future__ import annotations

import inspect
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from seqserve.adapters import FAMILY
from seqserve.adapters import layers as L
from seqserve.adapters.protocol import ATTENTION_EXPORT, Adapted, DecoderPieces
from seqserve.errors import SeqserveError
from seqserve.tasks.causal_lm import LOGITS_NAME, NAME as CAUSAL_LM, TOKENS_NAME, causal_lm_spec
from seqserve.tasks.spec import BATCH, MASK_NAME, PAST, POSITIONS_NAME, TaskSpec

ATOL, RTOL = 1e-5, 1e-4
PROBE_BATCH, PROBE_LENGTHS = 3, (4, 9)      # batch != any length: layouts cannot be confused
LAYOUTS = ("batch_first", "sequence_first")
# a float -inf or bool causal mask passed / the forward builds its own. Passing one comes first where
# the forward takes it: a forward that builds its mask from len(src) fixes the length when exported.
MASKS = ("float", "bool", "own")


# --- finding things in the user's module ----------------------------------------------------

def path_of(model: nn.Module, module) -> str | None:
    return next((n or "<root>" for n, m in model.named_modules() if m is module), None)


def embeddings(model: nn.Module, exclude=()) -> list[tuple[str, nn.Embedding]]:
    skip = {id(m) for e in exclude for m in e.modules()}
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding) and id(m) not in skip]


def last_linear(model: nn.Module, exclude=()) -> tuple[str, nn.Linear]:
    skip = {id(m) for e in exclude for m in e.modules()}
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in skip]
    if not found:
        raise SeqserveError(f"no nn.Linear head found outside the Transformer layers - {L.ADAPTER_HINT}")
    return found[-1]


def embedding_candidate(tok_path: str, tok: nn.Embedding, pos_path: str | None, pos: nn.Embedding | None,
                        scale: float):
    """One way a forward may embed: (embed(ids, positions) -> (B, S, D), its description), e.g.
    "embedding(ids) * sqrt(256) + pos(positions)"."""
    def embed(ids, p):
        x = tok(ids) * scale if scale != 1.0 else tok(ids)
        return x + pos(p) if pos is not None else x

    what = (f"{tok_path}(ids)" + (f" * sqrt({tok.embedding_dim})" if scale != 1.0 else "")
            + (f" + {pos_path}(positions)" if pos is not None else ""))
    return embed, what


def causal_float_mask(S: int, like: torch.Tensor) -> torch.Tensor:
    """(S, S): 0 on and below the diagonal, -inf above (nn.Transformer.generate_square_subsequent_mask)."""
    return torch.triu(torch.full((S, S), float("-inf"), device=like.device), diagonal=1)


def positional_args(fn) -> tuple[int, int]:
    """(required, accepted) positional parameters of a forward (self excluded; *args: many)."""
    ps = list(inspect.signature(fn).parameters.values())
    pos = [p for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    many = any(p.kind == p.VAR_POSITIONAL for p in ps)
    return sum(p.default is p.empty for p in pos), (99 if many else len(pos))


def to_bsv(out: torch.Tensor, layout: str, B: int, S: int) -> torch.Tensor:
    """The user's output in its layout ([B, S, V], [S, B, V], or flattened [B*S | S*B, V]) -> [B, S, V]."""
    if out.dim() == 2:
        out = out.view(B, S, -1) if layout == LAYOUTS[0] else out.view(S, B, -1)
    return out if layout == LAYOUTS[0] else out.transpose(0, 1)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=RTOL, atol=ATOL)


# --- the adapted model ----------------------------------------------------------------------

class TransformerLM(Adapted):
    """The causal-lm model interface over the user's module: forward = the user's forward, run_step
    = its layers rebuilt with a KV cache."""

    export_with = ATTENTION_EXPORT

    def __init__(self, user: nn.Module, pieces: DecoderPieces, layout: str, mask: str, log_softmax: bool,
                 vocab_size: int, decisions: dict):
        super().__init__(user.eval())
        self.pieces, self.layout, self.mask, self.log_softmax = pieces, layout, mask, log_softmax
        self.vocab_size, self.n_layers = vocab_size, len(pieces.layers)
        mha = pieces.layers[0].self_attn
        self.n_heads, self.head_dim = mha.num_heads, mha.embed_dim // mha.num_heads
        self.decisions = decisions

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The full graph: the user's own forward. ids (B, S) -> logits (B, S, V)."""
        return call_user(self.user, ids, self.layout, self.mask)

    def step(self, ids, past, attention_mask, position_ids):
        """ids (B, S); past: 2*n_layers (B, nh, P, hd); attention_mask (B, P+S); position_ids (B, S)
        -> logits (B, S, V), present: 2*n_layers (B, nh, P+S, hd)."""
        mask = L.causal_mask(attention_mask, ids.shape[1])                     # (B, 1, S, P+S)
        x, present = self.pieces.embed(ids, position_ids), []
        for i, layer in enumerate(self.pieces.layers):
            x, k, v = L.encoder_layer(layer, x, past[2 * i], past[2 * i + 1], mask)
            present += [k, v]
        if self.pieces.norm is not None:
            x = self.pieces.norm(x)
        logits = self.pieces.head(x)
        return (F.log_softmax(logits, -1) if self.log_softmax else logits), tuple(present)

    @property
    def _names(self) -> list[tuple[str, str]]:
        return [(f"past_key_values.{i}.{kv}", f"present.{i}.{kv}")
                for i in range(self.n_layers) for kv in ("key", "value")]

    def spec(self) -> TaskSpec:
        dims = (BATCH, self.n_heads, PAST, self.head_dim)
        return causal_lm_spec(FAMILY, self.vocab_size, [(i, o, dims, 2) for i, o in self._names],
                              extra={"n_layers": self.n_layers, "n_heads": self.n_heads, "head_dim": self.head_dim,
                                     "max_seq_len": self.pieces.max_positions})

    def run_step(self, inputs: dict) -> dict:
        past = tuple(inputs[i] for i, _ in self._names)
        logits, present = self.step(inputs[TOKENS_NAME], past, inputs[MASK_NAME], inputs[POSITIONS_NAME])
        return {LOGITS_NAME: logits, **{o: t for (_, o), t in zip(self._names, present)}}


def call_user(user, ids, layout: str, mask: str):
    """The user's forward on ids (B, S), in its layout and with the mask it takes -> (B, S, V)."""
    B, S = ids.shape
    x = ids if layout == LAYOUTS[0] else ids.transpose(0, 1)
    args = ()
    if mask == "float":
        args = (causal_float_mask(S, ids),)
    elif mask == "bool":
        args = (torch.ones(S, S, dtype=torch.bool, device=ids.device).triu(1),)   # True = not allowed
    with L.explicit_masks():
        out = user(x, *args)
    return to_bsv(out, layout, B, S)


def rebuilt_full(pieces: DecoderPieces, ids, log_softmax: bool = False):
    B, S = ids.shape
    layer = pieces.layers[0]
    x = pieces.embed(ids, torch.arange(S, device=ids.device).expand(B, S))
    e = L.empty_cache(layer, B, x)
    mask = L.causal_mask(torch.ones(B, S, dtype=torch.int64, device=ids.device), S)
    for lay in pieces.layers:
        x = L.encoder_layer(lay, x, e, e, mask)[0]
    logits = pieces.head(pieces.norm(x) if pieces.norm is not None else x)
    return F.log_softmax(logits, -1) if log_softmax else logits


# --- probing ---------------------------------------------------------------------------------

def probe_ids(vocab: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (PROBE_BATCH, S), generator=g) for S in PROBE_LENGTHS]


def user_outputs(user, ids_list, batch_first: bool) -> dict[tuple[str, str], list[torch.Tensor]]:
    """(layout, mask) -> the user's outputs mapped to (B, S, V), for every way of calling it that runs."""
    need, takes = positional_args(user.forward)
    masks = MASKS[:2] if need > 1 else MASKS if takes > 1 else MASKS[2:]
    layouts = LAYOUTS if batch_first else LAYOUTS[::-1]
    out, failed = {}, None
    for layout in layouts:
        for mask in masks:
            try:
                with torch.no_grad():
                    out[(layout, mask)] = [call_user(user, ids, layout, mask) for ids in ids_list]
            except Exception as e:   # a layout or mask the forward does not take: not this candidate
                failed = e
    if not out:
        raise SeqserveError(f"{type(user).__name__}.forward(ids) fails in both layouts ([B, S] and [S, B], with "
                            f"and without a causal mask): {type(failed).__name__}: {failed}")
    return out


def match(calls: dict, refs: list[torch.Tensor]) -> tuple[str, str, bool] | None:
    """The first (layout, mask, log_softmax) whose user outputs equal `refs` at every probe length."""
    for (layout, mask), outs in calls.items():
        for log_sm in (False, True):
            want = [F.log_softmax(r, -1) if log_sm else r for r in refs]
            if all(close(o, w) for o, w in zip(outs, want)):
                return layout, mask, log_sm
    return None


def call_decisions(layout: str, mask: str, log_sm: bool) -> dict:
    return {"layout": layout,
            "mask": {"own": "built by the forward", "float": "float causal mask passed (-inf above the diagonal)",
                     "bool": "bool causal mask passed (True above the diagonal)"}[mask],
            "output": "log_softmax" if log_sm else "logits"}


# --- entry points ----------------------------------------------------------------------------

def find_stack(model: nn.Module):
    """(path, layers, candidate final norms) of the one decoder-only stack, or None: an nn.TransformerEncoder, or
    nn.TransformerEncoderLayer blocks the forward loops over. A model with an nn.Transformer or an
    nn.TransformerDecoder is an encoder-decoder's (seqserve.adapters.encdec)."""
    mods = list(model.named_modules())
    if any(isinstance(m, (nn.Transformer, nn.TransformerDecoder, nn.TransformerDecoderLayer)) for _, m in mods):
        return None
    stacks = [(n, m) for n, m in mods if isinstance(m, nn.TransformerEncoder)]
    if len(stacks) > 1:
        raise SeqserveError(f"{len(stacks)} nn.TransformerEncoder stacks ({', '.join(n for n, _ in stacks)}); "
                            f"a decoder-only LM has one - {L.ADAPTER_HINT}")
    if stacks:
        n, enc = stacks[0]
        return n, list(enc.layers), [enc.norm]
    blocks = [(n, m) for n, m in mods if isinstance(m, nn.TransformerEncoderLayer)]
    if not blocks:
        return None
    layers = [m for _, m in blocks]       # a final norm, if any, is the last LayerNorm outside them
    return blocks[0][0].rsplit(".", 1)[0], layers, [None, *_outside_norms(model, layers)[-1:]]


def detect(model: nn.Module, task: str, labels=None) -> Adapted | None:
    """The adapted model for a decoder-only Transformer LM, None when `model` has no such stack;
    SeqserveError when it has one that cannot be read (saying why, pointing to --adapter)."""
    stack = find_stack(model)
    if stack is None:
        return None
    _check_task(task)
    path, layers, norms = stack
    for layer in layers:
        L.check_layer(layer, path_of(model, layer))
    model.eval()
    head_path, head = last_linear(model, exclude=layers)
    V, D = head.out_features, layers[0].self_attn.embed_dim
    embs = [(n, e) for n, e in embeddings(model, exclude=layers) if e.embedding_dim == D]
    toks = [(n, e) for n, e in embs if e.num_embeddings == V]
    if len(toks) != 1:
        raise SeqserveError(f"found {len(toks)} nn.Embedding with {V} rows (the head {head_path}'s outputs) "
                            f"and width {D}; expected one token embedding - {L.ADAPTER_HINT} returning DecoderPieces")
    tok_path, tok = toks[0]
    positions = [(n, e) for n, e in embs if e is not tok]
    ids_list = probe_ids(V)
    calls = user_outputs(model, ids_list, layers[0].self_attn.batch_first)
    tried = []
    for (pos_path, pos), scale, norm in itertools.product([*positions, (None, None)], (1.0, math.sqrt(D)), norms):
        embed, what = embedding_candidate(tok_path, tok, pos_path, pos, scale)
        pieces = DecoderPieces(embed, layers, head, norm, pos.num_embeddings if pos is not None else None)
        tried.append(what)
        with torch.no_grad():
            found = match(calls, [rebuilt_full(pieces, ids) for ids in ids_list])
        if found:
            decisions = {"adapter": "transformer decoder-only (auto)", "embedding": what, "tokens": tok_path,
                         "scale": scale, "positions": pos_path,
                         **_layer_decisions(path, layers, norm, model, head_path), **call_decisions(*found)}
            return TransformerLM(model, pieces, *found, V, decisions)
    raise SeqserveError(f"could not tell how {type(model).__name__}.forward embeds tokens: none of "
                        f"{'; '.join(dict.fromkeys(tried))} (any layout, mask or log_softmax) reproduces its output - a custom "
                        f"positional-encoding module? Write an adapter (seqserve export --adapter FILE.py:NAME) "
                        f"returning DecoderPieces(embed=..., layers=..., head=...)")


def from_pieces(model: nn.Module, pieces: DecoderPieces, task: str, labels=None) -> Adapted:
    """The adapted model from a user's adapter: its pieces drive the step; the layout, mask and
    output form of the user's forward (the full graph) are probed as for detect()."""
    _check_task(task)
    layers = list(pieces.layers)
    if not layers:
        raise SeqserveError("the adapter's DecoderPieces has no layers")
    for i, layer in enumerate(layers):
        L.check_layer(layer, path_of(model, layer) or f"pieces.layers[{i}]")
    model.eval()
    pieces = DecoderPieces(pieces.embed, layers, pieces.head, pieces.norm, pieces.max_positions)
    ids_list = probe_ids(_vocab_of(model, pieces))
    with torch.no_grad():
        refs = [rebuilt_full(pieces, ids) for ids in ids_list]
        found = match(user_outputs(model, ids_list, layers[0].self_attn.batch_first), refs)
    if found is None:
        raise SeqserveError(f"the adapter's pieces do not reproduce {type(model).__name__}.forward (tried both "
                            f"layouts, its own or a causal mask, logits or log_softmax): check embed, layers, norm "
                            f"and head")
    first = path_of(model, layers[0]) or "pieces.layers.0"
    decisions = {"adapter": "transformer decoder-only (adapter pieces)",
                 **_layer_decisions(first.rsplit(".", 1)[0], layers, pieces.norm, model, path_of(model, pieces.head)),
                 **call_decisions(*found)}
    return TransformerLM(model, pieces, *found, refs[0].shape[-1], decisions)


def _outside_norms(model, layers) -> list[nn.LayerNorm]:
    skip = {id(m) for e in layers for m in e.modules()}
    return [m for m in model.modules() if isinstance(m, nn.LayerNorm) and id(m) not in skip]


def _vocab_of(model, pieces: DecoderPieces) -> int:
    """The head's width, from a one-token run of the pieces (the vocabulary the probe ids span)."""
    with torch.no_grad():
        one = torch.zeros(1, 1, dtype=torch.int64)
        x = pieces.embed(one, one)
        return pieces.head(x).shape[-1]


def _check_task(task: str) -> None:
    if task != CAUSAL_LM:
        raise SeqserveError(f"a decoder-only Transformer (nn.TransformerEncoder with a causal mask) is a "
                            f"{CAUSAL_LM} model; task {task!r} is not supported for it")


def _layer_decisions(path, layers, norm, model, head_path) -> dict:
    first = layers[0]
    return {"layers": f"{path} ({len(layers)} x nn.TransformerEncoderLayer, norm_first={first.norm_first}, "
                      f"batch_first={first.self_attn.batch_first})",
            "norm": path_of(model, norm) if norm is not None else None, "head": head_path}
