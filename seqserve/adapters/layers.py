"""Stock PyTorch Transformer layers rebuilt with a KV cache, from the layers' own weights.

nn.TransformerEncoderLayer / nn.TransformerDecoderLayer have no KV cache, so a step graph cannot
call them. These functions compute exactly what the stock layers compute (eval mode: dropout is
the identity) but batch-first, with a past of any length (0 included) and an explicit boolean
mask, reading the layer's own parameters: packed `in_proj_weight`/`in_proj_bias` or separate
`q/k/v_proj_weight` (`_qkv_same_embed_dim` False), `out_proj`, biases or none (`bias=False`),
`norm_first`, the layer's own activation and norms (their eps). Nothing is copied: the user's
module stays the owner of every weight.

Attention is F.scaled_dot_product_attention with an explicit boolean mask (True = attend; never
`is_causal`), which the dynamo exporter at opset 23 turns into ONNX `Attention`. `explicit_masks()`
is for calling the USER's forward: the fused MHA fast path off (it switches to nested tensors and
other kernels in eval) and the stock modules' runtime "is this mask causal?" test (a data-
dependent branch the exporter cannot follow) replaced by "no, unless the caller said so", and
attention masks given their query axis in full (ONNX Runtime's Attention does not broadcast it).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from seqserve.errors import SeqserveError

ADAPTER_HINT = ("write an adapter returning seqserve.adapters.protocol pieces "
                "(seqserve export --adapter FILE.py:NAME)")


# --- what can be rebuilt ---------------------------------------------------------------------

def check_attention(mha, path: str) -> None:
    """SeqserveError naming `path` for an attention these functions cannot reproduce."""
    def refuse(why: str):
        raise SeqserveError(f"{path}: {why}; seqserve cannot rebuild it with a KV cache - {ADAPTER_HINT}")

    if not isinstance(mha, nn.MultiheadAttention):
        refuse(f"the attention is a {type(mha).__name__}, not nn.MultiheadAttention")
    if mha.bias_k is not None or mha.bias_v is not None:
        refuse("nn.MultiheadAttention(add_bias_kv=True) is not supported")
    if mha.add_zero_attn:
        refuse("nn.MultiheadAttention(add_zero_attn=True) is not supported")
    if mha.kdim != mha.vdim or mha.kdim != mha.embed_dim:
        refuse(f"kdim {mha.kdim} / vdim {mha.vdim} differ from embed_dim {mha.embed_dim}")


def check_layer(layer, path: str, kind: type = nn.TransformerEncoderLayer) -> None:
    """A stock layer of `kind` whose forward is the stock one (a subclass may change the math)."""
    if not isinstance(layer, kind) or type(layer).forward is not kind.forward:
        raise SeqserveError(f"{path}: a {type(layer).__name__}, not a stock nn.{kind.__name__}; "
                            f"seqserve cannot rebuild it with a KV cache - {ADAPTER_HINT}")
    check_attention(layer.self_attn, f"{path}.self_attn")
    if kind is nn.TransformerDecoderLayer:
        check_attention(layer.multihead_attn, f"{path}.multihead_attn")


@contextlib.contextmanager
def explicit_masks():
    """Run stock Transformer modules the way their export must: no fused fast path, no runtime
    causal-mask detection (the masks the caller passes are applied as given)."""
    from torch.nn.modules import transformer as stock

    was_fast, detect = torch.backends.mha.get_fastpath_enabled(), stock._detect_is_causal_mask
    sdpa = F.scaled_dot_product_attention

    def full_mask_sdpa(q, k, v, attn_mask=None, *args, **kwargs):
        # stock MHA turns a key padding mask into (B, nh, 1, K); ONNX Runtime's Attention wants
        # the query axis spelled out: (.., S, K)
        if attn_mask is not None and attn_mask.dim() >= 2:
            attn_mask = attn_mask.expand(*attn_mask.shape[:-2], q.shape[-2], k.shape[-2])
        return sdpa(q, k, v, attn_mask, *args, **kwargs)

    torch.backends.mha.set_fastpath_enabled(False)
    stock._detect_is_causal_mask = lambda mask, is_causal=None, size=None: is_causal is True
    F.scaled_dot_product_attention = full_mask_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa
        stock._detect_is_causal_mask = detect
        torch.backends.mha.set_fastpath_enabled(was_fast)


# --- attention -------------------------------------------------------------------------------

def _split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, S, D = x.shape
    return x.view(B, S, n_heads, D // n_heads).transpose(1, 2)          # (B, nh, S, hd)


def _merge_heads(y: torch.Tensor) -> torch.Tensor:
    B, nh, S, hd = y.shape
    return y.transpose(1, 2).reshape(B, S, nh * hd)                      # (B, S, D)


def _projection(mha: nn.MultiheadAttention, which: int):
    """(weight [D, D], bias [D] or None) of q (0), k (1) or v (2)."""
    D = mha.embed_dim
    if mha._qkv_same_embed_dim:
        w = mha.in_proj_weight[which * D:(which + 1) * D]
    else:
        w = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)[which]
    b = None if mha.in_proj_bias is None else mha.in_proj_bias[which * D:(which + 1) * D]
    return w, b


def qkv(mha: nn.MultiheadAttention, x: torch.Tensor):
    """x (B, S, D) -> q, k, v (B, nh, S, hd); one matmul when the weights are packed."""
    if mha._qkv_same_embed_dim:
        q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    else:
        q, k, v = (F.linear(x, *_projection(mha, i)) for i in range(3))
    return tuple(_split_heads(t, mha.num_heads) for t in (q, k, v))


def keys_values(mha: nn.MultiheadAttention, memory: torch.Tensor):
    """Cross-attention K/V of the memory (B, SRC, D) -> k, v (B, nh, SRC, hd): once per source."""
    return tuple(_split_heads(F.linear(memory, *_projection(mha, i)), mha.num_heads) for i in (1, 2))


def attend(mha: nn.MultiheadAttention, q, k, v, mask) -> torch.Tensor:
    """q (B, nh, S, hd), k/v (B, nh, K, hd), mask (B, 1, S, K) bool True = attend -> (B, S, D)."""
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)      # scale 1/sqrt(hd), as MHA's
    return F.linear(_merge_heads(y), mha.out_proj.weight, mha.out_proj.bias)


def self_attention(mha, x, past_k, past_v, mask):
    """x (B, S, D); past_k/v (B, nh, P, hd), P >= 0; mask (B, 1, S, P+S) -> y (B, S, D), k, v (B, nh, P+S, hd)."""
    q, k, v = qkv(mha, x)
    k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
    return attend(mha, q, k, v, mask), k, v


def _ff(layer, x):
    return layer.linear2(layer.activation(layer.linear1(x)))       # the layer's own activation


# --- layers ----------------------------------------------------------------------------------

def encoder_layer(layer: nn.TransformerEncoderLayer, x, past_k, past_v, mask):
    """One nn.TransformerEncoderLayer used as a decoder-only block, batch-first whatever the
    layer's batch_first: x (B, S, D), past (B, nh, P, hd), mask (B, 1, S, P+S) ->
    x (B, S, D), present k, v (B, nh, P+S, hd)."""
    if layer.norm_first:
        a, k, v = self_attention(layer.self_attn, layer.norm1(x), past_k, past_v, mask)
        x = x + a
        return x + _ff(layer, layer.norm2(x)), k, v
    a, k, v = self_attention(layer.self_attn, x, past_k, past_v, mask)
    x = layer.norm1(x + a)
    return layer.norm2(x + _ff(layer, x)), k, v


def decoder_layer(layer: nn.TransformerDecoderLayer, x, past_k, past_v, mask, cross_k, cross_v, cross_mask):
    """One nn.TransformerDecoderLayer: x (B, T, D); self past (B, nh, P, hd); mask (B, 1, T, P+T);
    cross_k/v (B, nh, SRC, hd) from keys_values(layer.multihead_attn, memory); cross_mask
    (B, 1, T, SRC) -> x (B, T, D), present self k, v (B, nh, P+T, hd)."""
    def cross(h):
        q = _split_heads(F.linear(h, *_projection(layer.multihead_attn, 0)), layer.multihead_attn.num_heads)
        return attend(layer.multihead_attn, q, cross_k, cross_v, cross_mask)

    if layer.norm_first:
        a, k, v = self_attention(layer.self_attn, layer.norm1(x), past_k, past_v, mask)
        x = x + a
        x = x + cross(layer.norm2(x))
        return x + _ff(layer, layer.norm3(x)), k, v
    a, k, v = self_attention(layer.self_attn, x, past_k, past_v, mask)
    x = layer.norm1(x + a)
    x = layer.norm2(x + cross(x))
    return layer.norm3(x + _ff(layer, x)), k, v


def encoder_self_layer(layer: nn.TransformerEncoderLayer, x, mask):
    """An encoder layer over a whole source (no cache): x (B, SRC, D), mask (B, 1, SRC, SRC)."""
    empty = x.new_zeros(x.shape[0], layer.self_attn.num_heads, 0, x.shape[-1] // layer.self_attn.num_heads)
    return encoder_layer(layer, x, empty, empty, mask)[0]


# --- masks -----------------------------------------------------------------------------------

def causal_mask(attention_mask: torch.Tensor, S: int) -> torch.Tensor:
    """attention_mask (B, P+S) 1 = real -> (B, 1, S, P+S) bool, True = attend: a query sees real
    keys at or before it, and always itself, so a padding row never has every key masked (softmax
    of all -inf is NaN, which would reach later layers' caches)."""
    total = attention_mask.shape[1]
    q_pos = torch.arange(S, device=attention_mask.device) + (total - S)           # (S,)
    k_pos = torch.arange(total, device=attention_mask.device)                    # (P+S,)
    causal = k_pos[None, :] <= q_pos[:, None]                                    # (S, P+S)
    real = attention_mask.bool()[:, None, :] | (k_pos[None, :] == q_pos[:, None])[None]
    return (causal[None] & real)[:, None]


def key_mask(source_mask: torch.Tensor, S: int) -> torch.Tensor:
    """source_mask (B, SRC) 1 = real -> (B, 1, S, SRC) bool; the query axis spelled out (ONNX
    Attention does not broadcast it)."""
    return source_mask.bool()[:, None, None, :].expand(source_mask.shape[0], 1, S, source_mask.shape[1])


def empty_cache(layer, batch: int, like: torch.Tensor) -> torch.Tensor:
    mha = layer.self_attn
    return like.new_zeros(batch, mha.num_heads, 0, mha.embed_dim // mha.num_heads)
