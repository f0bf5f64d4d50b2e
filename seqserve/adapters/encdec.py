"""A user's nn.Transformer (or nn.TransformerEncoder + nn.TransformerDecoder) translation model ->
the seq2seq task (seqserve.tasks.seq2seq.transformer_spec).

    encoder  source_ids + source_mask -> encoder_hidden_states [B, SRC, D] and every decoder
             layer's cross-attention K/V [B, nh, SRC, hd], computed once per source, from the
             layers' own weights (seqserve.adapters.layers)
    step     target ids + self KV cache (past 0 allowed) + cross K/V + source_mask -> logits + present
    full     the USER's forward(src, tgt, ...) in its layout, with the masks its signature takes: the
             target's causal mask passed explicitly where it takes one, the source's padding mask
             where it takes one (a parameter named *padding_mask*). A forward that takes none cannot
             honour source padding: its full graph is valid for unpadded sources only (decisions,
             io["full_unpadded_sources_only"])

Embeddings (shared or per side), scaling and learned positions are found by probing the user's
forward, as seqserve.adapters.decoder does; what no candidate explains needs an adapter returning
EncoderDecoderPieces.
"""

from __future__ import annotations

import inspect
import itertools
import math

import torch
from torch import nn

from seqserve.adapters import FAMILY
from seqserve.adapters import layers as L
from seqserve.adapters.decoder import LAYOUTS, close, embedding_candidate, embeddings, last_linear, path_of
from seqserve.adapters.protocol import ATTENTION_EXPORT, Adapted, EncoderDecoderPieces
from seqserve.errors import SeqserveError
from seqserve.tasks.seq2seq import (LOGITS_NAME, MEMORY, NAME as SEQ2SEQ, SELF_MASK, SELF_POSITIONS, SOURCE_IDS,
                                    SOURCE_MASK_NAME, TARGET_IDS, cross_cache_names, self_cache_names,
                                    transformer_spec)
from seqserve.tasks.spec import BATCH, PAST, SOURCE

PROBE = ((3, 5, 4), (3, 8, 7))          # (batch, source length, target length): all distinct


# --- calling the user's forward --------------------------------------------------------------

def forward_args(forward) -> dict[str, str]:
    """name -> what to pass, for the parameters after (src, tgt): "source_padding" (True = pad),
    "target_causal" (float -inf above the diagonal), "none" (an optional one left alone)."""
    params = list(inspect.signature(forward).parameters.values())[2:]
    out = {}
    for p in params:
        n = p.name.lower()
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        target = "tgt" in n or "trg" in n or "target" in n
        if "padding" in n and not target:
            out[p.name] = "source_padding"
        elif "mask" in n and target and "padding" not in n:
            out[p.name] = "target_causal"
        elif p.default is not p.empty:
            out[p.name] = "none"
        else:
            raise SeqserveError(f"{forward.__qualname__} requires {p.name!r}, which seqserve cannot fill (it passes "
                                f"src, tgt, a target causal mask and a source padding mask) - {L.ADAPTER_HINT}")
    return out


def call_user(user, src, source_mask, tgt, layout: str, args: dict[str, str]):
    """src (B, SRC), source_mask (B, SRC) 1 = real, tgt (B, T) -> the user's logits as (B, T, V)."""
    T = tgt.shape[1]
    kw = {}
    for name, what in args.items():
        if what == "source_padding":
            kw[name] = source_mask == 0                                   # stock convention: True = pad
        elif what == "target_causal":
            kw[name] = torch.triu(torch.full((T, T), float("-inf"), device=tgt.device), diagonal=1)
    if layout == LAYOUTS[1]:
        src, tgt = src.transpose(0, 1), tgt.transpose(0, 1)
    with L.explicit_masks():
        out = user(src, tgt, **kw)
    return out if layout == LAYOUTS[0] else out.transpose(0, 1)


# --- the adapted model -----------------------------------------------------------------------

