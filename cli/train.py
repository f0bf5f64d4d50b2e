"""seqserve train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rich.markup import escape

from cli.common import console, progress_bar

# Defaults of a new run. The options default to None so that `--resume` can tell a flag given on
# the command line (checked against the checkpoint, or applied) from one left out.
DEFAULTS = dict(family="lstm", preset="tiny", batch_size=32, seq_len=64, lr=None, clip=1.0, eval_every=50,
                tokenizer="char", max_corpus_mb=4.0, seed=0)
KEEP = "on --resume: must match the checkpoint"
MAY_CHANGE = "on --resume: the checkpoint's unless given"


def command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write (replaced atomically).")],
    family: Annotated[Optional[str], typer.Option(help=f"Model family: rnn, lstm, gru or gpt; conditioned (text from a feature vector, trained on scikit-learn's digits: corpus/tokenizer/seq-len options do not apply). Default: lstm ({KEEP}).", show_default=False)] = None,
    preset: Annotated[Optional[str], typer.Option(help=f"Size preset: tiny (tests) or small (demos). Default: tiny ({KEEP}).", show_default=False)] = None,
    corpus: Annotated[Optional[Path], typer.Option(help=f"Text file or folder. Default: the Python standard library's sources ({KEEP}).", show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option(help="Total optimizer steps (>= 1; a resumed run continues up to it). Default: 200, or no step limit when only --minutes is given.", show_default=False)] = None,
    minutes: Annotated[Optional[float], typer.Option(help="Wall-clock budget in minutes. Alone: train until it runs out; with --steps: stop at whichever comes first.", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Parallel BPTT lanes (recurrent) or windows (gpt). Default: 32 ({KEEP}).", show_default=False)] = None,
    seq_len: Annotated[Optional[int], typer.Option(help=f"Truncated-BPTT chunk length / GPT window. Default: 64 ({KEEP}).", show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(help=f"AdamW learning rate (> 0). Default: 0.003 for rnn/lstm/gru, 0.0005 for gpt ({MAY_CHANGE}).", show_default=False)] = None,
    clip: Annotated[Optional[float], typer.Option(help=f"Max global gradient norm (> 0). Default: 1.0 ({MAY_CHANGE}).", show_default=False)] = None,
    eval_every: Annotated[Optional[int], typer.Option(help=f"Steps between validation passes. Default: 50 ({MAY_CHANGE}).", show_default=False)] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help=f"char (vocabulary from the corpus) or byte (any UTF-8). Default: char ({KEEP}).", show_default=False)] = None,
    layers: Annotated[Optional[int], typer.Option(help=f"Override the preset's layer count (1-4 for recurrent) ({KEEP}).", show_default=False)] = None,
    nonlinearity: Annotated[Optional[str], typer.Option(help=f"rnn only: tanh or relu. Default: tanh ({KEEP}).", show_default=False)] = None,
    positional: Annotated[Optional[str], typer.Option(help=f"gpt only: learned or sinusoidal. Default: learned ({KEEP}).", show_default=False)] = None,
    encoder: Annotated[Optional[str], typer.Option(help=f"classifier/tagger only: rnn, lstm, gru or transformer. Default: lstm ({KEEP}).", show_default=False)] = None,
    bidirectional: Annotated[Optional[bool], typer.Option("--bidirectional/--no-bidirectional", help=f"tagger with a recurrent encoder, or seq2seq: the encoder reads both ways (tagger: then no step graph). Default: off ({KEEP}).", show_default=False)] = None,
    cell: Annotated[Optional[str], typer.Option(help=f"seq2seq only: gru or lstm (encoder and decoder). Default: gru ({KEEP}).", show_default=False)] = None,
    attention: Annotated[Optional[str], typer.Option(help=f"seq2seq only: none, dot (Luong), general (Luong) or additive (Bahdanau). Default: additive ({KEEP}).", show_default=False)] = None,
    tie_weights: Annotated[Optional[bool], typer.Option("--tie-weights/--no-tie-weights", help=f"Share embedding and head weights. Default: on for gpt, off for rnn/lstm/gru; tying a recurrent model widens its embedding to the preset's hidden size ({KEEP}).", show_default=False)] = None,
    max_corpus_mb: Annotated[Optional[float], typer.Option(help=f"Read at most this much text. Default: 4.0 ({KEEP}).", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help=f"Random seed. Default: 0 ({MAY_CHANGE}).", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue training this checkpoint up to --steps (or for --minutes). Model and data flags must be left out or match it.", show_default=False)] = None,
):
    """Train a character-level language model and save a checkpoint (safetensors + JSON).

    Ctrl-C saves the checkpoint at the last finished step (resumable with --resume) and exits 130.
    """
    from dataclasses import replace

    from seqserve.errors import SeqserveError
    from seqserve.models import get_family
    from seqserve.training import TrainConfig, train
    from seqserve.training.trainer import DEFAULT_STEPS, UNBOUNDED_STEPS, TrainingInterrupted

    if max_corpus_mb is not None and not max_corpus_mb > 0:
        raise SeqserveError(f"--max-corpus-mb must be > 0, got {max_corpus_mb}")
    max_bytes = None if max_corpus_mb is None else max(int(max_corpus_mb * 1e6), 1)
    changeable = {k: v for k, v in dict(lr=lr, clip=clip, eval_every=eval_every, seed=seed).items() if v is not None}
    if resume:
        cfg, start = _resume_config(resume, dict(
            family=family, preset=preset, corpus=corpus, batch_size=batch_size, seq_len=seq_len,
            tokenizer=tokenizer, layers=layers, nonlinearity=nonlinearity, positional=positional,
            tie_weights=tie_weights, max_corpus_bytes=max_bytes))
        if steps is None and minutes is None and start >= DEFAULT_STEPS:
            raise SeqserveError(f"checkpoint {resume} is already at step {start}; pass --steps greater than "
                                f"{start} (the total to train up to) or --minutes")
        if steps is not None and steps <= start:
            raise SeqserveError(f"--steps {steps} is not greater than the checkpoint's step {start}; --steps is "
                                f"the total to train up to, e.g. --steps {start + DEFAULT_STEPS}")
        total = _total_steps(steps, minutes, DEFAULT_STEPS, UNBOUNDED_STEPS)
        cfg = replace(cfg, steps=total, minutes=minutes, **changeable)
    else:
        start = 0
        fam = get_family(family or DEFAULTS["family"])
        _check_family_flags(fam.name, nonlinearity, positional)
        overrides = {"nonlinearity": nonlinearity, "positional": positional, "tie_weights": tie_weights,
                     "encoder": encoder, "bidirectional": bidirectional, "cell": cell, "attention": attention}
        if encoder is not None and fam.name not in ("classifier", "tagger"):
            raise SeqserveError(f"--encoder applies to --family classifier or tagger, not {fam.name}")
        if bidirectional is not None and fam.name not in ("classifier", "tagger", "seq2seq"):
            raise SeqserveError(f"--bidirectional applies to --family classifier, tagger or seq2seq, not {fam.name}")
        if (cell is not None or attention is not None) and fam.name != "seq2seq":
            raise SeqserveError(f"--cell/--attention apply to --family seq2seq, not {fam.name}")
        if layers is not None:
            overrides["n_layers" if fam.name == "gpt" else "num_layers"] = layers
        given = dict(preset=preset, batch_size=batch_size, seq_len=seq_len, tokenizer=tokenizer)
        cfg = TrainConfig(family=fam.name, corpus=str(corpus) if corpus else None,
                          max_corpus_bytes=max_bytes or int(DEFAULTS["max_corpus_mb"] * 1e6),
                          steps=_total_steps(steps, minutes, DEFAULT_STEPS, UNBOUNDED_STEPS), minutes=minutes,
                          model_overrides={k: v for k, v in overrides.items() if v is not None},
                          **{k: DEFAULTS[k] if v is None else v for k, v in given.items()},
                          **{k: changeable.get(k, DEFAULTS[k]) for k in ("lr", "clip", "eval_every", "seed")})
    from rich.progress import TextColumn

    try:
        with progress_bar(TextColumn("{task.fields[metrics]}")) as bar:
            task = bar.add_task(f"train {cfg.family}/{cfg.preset}", completed=start, metrics="",
                                total=None if cfg.steps == UNBOUNDED_STEPS else cfg.steps)

            def report(step, total, m):
                if "train_loss" in m:             # classify / tag: loss and held-out accuracy
                    text = f"train loss {m['train_loss']:.3f}" + (
                        f"  held-out accuracy {m['val_accuracy']:.3f}" if "val_accuracy" in m else "")
                else:
                    text = f"train {m['train_bpc']:.3f} bpc" + (f"  val {m['val_bpc']:.3f} bpc" if "val_bpc" in m else "")
                bar.update(task, completed=step, metrics=text)

            result = train(cfg, out, resume=resume, progress=report)
    except TrainingInterrupted as e:
        if e.path is not None:
            console.print(f"[yellow]interrupted:[/] checkpoint saved at step {e.step} to {escape(str(e.path))}; continue with "
                          f"seqserve train --resume {escape(str(e.path))} --out {escape(str(e.path))} --steps N (or --minutes M)",
                          highlight=False, soft_wrap=True)
        else:
            console.print("[yellow]interrupted[/] before the first step finished: nothing saved")
        raise
    if "val_accuracy" in result.scores:
        console.print(f"[green]saved[/] {escape(str(result.path))}  steps {result.steps}  "
                      f"held-out accuracy {result.scores['val_accuracy']:.3f}")
    else:
        console.print(f"[green]saved[/] {escape(str(result.path))}  steps {result.steps}  "
                      f"validation {result.val_bpc:.3f} bits/char")
    if "exact_match" in result.scores:            # conditioned: greedy text on held-out features
        console.print(f"held-out exact match {result.scores['exact_match']:.3f}  "
                      f"token accuracy {result.scores['token_accuracy']:.3f}")
    console.print(f"next: seqserve export {result.path} --out {result.path}-onnx", markup=False, highlight=False)


def _check_family_flags(family: str, nonlinearity, positional) -> None:
    from seqserve.errors import SeqserveError

    if nonlinearity is not None and family != "rnn":
        raise SeqserveError(f"--nonlinearity applies to --family rnn only, not {family}")
    if positional is not None and family != "gpt":
        raise SeqserveError(f"--positional applies to --family gpt only, not {family}")


def _total_steps(steps, minutes, default, unbounded) -> int:
    if steps is not None:
        return steps
    return unbounded if minutes is not None else default


def _resume_config(path: Path, given: dict):
    """The checkpoint's TrainConfig and step; SeqserveError when a model/data flag contradicts it."""
    from seqserve.checkpoint import read_checkpoint_info
    from seqserve.errors import SeqserveError
    from seqserve.models import get_family
    from seqserve.training import resume_config
    from seqserve.training.trainer import checkpoint_step

    saved = resume_config(path)
    _check_family_flags(saved.family, given["nonlinearity"], given["positional"])
    model = read_checkpoint_info(path).get("model") or {}
    gpt = saved.family == "gpt"
    have = dict(
        family=saved.family, preset=saved.preset, corpus=saved.corpus, batch_size=saved.batch_size,
        seq_len=saved.seq_len, tokenizer=saved.tokenizer, layers=model.get("n_layers" if gpt else "num_layers"),
        nonlinearity=model.get("nonlinearity"), positional=model.get("positional"),
        tie_weights=model.get("tie_weights"), max_corpus_bytes=saved.max_corpus_bytes)
    if given["family"] is not None:
        given["family"] = get_family(given["family"]).name
    if given["corpus"] is not None:
        given["corpus"] = str(Path(given["corpus"]).expanduser().resolve())
    conflicts = []
    for key, value in given.items():
        if value is None or value == have[key]:
            continue
        if key == "max_corpus_bytes":
            flag, value, theirs = "--max-corpus-mb", value / 1e6, have[key] / 1e6
        elif key == "tie_weights":
            flag, value, theirs = "--tie-weights" if value else "--no-tie-weights", None, "tied" if have[key] else "untied"
        else:
            flag, theirs = "--" + key.replace("_", "-"), have[key]
        if key == "corpus" and theirs is None:
            theirs = "the Python standard library"
        conflicts.append(f"{flag}{'' if value is None else f' {value}'} (checkpoint: {theirs})")
    if conflicts:
        raise SeqserveError(f"--resume keeps the checkpoint's model and data settings, and these differ: "
                            f"{'; '.join(conflicts)}; leave them out (--steps, --minutes, --lr, --clip, "
                            f"--eval-every and --seed may change)")
    return saved, checkpoint_step(path)
