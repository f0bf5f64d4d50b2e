"""seqserve generate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console, err_console


def command(
    export: Annotated[Optional[Path], typer.Argument(help="Export folder from `seqserve export` (or use --url).")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option(help="Prompt text; repeat for a batch of prompts. conditioned: an optional text prefix (one for every feature vector).")] = None,
    features: Annotated[Optional[Path], typer.Option(help="conditioned only: a .npy file of feature vectors [N, F] (or [F]); one text each.")] = None,
    examples: Annotated[bool, typer.Option("--examples", help="conditioned: run the held-out examples the export carries and show each next to its reference.")] = False,
    max_tokens: Annotated[int, typer.Option(help="New tokens per prompt.")] = 128,
    backend: Annotated[str, typer.Option(help="ort (ONNX Runtime) or torch (eager, from the export's checkpoint).")] = "ort",
    greedy: Annotated[bool, typer.Option("--greedy", help="Always take the most likely token.")] = False,
    temperature: Annotated[float, typer.Option(help="Softmax temperature; 0 = greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Sample from the k most likely tokens; 0 = all.")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass; 1 = off.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Seed for reproducible sampling.")] = None,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop string (repeatable); output ends before it.")] = None,
    beams: Annotated[int, typer.Option(help="Beam search with this many beams (1 = off); ignores the sampling options, prints the best hypotheses.")] = 1,
    length_penalty: Annotated[float, typer.Option(help="With --beams: rank by sum(log p) / length ** this (0 = total, 1 = per token).")] = 1.0,
    device: Annotated[str, typer.Option(help="cpu or cuda (ONNX Runtime CUDA provider).")] = "cpu",
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads; 0 = one per core.")] = 0,
    url: Annotated[Optional[str], typer.Option(
        help="Generate on a running server instead: http://HOST:PORT (SSE) or grpc://HOST:PORT (seqserve or Triton).")] = None,
    model: Annotated[Optional[str], typer.Option(help="With --url: the generation model (NAME or NAME_generate).")] = None,
    api_key: Annotated[Optional[str], typer.Option(help="With --url: bearer token (default: $SEQSERVE_API_KEY).")] = None,
):
    """Generate text from an exported model, or from a running server with --url, streaming it as it comes."""
    import os

    from seqserve.errors import SeqserveError
    from seqserve.generation import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, greedy=greedy, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed, stop=tuple(stop or ()))
    if (export is None) == (url is None):
        raise SeqserveError("give either an export folder or --url (a running server), not both or neither")
    from seqserve.generation.beam import BeamParams

    BeamParams(beams=beams, max_tokens=max_tokens, length_penalty=length_penalty)   # checked before any work
    if url is not None:
        from seqserve.serve.client import RemoteGenerator

        if not model:
            raise SeqserveError("--url needs --model: the name of the generation model on that server")
        remote = RemoteGenerator(url, model, api_key=api_key or os.environ.get("SEQSERVE_API_KEY"))
        if features is not None or examples:      # conditioned: the server checks the width
            if examples:
                raise SeqserveError("--examples reads an export folder's sidecar; with --url give --features FILE.npy")
            prompt, inputs, _ = _remote_features(prompt, features)
            if beams != 1:
                import numpy as np

                inputs = [{**x, "beams": np.array([beams], np.int32)} for x in inputs]
            return _show_conditioned(prompt, None, remote.generate(prompt, params, inputs))
        # beams > 1: the server's beam search answers the best hypothesis as one piece
        events = remote.generate(prompt or [], params, None if beams == 1 else _beam_inputs(len(prompt or []), beams))
    else:
        from seqserve.export import load_export
        from seqserve.generation import generate
        from seqserve.runtime import RuntimeOptions, make_backend

        info = load_export(export)
        if info.spec.head in ("classify", "tag"):        # nothing to generate: scores per text / character
            raise SeqserveError(f"{export} is a {info.task} model ({info.family}): it does not generate text; "
                                f"use `seqserve classify {export} --text ...`")
        if info.task == "seq2seq":      # encoder-decoders: the prompt is the source text
            return _seq2seq(info, prompt, features, examples, backend, RuntimeOptions(device=device, intra_op_threads=threads),
                            params if beams == 1 else BeamParams(beams=beams, max_tokens=max_tokens, length_penalty=length_penalty))
        once = _once_inputs(info, prompt, features, examples)
        if once is not None:        # a chain that starts from features (conditioned)
            from seqserve.runtime import make_chain

            prompt, inputs, refs = once
            be, chain = make_chain(info, backend, RuntimeOptions(device=device, intra_op_threads=threads))
            if beams != 1:
                return _beams(be, info, prompt, BeamParams(beams=beams, max_tokens=max_tokens,
                                                           length_penalty=length_penalty), chain, inputs, refs)
            return _show_conditioned(prompt, refs, generate(be, info.tokenizer, prompt, params, info.max_context,
                                                            chain, inputs))
        if not prompt:
            raise SeqserveError("give --prompt TEXT (repeatable)")
        be = make_backend(info, backend, options=RuntimeOptions(device=device, intra_op_threads=threads))
        if beams != 1:
            return _beams(be, info, prompt, BeamParams(beams=beams, max_tokens=max_tokens, length_penalty=length_penalty))
        events = generate(be, info.tokenizer, prompt, params, info.max_context)
    if not prompt:
        raise SeqserveError("give --prompt TEXT (repeatable)")
    if len(prompt) == 1:
        _stream_one(prompt[0], events)
    else:
        _stream_many(prompt, events)


def _beam_inputs(n: int, beams: int) -> list[dict]:
    import numpy as np

    return [{"beams": np.array([beams], np.int32)} for _ in range(n)]


def _beams(backend, info, prompts: list[str], params, chain=None, once_inputs=None, refs=None) -> None:
    """Each prompt's hypotheses, best first: the best one's text on stdout, the table on stderr.
    chain/once_inputs: a conditioned export (one feature vector per prompt); refs: --examples."""
    from rich.table import Table
    from rich.text import Text

    from seqserve.generation.beam import beam_texts

    out = beam_texts(backend, info.tokenizer, prompts, params, info.max_context, chain, once_inputs)
    for i, (prompt, hyps) in enumerate(zip(prompts, out)):
        sys.stdout.write(prompt + hyps[0].text + "\n")
        title = f"{len(hyps)} beams for {prompt!r}" + (f" (#{i}, reference {refs[i]!r})" if refs else "")
        t = Table(title=title, title_justify="left")
        for col in ("#", "score", "finish", "text"):
            t.add_column(col)
        for j, h in enumerate(hyps):
            t.add_row(str(j), f"{h.score:.4f}", h.finish_reason, Text(h.text))
        err_console.print(t)
    if refs:
        hits = sum(p + h[0].text == r for p, h, r in zip(prompts, out, refs))
        console.print(f"exact match {hits}/{len(refs)}")


def _seq2seq(info, prompt, features, examples, backend, options, params) -> None:
    """seq2seq: each --prompt (or the sidecar's example sources) -> its target, through the chain
    (encoder once, then decoder steps). One source: the target streams to stdout; beams and
    examples: a table (the best target of each source on stdout with beams)."""
    from rich.table import Table

    from seqserve.errors import SeqserveError
    from seqserve.generation.beam import BeamParams
    from seqserve.runtime import make_chain
    from seqserve.tasks import task_module

    seq2seq = task_module(info.task)        # seq2seq or translate: the same examples / generate_targets
    if features is not None:
        raise SeqserveError(f"--features applies to the conditioned task; this export is {info.task} (give --prompt SOURCE)")
    if bool(prompt) == examples:
        raise SeqserveError("give --prompt SOURCE (repeatable; the text to translate) or --examples, not both or neither")
    sources, refs = seq2seq.examples(info.raw) if examples else (list(prompt), None)
    step, chain = make_chain(info, backend, options)
    out = seq2seq.generate_targets(chain.once[0], step, info.spec, info.tokenizer, sources, params)
    if isinstance(params, BeamParams):
        for source, hyps in zip(sources, out):
            sys.stdout.write(hyps[0].text + "\n")
            t = Table(title=f"{len(hyps)} beams for {source!r}", title_justify="left")
            for col in ("#", "score", "finish", "target"):
                t.add_column(col)
            for i, h in enumerate(hyps):
                t.add_row(str(i), f"{h.score:.4f}", h.finish_reason, h.text)
            err_console.print(t)
        texts = [hyps[0].text for hyps in out]
    elif len(sources) == 1 and refs is None:
        return _stream_one("", out)
    else:
        texts, reasons = [""] * len(sources), [""] * len(sources)
        for ev in out:
            texts[ev.index] += ev.text
            reasons[ev.index] = ev.finish_reason or reasons[ev.index]
        t = Table()
        for col in ("#", "source", "generated", *(("reference", "match") if refs else ()), "finish"):
            t.add_column(col)
        for i, (s, x) in enumerate(zip(sources, texts)):
            t.add_row(str(i), s, x, *((refs[i], "yes" if x == refs[i] else "no") if refs else ()), reasons[i])
        console.print(t)
    if refs:
        console.print(f"exact match {sum(x == r for x, r in zip(texts, refs))}/{len(refs)}")


def _once_inputs(info, prompt, features, examples):
    """A task whose chain starts from features: (prompts, once inputs per prompt, references or
    None); None for causal-lm (where --features/--examples are an error)."""
    import numpy as np

    from seqserve.errors import SeqserveError
    from seqserve.tasks import conditioned
    from seqserve.tasks.spec import FEATURES

    if not info.spec.once:
        if features is not None or examples:
            raise SeqserveError(f"--features and --examples apply to the conditioned task; this export is {info.task}")
        return None
    if (features is None) == (not examples):
        raise SeqserveError("this model generates from feature vectors: give --features FILE.npy or --examples")
    width = info.spec.io["features"]
    if examples:
        feats, refs = conditioned.examples(info.raw, width)
    else:
        feats, refs = conditioned.load_features(features, width), None
    prefixes = list(prompt or [""])
    if len(prefixes) == 1:
        prefixes *= len(feats)
    if len(prefixes) != len(feats):
        raise SeqserveError(f"give one --prompt for all {len(feats)} feature vectors, or one each; got {len(prefixes)}")
    name = info.spec.once[0].name_of(FEATURES)
    return prefixes, [{name: np.ascontiguousarray(feats[i:i + 1])} for i in range(len(feats))], refs


def _remote_features(prompt, features):
    """--url --features: one request per vector of the .npy file (the server checks the width)."""
    import numpy as np

    from seqserve.errors import SeqserveError
    from seqserve.tasks import conditioned

    try:
        feats = np.load(features, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SeqserveError(f"cannot read features from {features}: {e} (expected a .npy file [N, F])") from None
    feats = conditioned.check_features(feats, feats.shape[-1] if feats.ndim else 0, f"features in {features}")
    prefixes = list(prompt or [""]) * (len(feats) if len(prompt or [""]) == 1 else 1)
    if len(prefixes) != len(feats):
        raise SeqserveError(f"give one --prompt for all {len(feats)} feature vectors, or one each; got {len(prefixes)}")
    return prefixes, [{conditioned.FEATURES_NAME: f} for f in feats], None


def _show_conditioned(prefixes, refs, events) -> None:
    from rich.table import Table

    texts, reasons = [""] * len(prefixes), [""] * len(prefixes)
    for ev in events:
        texts[ev.index] += ev.text
        reasons[ev.index] = ev.finish_reason or reasons[ev.index]
    t = Table()
    for col in ("#", "generated", *(("reference", "match") if refs else ()), "finish"):
        t.add_column(col)
    for i, (p, x) in enumerate(zip(prefixes, texts)):
        row = [str(i), p + x]
        if refs:
            row += [refs[i], "yes" if p + x == refs[i] else "no"]
        t.add_row(*row, reasons[i])
    console.print(t)
    if refs:
        hits = sum(p + x == r for p, x, r in zip(prefixes, texts, refs))
        console.print(f"exact match {hits}/{len(refs)}")


def _stream_one(prompt: str, events) -> None:
    console.print(prompt, style="dim", end="", highlight=False, markup=False)
    reason = None
    for ev in events:
        sys.stdout.write(ev.text)
        sys.stdout.flush()
        reason = ev.finish_reason or reason
    sys.stdout.write("\n")
    err_console.print(f"[dim]({reason})[/]")   # stderr: piped output is only the text


def _stream_many(prompts: list[str], events) -> None:
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    texts, reasons = [""] * len(prompts), [""] * len(prompts)

    def table():
        t = Table(show_lines=True)
        t.add_column("#", justify="right")
        t.add_column("prompt + completion")
        t.add_column("finish")
        for i, p in enumerate(prompts):
            t.add_row(str(i), Text(p, style="dim") + Text(texts[i]), reasons[i])
        return t

    with Live(table(), console=console, refresh_per_second=12) as live:
        for ev in events:
            texts[ev.index] += ev.text
            reasons[ev.index] = ev.finish_reason or reasons[ev.index]
            live.update(table())
