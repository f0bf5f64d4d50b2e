"""Stock Transformer layers rebuilt with a KV cache (seqserve.adapters.layers), the decoder-only and
encoder-decoder adapters over users' own modules (tests/user_models), and their ONNX graphs against
the user's module."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from seqserve.adapters import adapt
from seqserve.adapters import layers as L
from seqserve.errors import SeqserveError

torch.set_num_threads(1)
MODELS = Path(__file__).parent / "user_models"
D, H = 16, 4


def user_module(name: str):
    spec = importlib.util.spec_from_file_location(f"user_{name}", MODELS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def separate_qkv(mha: nn.MultiheadAttention) -> None:
    """Turn packed in_proj weights into q/k/v_proj_weight, as a kdim/vdim module holds them."""
    wq, wk, wv = (nn.Parameter(w.detach().clone()) for w in mha.in_proj_weight.chunk(3))
    del mha.in_proj_weight
    mha.register_parameter("in_proj_weight", None)
    mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight = wq, wk, wv
    mha._qkv_same_embed_dim = False


def stock(layer, x, *args, **kw):
    """The stock layer on batch-first x, in its own layout, masks as given."""
    bf = layer.self_attn.batch_first
    t = (lambda a: a) if bf else (lambda a: a.transpose(0, 1))
    with L.explicit_masks(), torch.no_grad():
        return t(layer(t(x), *(t(a) for a in args), **kw))


def ones(B, S):
    return torch.ones(B, S, dtype=torch.int64)


# --- the rebuilt layers ----------------------------------------------------------------------

GRID = list(itertools.product([False, True], ["relu", "gelu_module"], [True, False], [False, True], [True, False]))


@pytest.mark.parametrize("norm_first,act,bias,batch_first,packed", GRID)
def test_encoder_layer_equals_stock(norm_first, act, bias, batch_first, packed):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, H, 32, 0.1, nn.GELU() if act == "gelu_module" else act, 1e-3,
                                       batch_first, norm_first, bias).eval()
    if not packed:
        separate_qkv(layer.self_attn)
    x = torch.randn(2, 6, D)
    want = stock(layer, x, src_mask=nn.Transformer.generate_square_subsequent_mask(6))
    with torch.no_grad():
        e = L.empty_cache(layer, 2, x)
        got, k, v = L.encoder_layer(layer, x, e, e, L.causal_mask(ones(2, 6), 6))
        # and a cache: the first 4 positions, then 2 more
        a, k4, v4 = L.encoder_layer(layer, x[:, :4], e, e, L.causal_mask(ones(2, 4), 4))
        b, _, _ = L.encoder_layer(layer, x[:, 4:], k4, v4, L.causal_mask(ones(2, 6), 2))
    assert k.shape == (2, H, 6, D // H)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([a, b], 1), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("norm_first,act,bias,batch_first,packed", GRID[::3])
def test_decoder_layer_equals_stock(norm_first, act, bias, batch_first, packed):
    torch.manual_seed(1)
    layer = nn.TransformerDecoderLayer(D, H, 32, 0.1, nn.GELU() if act == "gelu_module" else act, 1e-4,
                                       batch_first, norm_first, bias).eval()
    if not packed:
        separate_qkv(layer.self_attn)
        separate_qkv(layer.multihead_attn)
    x, memory = torch.randn(2, 5, D), torch.randn(2, 7, D)
    source_mask = ones(2, 7)
    source_mask[1, 4:] = 0
    want = stock(layer, x, memory, tgt_mask=nn.Transformer.generate_square_subsequent_mask(5),
                 memory_key_padding_mask=source_mask == 0)
    with torch.no_grad():
        ck, cv = L.keys_values(layer.multihead_attn, memory)
        past_k = past_v = L.empty_cache(layer, 2, x)
        outs = []
        for t in range(5):                                  # token by token
            y, past_k, past_v = L.decoder_layer(layer, x[:, t:t + 1], past_k, past_v, L.causal_mask(ones(2, t + 1), 1),
                                                ck, cv, L.key_mask(source_mask, 1))
            outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), want, atol=1e-6, rtol=1e-5)


# --- decoder-only ----------------------------------------------------------------------------

def chain(adapted, ids, chunks):
    """The step run over ids (B, S) in chunks of the given sizes from an empty past -> logits (B, S, V)."""
    B = ids.shape[0]
    past = [torch.zeros(B, adapted.n_heads, 0, adapted.head_dim)] * (2 * adapted.n_layers)
    out, P = [], 0
    with torch.no_grad():
        for n in chunks:
            pos = torch.arange(P, P + n).expand(B, n)
            logits, past = adapted.step(ids[:, P:P + n], past, ones(B, P + n), pos)
            out.append(logits)
            P += n
    return torch.cat(out, 1)


def user_lm_logits(model, ids, seq_first: bool):
    with torch.no_grad(), L.explicit_masks():
        out = model(ids.T) if seq_first else model(ids)
    return out.transpose(0, 1) if seq_first else out


def tutorial_lm():
    m = user_module("transformer_lm").build()
    return m, adapt(m, "causal-lm", user_module("adapter_transformer_lm").adapter)


def test_tutorial_lm_needs_an_adapter():
    with pytest.raises(SeqserveError, match=r"positional-encoding module.*--adapter FILE.py:NAME.*DecoderPieces"):
        adapt(user_module("transformer_lm").build(), "causal-lm")


def test_tutorial_lm_chain_equals_its_forward():
    model, a = tutorial_lm()
    assert a.decisions["layout"] == "sequence_first" and a.decisions["output"] == "logits"
    assert a.spec().extra["max_seq_len"] == 512
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    want = user_lm_logits(model, ids, seq_first=True)
    for chunks in ([9], [1] * 9, [4, 1, 3, 1]):
        torch.testing.assert_close(chain(a, ids, chunks), want, atol=1e-5, rtol=1e-4)
    # left padding: the padded row's real tokens get the logits of the unpadded sequence
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.int64), ids[:1, :6]], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.int64), ones(1, 6)], 1)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits, _ = a.step(padded, [torch.zeros(1, 4, 0, 8)] * 4, mask, pos)
    torch.testing.assert_close(logits[:, 3:], want[:1, :6], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("batch_first,norm_first,log_probs,activation",
                         [(True, True, False, "gelu"), (False, False, True, "relu"), (True, False, True, "relu")])
def test_auto_detected_lm(batch_first, norm_first, log_probs, activation):
    model = user_module("transformer_lm").build_auto(batch_first=batch_first, norm_first=norm_first,
                                                     log_probs=log_probs, activation=activation)
    a = adapt(model, "causal-lm")
    d = a.decisions
    assert (d["tokens"], d["positions"], d["scale"], d["norm"], d["head"]) == ("tok", "pos", 1.0, "blocks.norm", "lm_head")
    assert d["layout"] == ("batch_first" if batch_first else "sequence_first")
    assert d["output"] == ("log_softmax" if log_probs else "logits")
    assert a.spec().extra == {"n_layers": 2, "n_heads": 4, "head_dim": 8, "max_seq_len": 64}
    ids = torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(chain(a, ids, [2, 1, 4]), user_lm_logits(model, ids, not batch_first),
                               atol=1e-5, rtol=1e-4)


def test_looped_blocks_with_a_final_norm_and_a_bool_mask():
    model = user_module("transformer_lm").build_looped()
    a = adapt(model, "causal-lm")
    # the stock layers take a float or a bool mask alike: the first candidate that matches, float, is used
    assert (a.decisions["norm"], a.decisions["mask"]) == ("ln_f", "float causal mask passed (-inf above the diagonal)")
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), L.explicit_masks():
        want = model(ids, torch.ones(6, 6, dtype=torch.bool).triu(1))
    torch.testing.assert_close(chain(a, ids, [1, 5]), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("factory,why", [("build", r"add_bias_kv=True"), ("build_kdim", r"kdim 8 / vdim 8")])
def test_unsupported_attention_names_the_module(factory, why):
    with pytest.raises(SeqserveError, match=rf"^encoder\.layers\.0\.self_attn: .*{why}.*--adapter"):
        adapt(getattr(user_module("unsupported"), factory)(), "causal-lm")


def test_custom_attention_and_wrong_task_refused():
    model = user_module("transformer_lm").build_auto()

    class MyAttention(nn.Module):
        batch_first = True

    with pytest.raises(SeqserveError, match=r"causal-lm model; task 'classify'"):
        adapt(model, "classify")
    model.blocks.layers[1].self_attn = MyAttention()
    with pytest.raises(SeqserveError, match=r"^blocks\.layers\.1\.self_attn: the attention is a MyAttention"):
        adapt(model, "causal-lm")


# --- encoder-decoder -------------------------------------------------------------------------

def padded_source(B=2, S=6, vocab=40, seed=3):
    g = torch.Generator().manual_seed(seed)
    mask = ones(B, S)
    mask[1, S - 2:] = 0
    return torch.randint(0, vocab, (B, S), generator=g), mask, torch.randint(0, vocab, (B, 5), generator=g)


def mt_chain(a, src, mask, tgt, chunks):
    _, cross = a.encode(src, mask)
    B = tgt.shape[0]
    past = [torch.zeros(B, a.n_heads, 0, a.head_dim)] * (2 * a.n_dec)
    out, P = [], 0
    for n in chunks:
        logits, past = a.decode(tgt[:, P:P + n], past, cross, mask, ones(B, P + n), torch.arange(P, P + n).expand(B, n))
        out.append(logits)
        P += n
    return torch.cat(out, 1)


@pytest.mark.parametrize("kw", [{}, {"shared": False}, {"norm_first": True}])
def test_translator_auto_detected(kw):
    model = user_module("transformer_mt").build(**kw)
    a = adapt(model, "seq2seq")
    assert a.decisions["shared_embedding"] == kw.get("shared", True)
    assert a.decisions["source_mask"].startswith("honoured (passed as src_key_padding_mask")
    spec = a.spec()
    assert spec.task == "seq2seq"
    assert {k: spec.io[k] for k in ("bos", "shared_vocab", "vocab_size", "max_source_len")} == \
        {"bos": True, "shared_vocab": True, "vocab_size": 40, "max_source_len": 64}
    src, mask, tgt = padded_source()
    with torch.no_grad(), L.explicit_masks():
        want = model(src, tgt, src_key_padding_mask=mask == 0)
        torch.testing.assert_close(mt_chain(a, src, mask, tgt, [1] * 5), want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mt_chain(a, src, mask, tgt, [3, 2]), want, atol=1e-5, rtol=1e-4)


def test_translator_with_sinusoidal_positions_needs_its_adapter():
    mt = user_module("transformer_mt")
    model = mt.build(positional="sinusoidal")
    with pytest.raises(SeqserveError, match=r"custom positional-encoding module.*EncoderDecoderPieces"):
        adapt(model, "seq2seq")
    a = adapt(model, "seq2seq", mt.adapter)
    src, mask, tgt = padded_source()
    with torch.no_grad(), L.explicit_masks():
        torch.testing.assert_close(mt_chain(a, src, mask, tgt, [2, 3]), model(src, tgt, mask == 0),
                                   atol=1e-5, rtol=1e-4)


def test_translator_without_a_padding_argument_is_unpadded_only():
    mt = user_module("transformer_mt")

    class NoPadding(mt.Translator):
        def forward(self, src, tgt):
            return super().forward(src, tgt)

    torch.manual_seed(0)
    a = adapt(NoPadding(40).eval(), "seq2seq")
    assert "valid for unpadded sources only" in a.decisions["source_mask"]
    assert a.spec().io["full_unpadded_sources_only"] is True


# --- ONNX ------------------------------------------------------------------------------------

def export(adapted, tmp_path):
    import onnxruntime as ort

    from seqserve.export.onnx_graphs import conform_dims, export_graph

    sessions = {}
    for g in adapted.spec().graphs.values():
        path = tmp_path / f"{g.name}.onnx"
        export_graph(adapted, g, path, *adapted.export_with)
        conform_dims(path, g)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        sessions[g.name] = lambda feeds, s=sess, g=g: dict(zip(g.output_names, s.run(g.output_names, feeds)))
    return sessions


def test_tutorial_lm_onnx_equals_the_users_module(tmp_path):
    model, a = tutorial_lm()
    run = export(a, tmp_path)
    ids = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(4))
    want = user_lm_logits(model, ids, seq_first=True).numpy()
    np.testing.assert_allclose(run["full"]({"input_ids": ids.numpy()})["logits"], want, atol=1e-4, rtol=1e-4)
    past = {f"past_key_values.{i}.{kv}": np.zeros((2, 4, 0, 8), np.float32) for i in range(2) for kv in ("key", "value")}
    out, P = [], 0
    for n in (5, 1, 1, 4):                                     # prefill from past 0, tokens, a chunk
        r = run["step"]({"input_ids": ids[:, P:P + n].numpy(), "attention_mask": np.ones((2, P + n), np.int64),
                         "position_ids": np.arange(P, P + n)[None].repeat(2, 0), **past})
        past = {k: r[k.replace("past_key_values", "present")] for k in past}
        out.append(r["logits"])
        P += n
    np.testing.assert_allclose(np.concatenate(out, 1), want, atol=1e-4, rtol=1e-4)


def test_translator_onnx_equals_the_users_module(tmp_path):
    model = user_module("transformer_mt").build()
    a = adapt(model, "seq2seq")
    run = export(a, tmp_path)
    src, mask, tgt = padded_source()
    with torch.no_grad(), L.explicit_masks():
        want = model(src, tgt, src_key_padding_mask=mask == 0).numpy()
    s, m, t = src.numpy(), mask.numpy(), tgt.numpy()
    np.testing.assert_allclose(run["full"]({"source_ids": s, "source_mask": m, "input_ids": t})["logits"], want,
                               atol=1e-4, rtol=1e-4)
    enc = run["encoder"]({"source_ids": s, "source_mask": m})
    cross = {k: v for k, v in enc.items() if k.startswith("cross_key_values")}
    past = {f"past_key_values.{i}.{kv}": np.zeros((2, 4, 0, 8), np.float32) for i in range(2) for kv in ("key", "value")}
    out, P = [], 0
    for n in (1, 1, 3):
        r = run["step"]({"input_ids": t[:, P:P + n], "attention_mask": np.ones((2, P + n), np.int64),
                         "position_ids": np.arange(P, P + n)[None].repeat(2, 0), "source_mask": m, **past, **cross})
        past = {k: r[k.replace("past_key_values", "present")] for k in past}
        out.append(r["logits"])
        P += n
    np.testing.assert_allclose(np.concatenate(out, 1), want, atol=1e-4, rtol=1e-4)
