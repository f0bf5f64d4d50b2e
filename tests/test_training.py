"""Training, checkpoints (safetensors + JSON, never pickle), resume, and atomic saves."""

from __future__ import annotations

import json
import math
import shutil
import threading
from dataclasses import asdict, replace

import pytest
import torch
from safetensors.torch import load_file

from seqserve.checkpoint import load_checkpoint, load_optimizer, read_checkpoint_info
from seqserve.data import SPECIALS, load_corpus
from seqserve.errors import SeqserveError
from seqserve.models import build_model, make_config
from seqserve.training import TrainConfig, evaluate, resume_config, train
from seqserve.training.trainer import TrainingInterrupted, _lanes, _windows

from helpers import hidden_leftovers, umask

CHECKPOINT_FILES = {"model.safetensors", "config.json", "tokenizer.json", "optimizer.safetensors",
                    "trainer_state.json"}
SHORT = dict(preset="tiny", steps=20, eval_every=10, eval_batches=2, batch_size=8, seq_len=32,
             max_corpus_bytes=100_000)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """family -> (TrainConfig, TrainResult) of a 20-step run, trained on first use."""
    root, cache = tmp_path_factory.mktemp("train"), {}

    def get(family: str):
        if family not in cache:
            cfg = TrainConfig(family=family, **SHORT)
            cache[family] = cfg, train(cfg, root / family)
        return cache[family]

    return get


# --- training ----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["lstm", "gpt"])     # the two data paths: BPTT lanes, random windows
def test_validation_loss_goes_down(runs, family):
    cfg, result = runs(family)
    assert result.steps == 20
    assert [h["step"] for h in result.history] == [10, 20]
    assert all("train_bpc" in h and "val_bpc" in h for h in result.history)
    corpus = load_corpus(None, cfg.max_corpus_bytes)
    ckpt = load_checkpoint(result.path)
    val_ids = torch.tensor(ckpt.tokenizer.encode(corpus.val))
    torch.manual_seed(0)
    untrained = build_model(family, make_config(family, "tiny", ckpt.tokenizer.vocab_size))
    before = evaluate(untrained, val_ids, cfg, recurrent=family != "gpt")
    after = evaluate(ckpt.model, val_ids, cfg, recurrent=family != "gpt")
    assert after == pytest.approx(result.val_bpc, rel=1e-4)   # the saved weights are the trained ones
    assert before > 5.5                                       # ~ log2(vocab): knows nothing
    assert after < before - 1.0
    assert result.history[-1]["val_bpc"] < result.history[0]["val_bpc"]


def test_checkpoint_folder_holds_safetensors_and_json_only(runs):
    cfg, result = runs("lstm")
    files = {p.name for p in result.path.iterdir()}
    assert files == CHECKPOINT_FILES
    for name in files:
        head = (result.path / name).read_bytes()[:2]
        assert head != b"\x80\x04" and head != b"PK"           # no pickle, no torch zip archive
    info = json.loads((result.path / "config.json").read_text())
    assert info["format"] == "seqserve-checkpoint/1" and info["family"] == "lstm"
    assert info["model"]["cell"] == "lstm"
    assert info["training"]["config"] == asdict(cfg) and info["training"]["steps"] == 20
    state = json.loads((result.path / "trainer_state.json").read_text())
    assert state["step"] == 20 and [h["step"] for h in state["history"]] == [10, 20]
    tensors = load_file(str(result.path / "model.safetensors"))
    assert "embed.weight" in tensors and "head.weight" in tensors
    assert load_file(str(result.path / "optimizer.safetensors"))      # readable, not empty
    assert json.loads((result.path / "tokenizer.json").read_text())["kind"] == "char"
    assert read_checkpoint_info(result.path) == info
    assert resume_config(result.path) == cfg


def test_checkpoint_folder_is_readable_by_others(runs):
    _, result = runs("lstm")
    assert (result.path.stat().st_mode & 0o777) == (0o777 & ~umask())