class TransformerSeq2Seq(Adapted):
    export_with = ATTENTION_EXPORT

    def __init__(self, user, pieces: EncoderDecoderPieces, layout: str, args: dict, vocab_size: int,
                 max_source_len: int | None, decisions: dict):
        super().__init__(user.eval())
        self.pieces, self.layout, self.args, self.vocab_size = pieces, layout, args, vocab_size
        self.max_source_len, self.decisions = max_source_len, decisions
        self.n_dec = len(pieces.decoder_layers)
        mha = pieces.decoder_layers[0].self_attn
        self.n_heads, self.head_dim, self.d_model = mha.num_heads, mha.embed_dim // mha.num_heads, mha.embed_dim
        self.honours_padding = "source_padding" in args.values()

    def forward(self, source_ids, source_mask, input_ids):
        """The full graph: the user's own forward -> logits (B, T, V)."""
        return call_user(self.user, source_ids, source_mask, input_ids, self.layout, self.args)

    def encode(self, source_ids, source_mask):
        """(B, SRC) ids and mask -> memory (B, SRC, D), cross K/V per decoder layer [k0, v0, k1, ...]
        each (B, nh, SRC, hd). A query sees every real source position, as the stock encoder's
        key padding mask does."""
        B, S = source_ids.shape
        p = self.pieces
        x = p.embed_source(source_ids, torch.arange(S, device=source_ids.device).expand(B, S))
        mask = L.key_mask(source_mask, S)                                           # (B, 1, SRC, SRC)
        for layer in p.encoder_layers:
            x = L.encoder_self_layer(layer, x, mask)
        memory = p.encoder_norm(x) if p.encoder_norm is not None else x
        return memory, [t for layer in p.decoder_layers for t in L.keys_values(layer.multihead_attn, memory)]

    def decode(self, input_ids, past, cross, source_mask, attention_mask, position_ids):
        """input_ids (B, T); past/cross: 2 per decoder layer (B, nh, P | SRC, hd); source_mask (B, SRC);
        attention_mask (B, P+T); position_ids (B, T) -> logits (B, T, V), present self K/V (B, nh, P+T, hd)."""
        T, p = input_ids.shape[1], self.pieces
        self_mask, cross_mask = L.causal_mask(attention_mask, T), L.key_mask(source_mask, T)
        x, present = p.embed_target(input_ids, position_ids), []
        for i, layer in enumerate(p.decoder_layers):
            x, k, v = L.decoder_layer(layer, x, past[2 * i], past[2 * i + 1], self_mask, cross[2 * i],
                                      cross[2 * i + 1], cross_mask)
            present += [k, v]
        return p.head(p.decoder_norm(x) if p.decoder_norm is not None else x), tuple(present)

    def rebuilt_full(self, source_ids, source_mask, input_ids):
        """encode once + decode the whole target from an empty past (what the probe compares)."""
        B, T = input_ids.shape
        _, cross = self.encode(source_ids, source_mask)
        empty = cross[0].new_zeros(B, self.n_heads, 0, self.head_dim)
        return self.decode(input_ids, [empty] * (2 * self.n_dec), cross, source_mask,
                           torch.ones(B, T, dtype=torch.int64), torch.arange(T).expand(B, T))[0]

    # --- named-tensor interface ---

    @property
    def _self_names(self):
        return [p for i in range(self.n_dec) for p in self_cache_names(i)]

    @property
    def _cross_names(self):
        return [n for i in range(self.n_dec) for n in cross_cache_names(i)]

    def spec(self):
        io = {"max_source_len": self.max_source_len}
        if not self.honours_padding:
            io["full_unpadded_sources_only"] = True
        return transformer_spec(FAMILY, self.vocab_size, self.d_model,
                                [(i, o, (BATCH, self.n_heads, PAST, self.head_dim), 2) for i, o in self._self_names],
                                [(n, (BATCH, self.n_heads, SOURCE, self.head_dim)) for n in self._cross_names],
                                extra={"n_enc_layers": len(self.pieces.encoder_layers), "n_dec_layers": self.n_dec,
                                       "n_heads": self.n_heads, "head_dim": self.head_dim,
                                       "max_seq_len": self.pieces.max_positions, "max_source_len": self.max_source_len},
                                io=io)

    def run_encoder(self, inputs):
        memory, cross = self.encode(inputs[SOURCE_IDS], inputs[SOURCE_MASK_NAME])
        return {MEMORY: memory, **dict(zip(self._cross_names, cross))}

    def run_step(self, inputs):
        past = tuple(inputs[i] for i, _ in self._self_names)
        cross = tuple(inputs[n] for n in self._cross_names)
        logits, present = self.decode(inputs[TARGET_IDS], past, cross, inputs[SOURCE_MASK_NAME],
                                      inputs[SELF_MASK], inputs[SELF_POSITIONS])
        return {LOGITS_NAME: logits, **{o: t for (_, o), t in zip(self._self_names, present)}}


