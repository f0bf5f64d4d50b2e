"""Checkpoints on disk: load errors that name what is wrong, and atomic saves (seqserve.io)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from seqserve.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from seqserve.errors import SeqserveError
from seqserve.io import atomic_dir, atomic_write_text

from helpers import hidden_leftovers, snapshot, umask


# --- load_checkpoint errors ----------------------------------------------------------------------

@pytest.fixture
def ckpt_copy(checkpoint, tmp_path):
    """A private copy of the session's tiny lstm checkpoint (tests/conftest.py)."""
    dst = tmp_path / "ckpt"
    shutil.copytree(checkpoint("lstm"), dst)
    return dst


def test_load_checkpoint_missing_folder(tmp_path):
    with pytest.raises(SeqserveError, match="is not a folder"):
        load_checkpoint(tmp_path / "missing")


def test_load_checkpoint_missing_config(ckpt_copy):
    (ckpt_copy / "config.json").unlink()
    with pytest.raises(SeqserveError, match="has no config.json"):
        load_checkpoint(ckpt_copy)


@pytest.mark.parametrize("text, match", [("{not json", "is not valid JSON"),
                                         ("[1, 2]", "expected an object"),
                                         ('{"format": "other/1"}', "has format 'other/1'")])
def test_load_checkpoint_bad_config_json(ckpt_copy, text, match):
    (ckpt_copy / "config.json").write_text(text)
    with pytest.raises(SeqserveError, match=match) as e:
        load_checkpoint(ckpt_copy)
    assert "config.json" in str(e.value)


def test_load_checkpoint_truncated_weights(ckpt_copy):
    w = ckpt_copy / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(SeqserveError, match="corrupt") as e:
        load_checkpoint(ckpt_copy)
    assert "model.safetensors" in str(e.value)


def test_load_checkpoint_missing_weights_or_tokenizer(ckpt_copy):
    (ckpt_copy / "model.safetensors").unlink()
    with pytest.raises(SeqserveError, match="has no model.safetensors"):
        load_checkpoint(ckpt_copy)
    (ckpt_copy / "tokenizer.json").unlink()
    with pytest.raises(SeqserveError, match="has no tokenizer.json"):
        load_checkpoint(ckpt_copy)


def test_load_checkpoint_weights_that_do_not_fit_the_config(ckpt_copy):
    cfg = json.loads((ckpt_copy / "config.json").read_text())
    cfg["model"]["hidden_size"] = 32
    (ckpt_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SeqserveError, match="model.safetensors"):
        load_checkpoint(ckpt_copy)


# --- atomic saves --------------------------------------------------------------------------------

def test_failed_save_leaves_the_previous_checkpoint_intact(ckpt_copy):
    before = snapshot(ckpt_copy)
    ckpt = load_checkpoint(ckpt_copy)
    torch.nn.init.zeros_(ckpt.model.head.weight)          # different weights, and then ...
    with pytest.raises(TypeError):                        # ... a training record JSON cannot hold
        save_checkpoint(ckpt_copy, "lstm", ckpt.model, ckpt.tokenizer, {"bad": object()})
    assert snapshot(ckpt_copy) == before
    assert hidden_leftovers(ckpt_copy.parent) == []
    load_checkpoint(ckpt_copy)


def test_successful_save_replaces_the_checkpoint(ckpt_copy):
    ckpt = load_checkpoint(ckpt_copy)
    save_checkpoint(ckpt_copy, "lstm", ckpt.model, ckpt.tokenizer, {"note": "again"})
    assert {p.name for p in ckpt_copy.iterdir()} == {"model.safetensors", "config.json", "tokenizer.json"}
    assert read_checkpoint_info(ckpt_copy)["training"] == {"note": "again"}
    assert hidden_leftovers(ckpt_copy.parent) == []


def test_atomic_dir(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target, "a.txt") as tmp:
        assert tmp.parent == tmp_path and tmp != target and not target.exists()
        (tmp / "a.txt").write_text("one")
    assert snapshot(target) == {"a.txt": b"one"}
    assert (target.stat().st_mode & 0o777) == (0o777 & ~umask())

    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(target, "a.txt") as tmp:
            (tmp / "b.txt").write_text("two")
            raise RuntimeError("boom")
    assert snapshot(target) == {"a.txt": b"one"}
    assert hidden_leftovers(tmp_path) == []

    with atomic_dir(target, "a.txt") as tmp:
        (tmp / "c.txt").write_text("three")
    assert snapshot(target) == {"c.txt": b"three"}
    assert hidden_leftovers(tmp_path) == []


def test_atomic_write_text(tmp_path):
    f = tmp_path / "sub" / "report.json"
    atomic_write_text(f, "first")
    assert f.read_text() == "first"
    assert (f.stat().st_mode & 0o777) == (0o666 & ~umask())
    with pytest.raises(TypeError):
        atomic_write_text(f, None)
    assert f.read_text() == "first"
    assert hidden_leftovers(f.parent) == []
