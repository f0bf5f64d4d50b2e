"""The command line, driven with Typer's CliRunner: the documented forms and the bad inputs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import COMMANDS
from conftest import ALL_FAMILIES

from helpers import assert_one_line_error, run

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command():
    res = run("--help")
    assert res.exit_code == 0
    for name in COMMANDS:
        assert name in res.output


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_help(name):
    res = run(name, "--help")
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_help_does_not_import_torch():
    # `seqserve --help` must be instant: no torch/onnx import at CLI import time.
    code = "import sys, cli.main; print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv .*?)\n```", readme)
    assert len(commands) >= 2, "README must start with the two set-up commands"
    assert "seqserve quickstart" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("family", ALL_FAMILIES)   # causal-lm; other tasks' CLI chains: their test modules
def test_train_export_validate_generate(family, tmp_path):
    ckpt, exp, report = tmp_path / "ckpt", tmp_path / "onnx", tmp_path / "report.json"
    res = run("train", "--family", family, "--preset", "tiny", "--steps", "30", "--batch-size", "8",
              "--seq-len", "32", "--eval-every", "10", "--max-corpus-mb", "0.3", "--out", ckpt)
    assert res.exit_code == 0, res.output
    assert "validation" in res.output and (ckpt / "model.safetensors").is_file()
    res = run("export", ckpt, "--out", exp)
    assert res.exit_code == 0, res.output
    res = run("validate", exp, "--json", report)
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["family"] == family
    texts = {}
    for backend in ("ort", "torch"):
        res = run("generate", exp, "--prompt", "def ", "--greedy", "--max-tokens", "24", "--backend", backend)
        assert res.exit_code == 0, res.output
        texts[backend] = res.output
    assert texts["ort"] == texts["torch"]
    assert texts["ort"].startswith("def ")


def test_generate_batched_prompts(exported):
    res = run("generate", exported("lstm"), "--prompt", "def ", "--prompt", "import", "--max-tokens", "8",
              "--seed", "3")
    assert res.exit_code == 0, res.output
    assert res.output.count("length") == 2          # both rows ran to max_tokens


def test_resume_continues(checkpoint, tmp_path):
    out = tmp_path / "resumed"
    res = run("train", "--resume", checkpoint("rnn"), "--steps", "35", "--out", out)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 35


# --- bad input: one line naming what was wrong and what was expected, exit 2, nothing overwritten ---

def test_unknown_family(tmp_path):
    assert_one_line_error(run("train", "--family", "lstmx", "--out", tmp_path / "x"), "lstmx", "rnn, lstm, gru, gpt")
    assert not (tmp_path / "x").exists()


def test_unknown_preset(tmp_path):
    assert_one_line_error(run("train", "--family", "gru", "--preset", "huge", "--out", tmp_path / "x"), "huge", "tiny")
    assert not (tmp_path / "x").exists()


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(run("export", tmp_path / "nope", "--out", tmp_path / "e"), "nope", "seqserve train")


def test_corrupt_checkpoint_keeps_previous_export(checkpoint, exported, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoint("gru"), bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    target = tmp_path / "export"
    shutil.copytree(exported("gru"), target)
    before = _snapshot(target)
    assert_one_line_error(run("export", bad, "--out", target), "model.safetensors")
    assert _snapshot(target) == before and "checkpoint/model.safetensors" in before


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_export_never_replaces_what_is_not_an_export(checkpoint, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert_one_line_error(run("export", checkpoint("rnn"), "--out", precious), "refusing to replace")
    assert (precious / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me too")
    assert_one_line_error(run("export", checkpoint("rnn"), "--out", a_file), "is a file")
    assert a_file.read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "precious"]   # no leftovers


def test_export_into_the_checkpoint_is_refused(checkpoint, tmp_path):
    ckpt = shutil.copytree(checkpoint("rnn"), tmp_path / "ckpt")
    before = _snapshot(ckpt)
    for out in (ckpt, ckpt / "onnx"):
        assert_one_line_error(run("export", ckpt, "--out", out), "checkpoint folder")
    assert _snapshot(ckpt) == before


def test_export_copies_weights_but_not_optimizer_state(exported):
    assert sorted(p.name for p in (exported("gru") / "checkpoint").iterdir()) == \
        ["config.json", "model.safetensors", "tokenizer.json"]


def test_unwritable_and_markup_paths_are_one_line_errors(exported, tmp_path):
    assert_one_line_error(run("validate", exported("rnn"), "--json", tmp_path), str(tmp_path))
    odd = tmp_path / "a[/]b [bold]x[/bold]"
    assert_one_line_error(run("export", odd, "--out", tmp_path / "e"), "a[/]b [bold]x[/bold]")


def test_wrongly_typed_json_fields(checkpoint, exported, tmp_path):
    bad = shutil.copytree(checkpoint("lstm"), tmp_path / "ck")
    (bad / "tokenizer.json").write_text("[1, 2]")
    assert_one_line_error(run("export", bad, "--out", tmp_path / "e1"), "tokenizer")
    bad = shutil.copytree(checkpoint("lstm"), tmp_path / "ck2")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"] = [1]
    (bad / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run("export", bad, "--out", tmp_path / "e2"), "bad config")
    exp = shutil.copytree(exported("lstm"), tmp_path / "ex")
    side = json.loads((exp / "seqserve.json").read_text())
    side["tokenizer"] = "char"
    (exp / "seqserve.json").write_text(json.dumps(side))
    assert_one_line_error(run("generate", exp, "--prompt", "def "), "seqserve.json")


def test_sidecar_that_disagrees_with_its_graph(exported, tmp_path):
    exp = shutil.copytree(exported("gru"), tmp_path / "ex")
    side = json.loads((exp / "seqserve.json").read_text())
    side["graphs"]["step"] = "full.onnx"
    (exp / "seqserve.json").write_text(json.dumps(side))
    assert_one_line_error(run("generate", exp, "--prompt", "def "), "does not match the step graph")


def test_sidecar_tokenizer_drift_fails_the_gate(exported, tmp_path):
    exp = shutil.copytree(exported("lstm"), tmp_path / "ex")
    side = json.loads((exp / "seqserve.json").read_text())
    side["tokenizer"]["chars"] = side["tokenizer"]["chars"][:-5]
    (exp / "seqserve.json").write_text(json.dumps(side))
    res = run("validate", exp, "--summary", "--json", tmp_path / "r.json")
    assert res.exit_code == 1, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is False and report["summary"]["sidecar"]["passed"] is False
    assert report["summary"]["torch_vs_ort"]["passed"] is True     # the graphs themselves are fine


def test_generate_status_goes_to_stderr_and_tiny_temperature_is_greedy(exported):
    greedy = run("generate", exported("gru"), "--prompt", "def ", "--greedy", "--max-tokens", "12")
    tiny = run("generate", exported("gru"), "--prompt", "def ", "--temperature", "1e-320", "--max-tokens", "12")
    assert greedy.exit_code == tiny.exit_code == 0, tiny.output
    assert "(length)" in greedy.stderr and "(length)" not in greedy.stdout
    assert tiny.stdout == greedy.stdout
    assert_one_line_error(run("generate", exported("gru"), "--prompt", "def ", "--temperature", "nan"), "temperature")
    assert_one_line_error(run("generate", exported("gru"), "--prompt", "def ", "--threads", "-1"), "thread")
    assert_one_line_error(run("validate", exported("gru"), "--tokens", "0"), "tokens")


def test_corrupt_config_json(checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoint("rnn"), bad)
    (bad / "config.json").write_text("{not json")
    assert_one_line_error(run("export", bad, "--out", tmp_path / "e"), "config.json", "JSON")


def test_missing_sidecar(exported, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(exported("rnn"), bad)
    (bad / "seqserve.json").unlink()
    assert_one_line_error(run("generate", bad, "--prompt", "a"), "seqserve.json")
    assert_one_line_error(run("validate", bad), "seqserve.json")


def test_non_onnx_graph(exported, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(exported("lstm"), bad)
    (bad / "step.onnx").write_bytes(b"this is not an onnx file")
    assert_one_line_error(run("generate", bad, "--prompt", "def "), "step.onnx")
    res = run("validate", bad)
    assert res.exit_code == 1 and "Traceback" not in res.output


def test_prompt_outside_vocabulary(exported):
    assert_one_line_error(run("generate", exported("lstm"), "--prompt", "def \u2603"), "vocabulary", "'\u2603'")


def test_bad_sampling_values(exported):
    assert_one_line_error(run("generate", exported("lstm"), "--prompt", "def ", "--top-p", "1.5"), "top_p")


def test_cuda_without_gpu_is_explained(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() and shutil.which("nvidia-smi"):
        pytest.skip("a GPU is present")
    assert_one_line_error(run("generate", exported("lstm"), "--prompt", "def ", "--device", "cuda"), "CUDA")


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path):
    out = tmp_path / "qs"
    repo = tmp_path / "repo"
    res = run("quickstart", "--out", out, "--families", "rnn,gpt", "--preset", "tiny", "--minutes", "0.02",
              "--max-tokens", "12", "--repository", repo, "--http-port", "0", "--grpc-port", "0",
              "--metrics-port", "0", "--serve-seconds", "0.1")
    assert res.exit_code == 0, res.output
    assert res.output.count("PASSED") == 2 and "ONNX Runtime sample" in res.output
    for fam in ("rnn", "gpt"):
        assert (out / fam / "model.safetensors").is_file() and (out / f"{fam}-onnx" / "step.onnx").is_file()
        for model in (fam, f"{fam}_step", f"{fam}_generate"):
            assert (repo / model / "config.pbtxt").is_file() and (repo / model / "1" / "model.onnx").is_file()
    # the serving half ran against the real server: streamed text, the stateful sequence, the hints
    assert res.output.count("streamed generation over HTTP") == 2
    assert res.output.count("the server held the state between requests") == 2
    diffs = [float(x) for x in re.findall(r"max \|diff\| = ([0-9.e+-]+)", res.output)]
    assert len(diffs) == 2 and max(diffs) < 1e-4
    assert "SEQSERVE_READY" in res.output and "server stopped" in res.output


def test_quickstart_without_serving_packages_and_stops(tmp_path):
    res = run("quickstart", "--out", tmp_path / "qs", "--families", "lstm", "--preset", "tiny", "--minutes", "0.01",
              "--max-tokens", "4", "--repository", tmp_path / "repo", "--no-serve")
    assert res.exit_code == 0, res.output
    assert "seqserve serve --repository" in res.output and "SEQSERVE_READY" not in res.output
    assert (tmp_path / "repo" / "lstm_generate" / "1" / "seqserve.json").is_file()
