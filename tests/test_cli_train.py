"""`seqserve train` and `seqserve quickstart` options, driven with Typer's CliRunner."""

from __future__ import annotations

import ctypes
import json
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from seqserve.checkpoint import load_checkpoint, read_checkpoint_info
from seqserve.training import resume_config
from seqserve.training.trainer import UNBOUNDED_STEPS

from helpers import assert_one_line_error, run

FAST = ("--preset", "tiny", "--batch-size", "8", "--seq-len", "32", "--max-corpus-mb", "0.3")


def help_text(command: str) -> str:
    res = run(command, "--help")
    assert res.exit_code == 0, res.output
    return " ".join(res.output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def step_of(ckpt: Path) -> int:
    return json.loads((ckpt / "trainer_state.json").read_text())["step"]


@pytest.fixture(scope="module")
def lstm3(tmp_path_factory):
    """A 3-step lstm checkpoint trained through the CLI with the FAST options."""
    out = tmp_path_factory.mktemp("cli-train") / "lstm"
    res = run("train", "--family", "lstm", *FAST, "--steps", "3", "--out", out)
    assert res.exit_code == 0, res.output
    return out


# --- bad numbers: one line, exit 2, nothing written ----------------------------------------------

@pytest.mark.parametrize("args, words", [
    (("--steps", "0"), ("steps must be >= 1, got 0",)),
    (("--steps", "-3"), ("steps must be >= 1",)),
    (("--lr", "-1"), ("lr must be a number > 0", "-1")),
    (("--clip", "-1"), ("clip must be a number > 0", "-1")),
    (("--clip", "0"), ("clip must be a number > 0",)),
    (("--minutes", "0"), ("minutes must be a number > 0",)),
    (("--max-corpus-mb", "0"), ("--max-corpus-mb must be > 0",)),
    (("--family", "gpt", "--layers", "0"), ("n_layers must be >= 1, got 0",)),
    (("--family", "lstm", "--layers", "0"), ("num_layers must be 1-4",)),
])
def test_bad_numbers_are_one_line_errors(args, words, tmp_path):
    assert_one_line_error(run("train", *FAST, *args, "--out", tmp_path / "x"), *words)
    assert not (tmp_path / "x").exists()


# --- --minutes without --steps -------------------------------------------------------------------

def test_minutes_alone_trains_until_the_time_is_up(tmp_path):
    out = tmp_path / "timed"
    t0 = time.monotonic()
    res = run("train", "--family", "gru", *FAST, "--minutes", "0.02", "--eval-every", "100000", "--out", out)
    assert res.exit_code == 0, res.output
    assert time.monotonic() - t0 >= 1.2                       # 0.02 minutes of training at least
    cfg = resume_config(out)
    assert cfg.minutes == 0.02 and cfg.steps == UNBOUNDED_STEPS  # not capped at the default 200
    assert step_of(out) >= 1


def test_minutes_is_documented_in_help():
    text = help_text("train")
    assert "Alone: train until it runs out" in text and "Default: 200" in text


# --- --resume: model/data flags must match, training flags apply ---------------------------------

@pytest.mark.parametrize("args, words", [
    (("--family", "gru"), ("--family gru (checkpoint: lstm)",)),
    (("--preset", "small"), ("--preset small (checkpoint: tiny)",)),
    (("--batch-size", "16"), ("--batch-size 16 (checkpoint: 8)",)),
    (("--seq-len", "64"), ("--seq-len 64 (checkpoint: 32)",)),
    (("--tokenizer", "byte"), ("--tokenizer byte (checkpoint: char)",)),
    (("--layers", "3"), ("--layers 3 (checkpoint: 2)",)),
    (("--tie-weights",), ("--tie-weights (checkpoint: untied)",)),
    (("--max-corpus-mb", "1"), ("--max-corpus-mb 1.0 (checkpoint: 0.3)",)),
    (("--nonlinearity", "tanh"), ("--nonlinearity applies to --family rnn only, not lstm",)),
    (("--positional", "learned"), ("--positional applies to --family gpt only, not lstm",)),
    (("--batch-size", "16", "--seq-len", "16"), ("--resume keeps the checkpoint's", "--batch-size 16", "--seq-len 16")),
])
def test_resume_rejects_model_and_data_flags_that_differ(lstm3, args, words, tmp_path):
    res = run("train", "--resume", lstm3, "--steps", "5", *args, "--out", tmp_path / "r")
    assert_one_line_error(res, *words)
    assert not (tmp_path / "r").exists()


def test_resume_rejects_another_corpus(lstm3, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("x = 1\n" * 100)
    res = run("train", "--resume", lstm3, "--steps", "5", "--corpus", other, "--out", tmp_path / "r")
    assert_one_line_error(res, f"--corpus {other} (checkpoint: the Python standard library)")


def test_resume_accepts_matching_flags_and_applies_the_training_ones(lstm3, tmp_path):
    out = tmp_path / "r"
    res = run("train", "--resume", lstm3, "--family", "lstm", "--preset", "tiny", "--batch-size", "8",
              "--seq-len", "32", "--max-corpus-mb", "0.3", "--layers", "2", "--no-tie-weights",
              "--steps", "5", "--lr", "0.001", "--clip", "0.5", "--eval-every", "2", "--seed", "7", "--out", out)
    assert res.exit_code == 0, res.output
    cfg = resume_config(out)
    assert (cfg.steps, cfg.lr, cfg.clip, cfg.eval_every, cfg.seed) == (5, 0.001, 0.5, 2, 7)
    assert (cfg.family, cfg.batch_size, cfg.seq_len) == ("lstm", 8, 32)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 5 and [h["step"] for h in state["history"]] == [3, 4, 5]   # 3: the first run's end
    assert {g["lr"] for g in state["optimizer"]["param_groups"]} == {0.001}


def test_resume_without_flags_keeps_the_checkpoint_settings(lstm3, tmp_path):
    out = tmp_path / "r"
    res = run("train", "--resume", lstm3, "--steps", "4", "--out", out)
    assert res.exit_code == 0, res.output
    assert resume_config(out) == replace(resume_config(lstm3), steps=4)
    assert step_of(out) == 4


def test_resume_needs_steps_beyond_the_checkpoint(lstm3, tmp_path):
    res = run("train", "--resume", lstm3, "--steps", "3", "--out", tmp_path / "r")
    assert_one_line_error(res, "--steps 3 is not greater than the checkpoint's step 3")


def test_resume_without_steps_past_the_default_asks_for_steps(tmp_path):
    first = tmp_path / "long"
    res = run("train", "--family", "rnn", "--preset", "tiny", "--batch-size", "2", "--seq-len", "8",
              "--max-corpus-mb", "0.05", "--eval-every", "200", "--out", first)          # 200 steps
    assert res.exit_code == 0, res.output
    assert step_of(first) == 200
    res = run("train", "--resume", first, "--out", tmp_path / "r")
    assert_one_line_error(res, "already at step 200", "--steps greater than 200")
    assert not (tmp_path / "r").exists()
    res = run("train", "--resume", first, "--steps", "202", "--out", first)            # in place
    assert res.exit_code == 0, res.output
    assert step_of(first) == 202


def test_resume_from_another_directory_with_a_relative_corpus(tmp_path, monkeypatch):
    import json as stdlib_json

    src = Path(stdlib_json.__file__).parent
    text = "\n".join(p.read_text() for p in sorted(src.glob("*.py")))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "corpus.txt").write_text(text)
    monkeypatch.chdir(tmp_path / "a")
    res = run("train", "--family", "gru", "--corpus", "corpus.txt", "--preset", "tiny", "--batch-size", "8",
              "--seq-len", "32", "--steps", "2", "--out", tmp_path / "ck")
    assert res.exit_code == 0, res.output
    assert resume_config(tmp_path / "ck").corpus == str(tmp_path / "a" / "corpus.txt")
    monkeypatch.chdir(tmp_path)
    res = run("train", "--resume", tmp_path / "ck", "--steps", "3", "--out", tmp_path / "ck2")
    assert res.exit_code == 0, res.output
    assert step_of(tmp_path / "ck2") == 3
    # The same file named another way is not a conflict.
    res = run("train", "--resume", tmp_path / "ck", "--corpus", "a/corpus.txt", "--steps", "3", "--out", tmp_path / "ck3")
    assert res.exit_code == 0, res.output


# --- --tie-weights for a recurrent family --------------------------------------------------------

@pytest.mark.slow
def test_tied_lstm_trains_exports_and_validates(tmp_path):
    from seqserve.export import export_checkpoint
    from seqserve.validate import validate_export

    out = tmp_path / "tied"
    res = run("train", "--family", "lstm", *FAST, "--tie-weights", "--steps", "3", "--out", out)
    assert res.exit_code == 0, res.output
    model = load_checkpoint(out).model
    assert model.config.tie_weights and model.config.embed_dim == model.config.hidden_size == 64
    assert model.head.weight is model.embed.weight
    assert model.head.weight.data_ptr() == model.embed.weight.data_ptr()
    assert read_checkpoint_info(out)["training"]["config"]["model_overrides"] == {"tie_weights": True}
    info = export_checkpoint(out, tmp_path / "onnx")
    report = validate_export(info.path)
    assert report.passed, [c for c in report.checks if not c.passed]


def test_tie_weights_help_says_what_it_does_to_a_recurrent_model():
    text = help_text("train")
    assert "widens its embedding to the preset's hidden size" in text


# --- Ctrl-C --------------------------------------------------------------------------------------

def _interrupt_once_training(thread: int, min_steps: int, stop: threading.Event):
    """Ctrl-C, as the signal handler would raise it, in `thread` once its train() loop has finished
    `min_steps` steps (read from the running frame: the CLI gives no other sign before it ends)."""
    from seqserve.training import trainer

    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        frame = sys._current_frames().get(thread)
        while frame is not None:
            if frame.f_code is trainer.train.__code__:
                done, start = frame.f_locals.get("done_step"), frame.f_locals.get("start_step")
                if done is not None and start is not None and done - start >= min_steps:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(KeyboardInterrupt))
                    return
            frame = frame.f_back
        time.sleep(0.005)