@pytest.mark.parametrize("family", ["lstm", "gpt"])
def test_resume_continues_to_cfg_steps_with_the_optimizer_state(runs, family, tmp_path):
    cfg, first = runs(family)

    # The optimizer state on disk is what load_optimizer restores.
    ckpt = load_checkpoint(first.path)
    opt = torch.optim.AdamW(ckpt.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    st = load_optimizer(first.path, opt)
    assert st["step"] == 20
    saved = load_file(str(first.path / "optimizer.safetensors"))
    assert len(opt.state) == len(list(ckpt.model.parameters()))
    for idx, p in enumerate(ckpt.model.parameters()):
        assert float(opt.state[p]["step"]) == 20
        torch.testing.assert_close(opt.state[p]["exp_avg"], saved[f"{idx}.exp_avg"], atol=0, rtol=0)

    seen = []
    result = train(replace(cfg, steps=30), tmp_path / "resumed", resume=first.path,
                   progress=lambda step, total, m: seen.append((step, total)))
    assert result.steps == 30
    assert seen == [(s, 30) for s in range(21, 31)]
    assert [h["step"] for h in result.history] == [10, 20, 30]
    state = json.loads((tmp_path / "resumed" / "trainer_state.json").read_text())
    assert state["step"] == 30
    opt2 = torch.optim.AdamW(load_checkpoint(result.path).model.parameters())
    load_optimizer(result.path, opt2)
    assert {float(s["step"]) for s in opt2.state.values()} == {30.0}   # 20 restored + 10 new


def test_resume_with_no_steps_left_keeps_the_weights(runs, tmp_path):
    cfg, first = runs("lstm")
    result = train(cfg, tmp_path / "again", resume=first.path)
    assert result.steps == 20
    a, b = load_file(str(first.path / "model.safetensors")), load_file(str(result.path / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_errors(runs, tmp_path):
    cfg, first = runs("lstm")
    with pytest.raises(SeqserveError, match="cannot resume a lstm checkpoint as gru"):
        train(replace(cfg, family="gru"), tmp_path / "x", resume=first.path)
    bare = tmp_path / "bare"
    shutil.copytree(first.path, bare)
    (bare / "optimizer.safetensors").unlink()
    with pytest.raises(SeqserveError, match="cannot be resumed"):
        train(cfg, tmp_path / "y", resume=bare)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# --- truncated BPTT data order -------------------------------------------------------------------

def _next_with_timeout(gen, seconds=10.0):
    box = []
    t = threading.Thread(target=lambda: box.append(next(gen)), daemon=True)
    t.start()
    t.join(seconds)
    assert box, "the batch generator did not yield (endless loop?)"
    return box[0]


def test_lanes_are_contiguous_and_reset_only_on_wrap_around():
    B, T, L = 3, 4, 17
    cfg = TrainConfig(batch_size=B, seq_len=T)
    ids = torch.arange(B * L + 2)                       # 2 leftover tokens are dropped
    lanes = torch.arange(B * L).view(B, L)
    gen = _lanes(ids, cfg)
    chunks = [next(gen) for _ in range(9)]
    per_pass = (L - 1) // T                             # chunks of T inputs + 1 target: 4 here
    assert per_pass == 4
    for k, (x, y, reset) in enumerate(chunks):
        pos = (k % per_pass) * T
        assert torch.equal(x, lanes[:, pos: pos + T])
        assert torch.equal(y, x + 1)                    # targets are the next tokens
        assert reset == (k % per_pass == 0)             # the state starts over only when the lanes wrap
        if k % per_pass:                                # each chunk continues the previous one
            assert torch.equal(x[:, 0], chunks[k - 1][0][:, -1] + 1)


def test_lanes_with_room_for_exactly_one_chunk():
    B, T = 2, 8
    cfg = TrainConfig(batch_size=B, seq_len=T)
    gen = _lanes(torch.arange(B * (T + 1)), cfg)        # the smallest corpus train() accepts
    x, y, reset = _next_with_timeout(gen)
    assert x.shape == (B, T) and reset
    x2, _, reset2 = _next_with_timeout(gen)
    assert torch.equal(x, x2) and reset2


def test_lanes_skip_resumes_where_a_run_stopped():
    cfg = TrainConfig(batch_size=2, seq_len=3)
    ids = torch.arange(2 * 13)                          # 4 chunks per pass
    full = _lanes(ids, cfg)
    chunks = [next(full) for _ in range(8)]
    resumed = _lanes(ids, cfg, skip=6)                  # a run that stopped after 6 steps
    for k in range(6, 8):
        x, y, reset = next(resumed)
        assert torch.equal(x, chunks[k][0]) and torch.equal(y, chunks[k][1])
        assert reset == (k == 6)                        # fresh state at the resume point only
    assert torch.equal(next(resumed)[0], chunks[0][0])  # then it wraps around as before


def test_lanes_too_few_tokens_is_an_error():
    with pytest.raises(SeqserveError, match="too few"):
        next(_lanes(torch.arange(10), TrainConfig(batch_size=2, seq_len=8)))


def test_windows_are_reproducible_and_in_range():
    cfg = TrainConfig(batch_size=4, seq_len=8)
    ids = torch.arange(9)                               # exactly one window fits
    x, y, reset = _next_with_timeout(_windows(ids, cfg, seed=0))
    assert torch.equal(x, torch.arange(8).expand(4, 8)) and torch.equal(y, x + 1) and not reset
    ids = torch.arange(1000)
    a, b = _windows(ids, cfg, seed=3), _windows(ids, cfg, seed=3)
    for _ in range(3):
        xa, ya, _ = next(a)
        xb, _, _ = next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, xa + 1)


@torch.no_grad()
def test_evaluate_carries_the_recurrent_state_across_chunks():
    torch.manual_seed(0)
    model = build_model("gru", make_config("gru", "tiny", 20)).eval()
    cfg = TrainConfig(batch_size=2, seq_len=5, eval_batches=3)
    ids = torch.randint(3, 20, (2 * 40,))
    got = evaluate(model, ids, cfg, recurrent=True)
    # The same three chunks read as one unbroken sequence per lane: equal only if state is carried.
    lanes = ids.view(2, 40)
    logits = model(lanes[:, :15])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 20), lanes[:, 1:16].reshape(-1))
    assert got == pytest.approx(loss.item() / torch.log(torch.tensor(2.0)).item(), rel=1e-5)


