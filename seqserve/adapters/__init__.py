"""Bring your own model: a user's nn.Module -> an ordinary export folder.

    export_module(model, out, task=..., tokenizer=..., adapter=None)   (Python)
    seqserve export --module FILE.py:FACTORY [--weights W] --task T --tokenizer PATH --out DIR   (CLI)

`adapt` wraps the module in the one model interface (protocol.py): automatically for what users
write most (recurrent.py: nn.RNN/LSTM/GRU in either layout; decoder.py: decoder-only LMs from
nn.TransformerEncoder layers, rebuilt with a KV cache; encdec.py: nn.Transformer
encoder-decoders), or from the pieces a user's adapter function points at. The export is then
written by the same exporter as seqserve's own families, and validate, package, serve, generate
and loadtest take it unchanged. The sidecar's "source" says where the module came from, so the
gate re-imports it and compares against the user's own forward (`load_source_model`).

    EXPORT/source/weights.safetensors   the exported weights (what the gate loads into the module)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from seqserve.adapters.protocol import Adapted, DecoderPieces, EncoderDecoderPieces, RecurrentPieces
from seqserve.errors import SeqserveError

FAMILY = "module"                # spec.family of every brought model
TASKS = ("causal-lm", "seq2seq", "classify", "tag", "conditioned")
WEIGHTS = "source/weights.safetensors"


def adapt(model, task: str, adapter=None, labels: list[str] | None = None) -> Adapted:
    """The user's module in the model interface. adapter: None (automatic), a function
    model -> pieces (or -> an Adapted), or 'FILE.py:NAME' naming one."""
    import importlib

    from seqserve.adapters.loading import load_callable

    def kind(name: str):        # recurrent.py, decoder.py, encdec.py: detect() / from_pieces()
        return importlib.import_module(f"seqserve.adapters.{name}")

    if task not in TASKS:
        raise SeqserveError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    model.eval()
    if adapter is None:
        for name in ("recurrent", "decoder", "encdec"):     # the first that recognises the module
            adapted = kind(name).detect(model, task, labels)
            if adapted is not None:
                return adapted.eval()
        raise SeqserveError(f"{type(model).__name__} holds no nn.RNN/LSTM/GRU, nn.TransformerEncoder(Layer) or "
                            "nn.Transformer that seqserve can adapt automatically; write an adapter function "
                            "and pass --adapter FILE.py:NAME (README: Bring your own model)")
    fn = load_callable(adapter, "adapter") if isinstance(adapter, str) else adapter
    try:
        pieces = fn(model)
    except SeqserveError:
        raise
    except Exception as e:
        raise SeqserveError(f"the adapter {getattr(fn, '__name__', fn)} raised {type(e).__name__}: {e}") from None
    if isinstance(pieces, Adapted):
        return pieces.eval()
    kinds = {RecurrentPieces: "recurrent", DecoderPieces: "decoder", EncoderDecoderPieces: "encdec"}
    if type(pieces) not in kinds:
        raise SeqserveError(f"the adapter returned {type(pieces).__name__}; expected RecurrentPieces, DecoderPieces, "
                            "EncoderDecoderPieces (seqserve.adapters) or an Adapted module")
    return kind(kinds[type(pieces)]).from_pieces(model, pieces, task, labels).eval()


def check_tokenizer(spec, tokenizer) -> None:
    """The tokenizer's size == the ids the model takes and scores; what the task needs of its specials."""
    from seqserve.tasks.spec import GENERATE, LOGITS

    logits = spec.step.role(LOGITS) if spec.head == GENERATE else None
    size = logits.dims[-1] if logits is not None else spec.io.get("vocab_size")
    if size is not None and tokenizer.vocab_size != size:
        what = "logits" if logits is not None else "embedding"
        raise SeqserveError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's {what} have {size}; "
                            "give the tokenizer the model was trained with")
    if spec.io.get("bos") and tokenizer.bos_id is None:
        raise SeqserveError(f"a {spec.task} model's target starts from a begin token, and the tokenizer has none; "
                            "name it (--bos-token)")


def export_module(model, out: str | Path, *, task: str, tokenizer, adapter=None, labels: list[str] | None = None,
                  source: dict | None = None, options=None, progress=None):
    """Export a user's nn.Module (weights loaded) -> ExportInfo. source: where it came from
    ({"module": "FILE.py:FACTORY", "weights": ..., "adapter": "FILE.py:NAME"}), recorded so that
    `seqserve validate` can re-import it; without it, validate needs --module."""
    from safetensors.torch import save_model

    from seqserve.export.exporter import ExportOptions, export_model

    adapted = adapt(model, task, adapter, labels)
    spec = adapted.spec()
    check_tokenizer(spec, tokenizer)
    if progress:
        progress(f"adapted {type(model).__name__}: " + "; ".join(f"{k} {v}" for k, v in adapted.decisions.items()))

    src = {k: v for k, v in (source or {}).items() if v is not None}
    for key in ("module", "adapter"):          # absolute, so validate finds them from anywhere
        if key in src and ":" in src[key]:
            file, _, name = src[key].rpartition(":")
            src[key] = f"{Path(file).resolve()}:{name}"
    if isinstance(adapter, str) and "adapter" not in src:
        file, _, name = adapter.rpartition(":")
        src["adapter"] = f"{Path(file).resolve()}:{name}"
    fields = {"source": {**src, "class": f"{type(model).__module__}.{type(model).__qualname__}",
                         "weights_file": WEIGHTS, "decisions": adapted.decisions,
                         **({"labels": list(labels)} if labels else {})}}

    def ship(tmp: Path) -> None:
        (tmp / WEIGHTS).parent.mkdir()
        save_model(model, str(tmp / WEIGHTS))          # handles tied (shared) weights
        fields["source"]["sha256"] = hashlib.sha256((tmp / WEIGHTS).read_bytes()).hexdigest()

    return export_model(adapted, out, tokenizer, FAMILY, fields, ship, options or ExportOptions(), progress)


def load_source_model(info, module: str | None = None) -> Adapted:
    """The torch side of a brought export: the user's module re-imported (the sidecar's
    source.module, or `module`), the exported weights loaded into it, adapted as at export."""
    from safetensors.torch import load_model

    from seqserve.adapters.loading import build_module

    src = info.raw.get("source") or {}
    ref = module or src.get("module")
    if not ref:
        raise SeqserveError(f"export {info.path} was written from a Python object and records no module to "
                            "re-import; pass --module FILE.py:FACTORY")
    model = build_module(ref)
    weights = info.path / src.get("weights_file", WEIGHTS)
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except Exception as e:
        raise SeqserveError(f"the exported weights {weights} do not fit {ref}: {e}") from None
    if missing or unexpected:
        raise SeqserveError(f"the exported weights {weights} do not fit {ref}: missing {missing[:8]}, "
                            f"unexpected {unexpected[:8]}")
    adapted = adapt(model, info.task, src.get("adapter"), src.get("labels"))
    return adapted


def is_brought(info) -> bool:
    return "source" in info.raw


__all__ = ["Adapted", "DecoderPieces", "EncoderDecoderPieces", "RecurrentPieces", "adapt", "export_module",
           "is_brought", "load_source_model"]