def test_ctrl_c_saves_the_checkpoint_and_exits_130(tmp_path):
    out = tmp_path / "ck"
    stop = threading.Event()
    watcher = threading.Thread(target=_interrupt_once_training, args=(threading.get_ident(), 3, stop), daemon=True)
    watcher.start()
    try:
        res = run("train", "--family", "gru", *FAST, "--minutes", "0.5", "--out", out)
    finally:
        stop.set()
        watcher.join(5)
    assert res.exit_code == 130, res.output
    text = " ".join(res.output.split())
    step = step_of(out)
    assert step >= 3
    assert f"checkpoint saved at step {step} to {out}" in text and "--resume" in text
    assert "interrupted" in text
    assert read_checkpoint_info(out)["training"]["interrupted"] is True
    load_checkpoint(out)
    res = run("train", "--resume", out, "--steps", step + 2, "--out", out)
    assert res.exit_code == 0, res.output
    assert step_of(out) == step + 2


# --- quickstart ----------------------------------------------------------------------------------

@pytest.mark.parametrize("families", [",", "", " , "])
def test_quickstart_needs_a_family(families, tmp_path):
    res = run("quickstart", "--families", families, "--out", tmp_path / "q")
    assert_one_line_error(res, "--families must name at least one of rnn, lstm, gru, gpt")
    assert not (tmp_path / "q").exists()


def test_quickstart_rejects_an_unknown_family(tmp_path):
    assert_one_line_error(run("quickstart", "--families", "lstm,nope", "--out", tmp_path / "q"), "'nope'")