def test_gpt_seq_len_longer_than_its_positions(tmp_path):
    cfg = TrainConfig(family="gpt", seq_len=300, steps=1, batch_size=2, max_corpus_bytes=50_000)
    with pytest.raises(SeqserveError, match="seq_len 300 is longer than the gpt model's max_seq_len 256"):
        train(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field", ["batch_size", "seq_len", "eval_every", "eval_batches", "steps"])
def test_train_config_rejects_nonsense(field):
    with pytest.raises(SeqserveError, match=f"{field} must be >= "):
        TrainConfig(**{field: -1})


@pytest.mark.parametrize("field, value, match", [
    ("steps", 0, "steps must be >= 1, got 0"),                  # would save an untrained model
    ("lr", 0.0, "lr must be a number > 0, got 0.0"),
    ("lr", -1.0, "lr must be a number > 0, got -1.0"),          # AdamW's ValueError traceback before
    ("lr", float("nan"), "lr must be a number > 0, got nan"),
    ("clip", -1.0, "clip must be a number > 0, got -1.0"),      # silently flipped the gradients before
    ("clip", 0.0, "clip must be a number > 0, got 0.0"),
    ("weight_decay", -0.01, "weight_decay must be a number >= 0, got -0.01"),
    ("minutes", 0.0, "minutes must be a number > 0, got 0.0"),
    ("minutes", -2.0, "minutes must be a number > 0, got -2.0"),
    ("max_corpus_bytes", 0, "max_corpus_bytes must be a number > 0, got 0"),
])
def test_train_config_rejects_bad_numbers(field, value, match):
    with pytest.raises(SeqserveError, match=match):
        TrainConfig(**{field: value})


def test_train_config_accepts_the_edges():
    cfg = TrainConfig(steps=1, weight_decay=0.0, minutes=None, lr=1e-9, clip=1e-9, max_corpus_bytes=1)
    assert cfg.minutes is None and cfg.weight_decay == 0.0


def test_train_config_stores_the_corpus_path_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(corpus="texts/a.txt")
    assert cfg.corpus == str(tmp_path / "texts" / "a.txt")
    assert TrainConfig(**asdict(cfg)) == cfg                     # idempotent (resume_config)
    assert TrainConfig().corpus is None                          # the stdlib


def test_train_refuses_an_out_folder_it_could_not_replace_before_training(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    seen = []
    with pytest.raises(SeqserveError, match="without config.json; refusing to replace it"):
        train(TrainConfig(family="lstm", **SHORT), out, progress=lambda *a: seen.append(a))
    assert seen == [] and (out / "mine.txt").read_text() == "keep me"


# --- Ctrl-C --------------------------------------------------------------------------------------

def _interrupt_at(k: int):
    def progress(step, total, metrics):
        if step == k:
            raise KeyboardInterrupt
    return progress


def test_ctrl_c_saves_a_resumable_checkpoint_at_the_current_step(tmp_path):
    cfg = TrainConfig(family="lstm", **SHORT)
    with pytest.raises(KeyboardInterrupt) as e:                  # still raised: the CLI exits 130
        train(cfg, tmp_path / "ck", progress=_interrupt_at(7))
    assert isinstance(e.value, TrainingInterrupted)
    assert (e.value.path, e.value.step) == (tmp_path / "ck", 7)
    assert {p.name for p in (tmp_path / "ck").iterdir()} == CHECKPOINT_FILES
    assert hidden_leftovers(tmp_path) == []
    state = json.loads((tmp_path / "ck" / "trainer_state.json").read_text())
    assert state["step"] == 7 and state["history"] == []        # eval_every 10: none yet
    info = read_checkpoint_info(tmp_path / "ck")
    assert info["training"]["steps"] == 7 and info["training"]["interrupted"] is True
    assert resume_config(tmp_path / "ck") == cfg

    # The saved weights and optimizer are those after step 7: the same as a 7-step run's.
    ckpt = load_checkpoint(tmp_path / "ck")
    opt = torch.optim.AdamW(ckpt.model.parameters())
    load_optimizer(tmp_path / "ck", opt)
    assert {float(s["step"]) for s in opt.state.values()} == {7.0}
    seven = train(replace(cfg, steps=7), tmp_path / "seven")
    a, b = load_file(str(tmp_path / "ck" / "model.safetensors")), load_file(str(seven.path / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # ... and the run goes on from there.
    seen = []
    result = train(cfg, tmp_path / "resumed", resume=tmp_path / "ck",
                   progress=lambda step, total, m: seen.append(step))
    assert seen == list(range(8, 21)) and result.steps == 20
    assert [h["step"] for h in result.history] == [10, 20]


def test_ctrl_c_while_resuming_saves_at_the_current_step(runs, tmp_path):
    cfg, first = runs("gpt")                                     # at step 20
    with pytest.raises(TrainingInterrupted) as e:
        train(replace(cfg, steps=40), tmp_path / "ck", resume=first.path, progress=_interrupt_at(23))
    assert e.value.step == 23
    assert json.loads((tmp_path / "ck" / "trainer_state.json").read_text())["step"] == 23
    result = train(replace(cfg, steps=25), tmp_path / "more", resume=tmp_path / "ck")
    assert result.steps == 25 and [h["step"] for h in result.history] == [10, 20, 25]


def test_resume_applies_a_new_learning_rate(runs, tmp_path):
    cfg, first = runs("lstm")
    saved = json.loads((first.path / "trainer_state.json").read_text())["optimizer"]["param_groups"]
    assert {g["lr"] for g in saved} == {cfg.lr}
    result = train(replace(cfg, steps=22, lr=1e-4, weight_decay=0.0), tmp_path / "r", resume=first.path)
    groups = json.loads((result.path / "trainer_state.json").read_text())["optimizer"]["param_groups"]
    assert {g["lr"] for g in groups} == {1e-4} and {g["weight_decay"] for g in groups} == {0.0}
    assert resume_config(result.path).lr == 1e-4


# --- the less-used paths, end to end: train, export, validate ------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("family, options", [
    ("gru", dict(tokenizer="byte")),
    ("gpt", dict(model_overrides={"positional": "sinusoidal"})),
    ("rnn", dict(model_overrides={"nonlinearity": "relu"})),
])
def test_variants_train_export_and_pass_validation(family, options, tmp_path):
    from seqserve.export import export_checkpoint
    from seqserve.validate import validate_export

    cfg = TrainConfig(family=family, **{**SHORT, "steps": 6, "eval_every": 3, "max_corpus_bytes": 300_000}, **options)
    result = train(cfg, tmp_path / "ck")
    assert result.steps == 6 and [h["step"] for h in result.history] == [3, 6]
    assert all(math.isfinite(h["val_bpc"]) for h in result.history)
    ckpt = load_checkpoint(result.path)
    if cfg.tokenizer == "byte":
        assert ckpt.tokenizer.kind == "byte" and ckpt.tokenizer.vocab_size == len(SPECIALS) + 256
    for key, value in cfg.model_overrides.items():
        assert getattr(ckpt.model.config, key) == value
    info = export_checkpoint(result.path, tmp_path / "onnx")
    report = validate_export(info.path)
    assert report.passed, [c for c in report.checks if not c.passed]


def test_corpus_too_small_for_the_batch(tmp_path):
    f = tmp_path / "small.txt"
    f.write_text("abcdefghij" * 30)
    with pytest.raises(SeqserveError, match="corpus too small"):
        train(TrainConfig(family="rnn", corpus=str(f), batch_size=32, seq_len=64, steps=1), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_learning_rate_defaults_per_family():
    from seqserve.models import FAMILIES

    assert TrainConfig(family="gpt").lr == FAMILIES["gpt"].default_lr == 5e-4
    assert TrainConfig(family="lstm").lr == FAMILIES["lstm"].default_lr == 3e-3
    assert TrainConfig(family="gpt", lr=1e-2).lr == 1e-2
    assert TrainConfig(**asdict(TrainConfig(family="gpt"))).lr == 5e-4     # what resume_config rebuilds
