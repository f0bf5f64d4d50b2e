"""seqserve export: a checkpoint from `seqserve train`, or the user's own nn.Module (--module)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console

_BROUGHT = "Bring your own model"


def command(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="Checkpoint folder from `seqserve train` (or --module).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Export folder (replaced atomically; a failed export leaves the old one).")] = ...,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset. Default: 23 for attention models (native Attention op), 17 for recurrent.")] = None,
    exporter: Annotated[Optional[str], typer.Option(help="dynamo or torchscript. Default per model kind (see DESIGN.md).")] = None,
    kv_cache: Annotated[str, typer.Option("--kv-cache", help="gpt: concat (the cache grows each step) or static[:N] "
                                          "(an in-place buffer of N positions, default max_seq_len; DESIGN.md).")] = "concat",
    quantize: Annotated[Optional[str], typer.Option(
        help="int8 (dynamic int8 MatMul/LSTM weights) or int8-block (MatMulNBits): quantized graphs beside the fp32 ones; "
             "validate then gates held-out bits per token (--tolerance).")] = None,
    module: Annotated[Optional[str], typer.Option(
        help="Your own nn.Module, as FILE.py:FACTORY (FACTORY returns it, weights loaded or see --weights).",
        rich_help_panel=_BROUGHT)] = None,
    weights: Annotated[Optional[Path], typer.Option(
        help="Weights for --module: .safetensors, or a state_dict file (read with weights_only=True; never unpickled).",
        rich_help_panel=_BROUGHT)] = None,
    task: Annotated[Optional[str], typer.Option(
        help="--module's task: causal-lm, seq2seq, classify, tag, conditioned.", rich_help_panel=_BROUGHT)] = None,
    tokenizer: Annotated[Optional[str], typer.Option(
        help="--module's tokenizer: a Hugging Face tokenizer.json, a vocabulary file (one token per line), or 'bytes'.",
        rich_help_panel=_BROUGHT)] = None,
    tokenizer_level: Annotated[Optional[str], typer.Option(
        help="A vocabulary file's level: word (split on whitespace; default) or char.", rich_help_panel=_BROUGHT)] = None,
    adapter: Annotated[Optional[str], typer.Option(
        help="An adapter, as FILE.py:NAME (a function model -> pieces) for what seqserve cannot read automatically (README).",
        rich_help_panel=_BROUGHT)] = None,
    labels: Annotated[Optional[str], typer.Option(
        help="classify/tag: the label names, comma-separated or a file with one per line (default 0..C-1).",
        rich_help_panel=_BROUGHT)] = None,
    pad_token: Annotated[Optional[str], typer.Option(help="The tokenizer's pad token.", rich_help_panel=_BROUGHT)] = None,
    bos_token: Annotated[Optional[str], typer.Option(help="... begin-of-sequence token.", rich_help_panel=_BROUGHT)] = None,
    eos_token: Annotated[Optional[str], typer.Option(help="... end-of-sequence token.", rich_help_panel=_BROUGHT)] = None,
    unk_token: Annotated[Optional[str], typer.Option(help="... unknown token.", rich_help_panel=_BROUGHT)] = None,
):
    """Export every ONNX graph of the model's task (full, incremental step, encoder, ...) plus the seqserve.json sidecar.

    A checkpoint from `seqserve train`, or your own module: --module FILE.py:FACTORY --task TASK --tokenizer PATH.
    """
    from seqserve.errors import SeqserveError
    from seqserve.export import ExportOptions

    options = ExportOptions(opset=opset, exporter=exporter, kv_cache=kv_cache, quantize=quantize)
    brought = {"--weights": weights, "--task": task, "--tokenizer": tokenizer, "--tokenizer-level": tokenizer_level,
               "--adapter": adapter, "--labels": labels, "--pad-token": pad_token, "--bos-token": bos_token,
               "--eos-token": eos_token, "--unk-token": unk_token}
    if (checkpoint is None) == (module is None):
        raise SeqserveError("give a checkpoint folder or --module FILE.py:FACTORY (one of the two)")
    if checkpoint is not None:
        given = [k for k, v in brought.items() if v is not None]
        if given:
            raise SeqserveError(f"{', '.join(given)} apply to --module only; a checkpoint carries its own")
        from seqserve.export import export_checkpoint

        with console.status("exporting") as status:
            info = export_checkpoint(checkpoint, out, options, progress=lambda msg: status.update(msg))
    else:
        info = _export_module(module, out, options, weights, task, tokenizer, tokenizer_level, adapter, labels,
                              {"pad": pad_token, "bos": bos_token, "eos": eos_token, "unk": unk_token})
    from rich.markup import escape

    graphs = ", ".join(f"{info.raw['graphs'][n]}" + (f" ({len(g.state)} state tensors)" if g.state else "")
                       for n, g in info.spec.graphs.items())
    console.print(f"[green]exported[/] {info.family} ({info.task}) to {escape(str(info.path))}: {graphs}, seqserve.json "
                  f"[dim]({info.raw['export_options']['exporter']}, opset {info.raw['export_options']['opset']}"
                  + (f"; {info.quantized}, fp32 graphs kept beside" if info.quantized else "") + ")[/]")
    console.print(f"next: seqserve validate {info.path}", markup=False, highlight=False)


def _export_module(module, out, options, weights, task, tokenizer, level, adapter, labels, specials):
    from seqserve.adapters import export_module
    from seqserve.adapters.loading import build_module, load_weights
    from seqserve.data import load_tokenizer
    from seqserve.errors import SeqserveError

    missing = [k for k, v in {"--task": task, "--tokenizer": tokenizer}.items() if v is None]
    if missing:
        raise SeqserveError(f"--module needs {' and '.join(missing)}")
    tok = load_tokenizer(tokenizer, level, {k: v for k, v in specials.items() if v is not None} or None)
    model = build_module(module)
    if weights is not None:
        load_weights(model, weights)
    names = _labels(labels)
    with console.status("exporting") as status:
        info = export_module(model, out, task=task, tokenizer=tok, adapter=adapter, labels=names, options=options,
                             source={"module": module, "weights": str(Path(weights).resolve()) if weights else None},
                             progress=lambda msg: status.update(msg))
    for key, value in info.raw["source"]["decisions"].items():
        console.print(f"  {key}: {value}", markup=False, highlight=False)
    return info


def _labels(labels: str | None) -> list[str] | None:
    if labels is None:
        return None
    path = Path(labels)
    names = path.read_text().splitlines() if path.is_file() else labels.split(",")
    return [n.strip() for n in names if n.strip()]