# --- probing ---------------------------------------------------------------------------------

def probe_inputs(vocab: int, padded: bool, seed: int = 0):
    """[(src, source_mask, tgt)]; padded: rows of the source shorter than the longest (mask 0 after)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for B, S, T in PROBE:
        src, mask = torch.randint(0, vocab, (B, S), generator=g), torch.ones(B, S, dtype=torch.int64)
        if padded:
            for b in range(1, B):
                mask[b, S - 1 - b:] = 0
        out.append((src, mask, torch.randint(0, vocab, (B, T), generator=g)))
    return out


def _matches(model: TransformerSeq2Seq, inputs, user_outs) -> bool:
    with torch.no_grad():
        return all(close(o, model.rebuilt_full(*x)) for o, x in zip(user_outs, inputs))


def _user_outs(user, inputs, layout, args):
    try:
        with torch.no_grad():
            return [call_user(user, *x, layout, args) for x in inputs]
    except Exception:              # a layout the forward does not take
        return None


def settle(user, candidates, vocab: int, batch_first: bool, what: str):
    """The first (candidate, layout) whose rebuilt model reproduces the user's forward on unpadded
    sources; then whether it also does on padded ones (the source mask honoured). candidates:
    [(description, pieces, max_source_len)]. -> TransformerSeq2Seq."""
    args = forward_args(user.forward)
    plain = probe_inputs(vocab, padded=False)
    layouts = LAYOUTS if batch_first else LAYOUTS[::-1]
    outs = {lay: _user_outs(user, plain, lay, args) for lay in layouts}
    for (desc, pieces, max_src), layout in itertools.product(candidates, layouts):
        if outs[layout] is None:
            continue
        model = TransformerSeq2Seq(user, pieces, layout, args, vocab, max_src, {})
        if not _matches(model, plain, [o for o in outs[layout]]):
            continue
        padded = probe_inputs(vocab, padded=True, seed=1)
        honoured = model.honours_padding and _matches(model, padded, _user_outs(user, padded, layout, args))
        if not honoured:
            model.honours_padding = False
        pad_arg = next((n for n, w in args.items() if w == "source_padding"), None)
        model.decisions = {
            "adapter": what, **desc, "layout": layout,
            "target_mask": next((f"float causal mask passed as {n}" for n, w in args.items() if w == "target_causal"),
                                "built by the forward"),
            "source_mask": (f"honoured (passed as {pad_arg}, True = pad)" if honoured else
                            f"not honoured by the forward{f' (passed as {pad_arg})' if pad_arg else ''}: "
                            "the full graph is valid for unpadded sources only")}
        return model
    return None


# --- entry points ----------------------------------------------------------------------------

def find_stacks(model: nn.Module):
    """(encoder, decoder) of the one nn.Transformer, or of one nn.TransformerEncoder + one
    nn.TransformerDecoder; None when the module has neither."""
    mods = [m for _, m in model.named_modules()]
    ts = [m for m in mods if isinstance(m, nn.Transformer)]
    if len(ts) == 1:
        return ts[0].encoder, ts[0].decoder
    encs = [m for m in mods if isinstance(m, nn.TransformerEncoder)]
    decs = [m for m in mods if isinstance(m, nn.TransformerDecoder)]
    if len(ts) > 1 or len(encs) > 1 or len(decs) > 1:
        raise SeqserveError(f"{len(ts) or len(encs)} encoder / {len(decs)} decoder stacks; an encoder-decoder "
                            f"has one of each - {L.ADAPTER_HINT}")
    return (encs[0], decs[0]) if encs and decs else None


def _check(model, enc_layers, dec_layers, task):
    if task != SEQ2SEQ:
        raise SeqserveError(f"an nn.Transformer encoder-decoder is a {SEQ2SEQ} model; task {task!r} is not "
                            "supported for it")
    for layer in enc_layers:
        L.check_layer(layer, path_of(model, layer) or "encoder layer", nn.TransformerEncoderLayer)
    for layer in dec_layers:
        L.check_layer(layer, path_of(model, layer) or "decoder layer", nn.TransformerDecoderLayer)


def detect(model: nn.Module, task: str, labels=None) -> Adapted | None:
    stacks = find_stacks(model)
    if stacks is None:
        return None
    enc, dec = stacks
    _check(model, enc.layers, dec.layers, task)
    model.eval()
    head_path, head = last_linear(model, exclude=(enc, dec))
    V, D = head.out_features, enc.layers[0].self_attn.embed_dim
    embs = [(n, e) for n, e in embeddings(model, exclude=(enc, dec)) if e.embedding_dim == D]
    cands = []
    for (tn, tgt), (sn, src) in itertools.product([x for x in embs if x[1].num_embeddings == V], embs):
        if src.num_embeddings != V:
            continue                    # the task has one tokenizer for both sides
        rest = [x for x in embs if x[1] is not tgt and x[1] is not src]
        for (spn, sp), (tpn, tp) in [((None, None), (None, None)), *((x, x) for x in rest),
                                     *itertools.permutations(rest, 2)]:
            for scale in (1.0, math.sqrt(D)):
                embed_src, src_what = embedding_candidate(sn, src, spn, sp, scale)
                embed_tgt, tgt_what = embedding_candidate(tn, tgt, tpn, tp, scale)
                desc = {"source_embedding": src_what, "target_embedding": tgt_what, "shared_embedding": src is tgt,
                        "scale": scale, "head": head_path}
                pieces = EncoderDecoderPieces(embed_src, embed_tgt, list(enc.layers), list(dec.layers), head,
                                              enc.norm, dec.norm, tp.num_embeddings if tp is not None else None)
                cands.append((desc, pieces, sp.num_embeddings if sp is not None else None))
    found = settle(model, cands, V, enc.layers[0].self_attn.batch_first, "transformer encoder-decoder (auto)")
    if found is None:
        raise SeqserveError(f"could not tell how {type(model).__name__}.forward embeds source and target: none of "
                            f"{len(cands)} combinations of its nn.Embedding modules (scaled by sqrt(d_model) or not, "
                            "learned positions or none), in either layout, reproduces its output - a custom "
                            "positional-encoding module? Write an adapter (seqserve export --adapter FILE.py:NAME) "
                            "returning EncoderDecoderPieces")
    return found


def from_pieces(model: nn.Module, pieces: EncoderDecoderPieces, task: str, labels=None) -> Adapted:
    _check(model, pieces.encoder_layers, pieces.decoder_layers, task)
    model.eval()
    pieces = EncoderDecoderPieces(pieces.embed_source, pieces.embed_target, list(pieces.encoder_layers),
                                  list(pieces.decoder_layers), pieces.head, pieces.encoder_norm,
                                  pieces.decoder_norm, pieces.max_positions)
    with torch.no_grad():
        one = torch.zeros(1, 1, dtype=torch.int64)
        V = pieces.head(pieces.embed_target(one, one)).shape[-1]
    desc = {"head": path_of(model, pieces.head)}
    found = settle(model, [(desc, pieces, pieces.max_positions)], V,
                   pieces.encoder_layers[0].self_attn.batch_first, "transformer encoder-decoder (adapter pieces)")
    if found is None:
        raise SeqserveError(f"the adapter's pieces do not reproduce {type(model).__name__}.forward (either layout): "
                            "check embed_source, embed_target, the layers, norms and head")
    return found
