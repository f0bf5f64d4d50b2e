"""seqserve classify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console


def command(
    export: Annotated[Optional[Path], typer.Argument(help="Export folder of a classifier or tagger (`seqserve export`), or use --url.")] = None,
    text: Annotated[Optional[list[str]], typer.Option(help="Text to classify (tag); repeat for several.")] = None,
    examples: Annotated[bool, typer.Option("--examples", help="Run the held-out examples the export carries and show each next to its reference.")] = False,
    top: Annotated[int, typer.Option(help="classifier: how many labels to show, most likely first.")] = 3,
    backend: Annotated[str, typer.Option(help="ort (ONNX Runtime) or torch (eager, from the export's checkpoint).")] = "ort",
    url: Annotated[Optional[str], typer.Option(help="Ask a running server instead: http://HOST:PORT (seqserve or Triton).")] = None,
    model: Annotated[Optional[str], typer.Option(help="With --url: the text model, NAME_classify (from `seqserve package`).")] = None,
    api_key: Annotated[Optional[str], typer.Option(help="With --url: bearer token (default: $SEQSERVE_API_KEY).")] = None,
):
    """Classify text (classifier) or tag every character (tagger) with an exported model: labels and probabilities."""
    from rich.markup import escape

    from seqserve.errors import SeqserveError
    from seqserve.export import load_export
    from seqserve.runtime import make_backend
    from seqserve.runtime.scoring import classify_texts, tag_texts

    if (export is None) == (url is None):
        raise SeqserveError("give either an export folder or --url (a running server), not both or neither")
    if url is not None:
        import os

        from seqserve.runtime.scoring import classify_remote

        if not model or not text:
            raise SeqserveError("--url needs --model NAME_classify and at least one --text")
        for t in text:
            console.print(escape(repr(t)), highlight=False)
            for label, p in classify_remote(url, model, t, top, api_key or os.environ.get("SEQSERVE_API_KEY")):
                console.print(f"  {escape(label):<20} {p:.4f}", highlight=False)
        return
    info = load_export(export)
    if info.task not in ("classify", "tag"):
        raise SeqserveError(f"{export} is a {info.task} model; `seqserve classify` takes a classifier or tagger "
                            f"(use `seqserve generate` for {info.task})")
    shown = [e["input"] for e in info.raw.get("examples", [])] if examples else []
    texts = [*(text or []), *shown]
    if not texts:
        raise SeqserveError("give --text TEXT (repeatable) or --examples")
    labels = info.spec.io["labels"]
    run = make_backend(info, backend, graph="full")
    refs = [None] * len(text or []) + [e["expected"] for e in info.raw.get("examples", [])][:len(shown)]
    if info.task == "classify":
        for t, ref, result in zip(texts, refs, classify_texts(run, info.tokenizer, labels, texts, top, info.max_context)):
            console.print(f"{escape(repr(t))}" + (f"  (reference: {escape(ref)})" if ref else ""), highlight=False)
            for label, p in result:
                console.print(f"  {escape(label):<20} {p:.4f}", highlight=False)
        return
    for t, ref, runs in zip(texts, refs, tag_texts(run, info.tokenizer, labels, texts, info.max_context)):
        console.print(escape(repr(t)), highlight=False)
        for piece, tag in runs:
            console.print(f"  {escape(repr(piece)):<24} {escape(tag)}", highlight=False)
        if ref:
            right = sum(a == b for a, b in zip(ref, [tg for piece, tg in runs for _ in piece]))
            console.print(f"  reference agrees on {right}/{len(ref)} characters", highlight=False)
