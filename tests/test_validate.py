"""The validation gate: every family passes; each kind of broken export fails the right check."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from rich.console import Console
from safetensors.torch import load_file, save_file

from seqserve.errors import SeqserveError
from seqserve.validate import (CHECKS, CheckResult, ValidateConfig, ValidationReport, render_report,
                               validate_export)
from seqserve.validate.compare import compare
from conftest import ALL_FAMILIES

# causal-lm families: this module's expectations (grid sizes, state cases, 3 schedules) are that
# task's; every other task's gate is tested in its own module (test_registry.TASK_TEST_MODULES).
ALL = ALL_FAMILIES


def copy_of(exported, family, tmp_path):
    """A private copy of the shared export: negative tests must never touch the fixture."""
    return shutil.copytree(exported(family), tmp_path / family)


def failed(report, check):
    return [r for r in report.rows(check) if not r.passed]


# --- a good export passes every check -----------------------------------------------------------

@pytest.mark.parametrize("family", ALL)
def test_every_family_passes(exported, family):
    messages = []
    report = validate_export(exported(family), progress=messages.append)
    bad = [(r.check, r.graph, r.case, r.detail) for r in report.checks if not r.passed]
    assert report.passed, bad
    assert report.family == family
    assert [c for c in CHECKS if report.rows(c)] == list(CHECKS)
    assert len(messages) == len(CHECKS)

    cfg = ValidateConfig()
    # The shape grid ran in full: every (batch, sequence, past/state) case, every output.
    full_cases = [r.case for r in report.rows("torch_vs_ort") if r.graph == "full"]
    assert len(full_cases) == len(cfg.batches) * len(cfg.sequences)
    step_cases = [r.case for r in report.rows("torch_vs_ort") if r.graph == "step"]
    third = ("past=0", "past=4") if family == "gpt" else ("state=zero", "state=random")
    assert all(any(t in c for c in step_cases) for t in third)
    assert any("batch=3 sequence=5" in c and "output=logits" in c for c in step_cases)
    assert all(r.max_abs is not None and r.max_abs < cfg.atol for r in report.rows("torch_vs_ort"))
    assert len(report.rows("incremental_vs_full")) == 3
    rows = report.rows("greedy_generation")
    assert len(rows) == 6                                   # greedy, sampled and 4 beams, two prompts each
    assert {r.case.split()[0] for r in rows} == {"greedy", "sampled", "beams=4"}
    d = report.to_json()
    assert d["passed"] is True and set(d["summary"]) == set(CHECKS)


def test_not_an_export_raises(tmp_path):
    with pytest.raises(SeqserveError, match="seqserve.json"):
        validate_export(tmp_path)


# --- broken exports fail the gate ---------------------------------------------------------------

@pytest.mark.parametrize("family", ALL)
def test_perturbed_torch_weights_fail_torch_vs_ort(exported, family, tmp_path):
    path = copy_of(exported, family, tmp_path)
    weights = path / "checkpoint" / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    # Tied weights are stored once, so perturbing every stored tensor perturbs each parameter once.
    save_file({k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in load_file(weights).items()},
              str(weights))
    report = validate_export(path)
    assert not report.passed
    rows = report.rows("torch_vs_ort")
    assert rows and all(not r.passed for r in rows)
    assert max(r.max_abs for r in rows) > 0.1
    assert "outside tolerance" in rows[0].detail
    # The ONNX side is untouched: its own checks still pass.
    for check in ("onnx_checker", "dynamic_axes", "incremental_vs_full"):
        assert not failed(report, check), check


def test_greedy_generation_reports_first_difference(exported, tmp_path):
    path = copy_of(exported, "lstm", tmp_path)
    weights = path / "checkpoint" / "model.safetensors"
    tensors = load_file(weights)
    tensors["head.bias"][5] += 1e3    # torch now always picks token 5; ORT does not know
    save_file(tensors, str(weights))
    report = validate_export(path)
    rows = report.rows("greedy_generation")
    assert len(rows) == 6 and all(not r.passed for r in rows)     # greedy, sampled, beams; 2 prompts
    assert all("first difference at generated token 0: torch [5]" in r.detail for r in rows)


@pytest.mark.parametrize("damage", ["truncate", "not_onnx"])
def test_corrupt_full_graph_fails_onnx_checker_without_crashing(exported, tmp_path, damage):
    path = copy_of(exported, "gru", tmp_path)
    f = path / "full.onnx"
    if damage == "truncate":
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    else:
        f.write_text("this is not an ONNX model\n")
    report = validate_export(path)
    assert not report.passed
    (full,) = [r for r in report.rows("onnx_checker") if r.graph == "full"]
    assert not full.passed and "full.onnx is not a valid ONNX model" in full.detail
    assert "Traceback" not in full.detail
    # Rows that need the broken graph fail with the reason; the step graph is still judged.
    for r in report.rows("torch_vs_ort") + report.rows("dynamic_axes"):
        assert r.passed == (r.graph == "step"), (r.case, r.detail)
        if r.graph == "full":
            assert r.detail == "skipped: full.onnx failed onnx_checker"
    assert all(not r.passed and "full.onnx failed" in r.detail for r in report.rows("incremental_vs_full"))
    assert not failed(report, "greedy_generation")       # needs only the step graph


@pytest.mark.parametrize("family", ALL)
def test_fixed_dynamic_axis_fails_dynamic_axes(exported, family, tmp_path):
    path = copy_of(exported, family, tmp_path)
    model = onnx.load(str(path / "step.onnx"))
    (ids,) = [i for i in model.graph.input if i.name == "input_ids"]
    ids.type.tensor_type.shape.dim[1].dim_value = 1     # sequence axis: clears dim_param
    onnx.save(model, str(path / "step.onnx"))
    report = validate_export(path)
    assert not report.passed
    (step,) = [r for r in report.rows("dynamic_axes") if r.graph == "step"]
    assert not step.passed and "input_ids axis 1 (sequence) is fixed to 1" in step.detail
    assert len(failed(report, "dynamic_axes")) == 1     # the full graph is untouched
    # ORT now refuses sequence=5 on the step graph: those rows fail too, with ORT's reason.
    assert any(not r.passed and "sequence=5" in r.case for r in report.rows("torch_vs_ort"))


@pytest.mark.parametrize("family", ALL)
def test_step_graph_differing_from_full_fails_incremental(exported, family, tmp_path):
    path = copy_of(exported, family, tmp_path)
    model = onnx.load(str(path / "step.onnx"))
    init = next(i for i in model.graph.initializer
                if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) > 1)
    w = numpy_helper.to_array(init)
    noisy = w + 0.5 * np.random.default_rng(0).standard_normal(w.shape).astype(w.dtype)
    init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    onnx.save(model, str(path / "step.onnx"))
    report = validate_export(path)
    assert not report.passed
    rows = report.rows("incremental_vs_full")
    assert rows and all(not r.passed and "first mismatch at position" in r.detail for r in rows)
    assert all(r.max_abs > 0.01 for r in rows)
    vs = report.rows("torch_vs_ort")
    assert all(r.passed for r in vs if r.graph == "full")
    assert any(not r.passed for r in vs if r.graph == "step")


# --- report and comparison ----------------------------------------------------------------------

def test_report_json_and_verdict():
    ok = CheckResult("torch_vs_ort", "full", "batch=1 sequence=1 output=logits", True, 1e-7, 1e-6, 1e-4, 1e-3)
    bad = CheckResult("torch_vs_ort", "step", "batch=3 sequence=5 output=logits", False, float("nan"),
                      float("inf"), 1e-4, 1e-3, "non-finite values [/bold] [ONNXRuntimeError]")
    good = ValidationReport("exp", "lstm", [ok])
    assert good.passed
    assert not ValidationReport("exp", "lstm", []).passed          # nothing checked: closed gate
    report = ValidationReport("exp", "lstm", [ok, bad])
    assert not report.passed
    d = report.to_json()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["passed"] is False and d["checks"][1]["max_abs"] is None
    assert d["summary"]["torch_vs_ort"] == {"passed": False, "rows": 2, "failed": 1, "max_abs": None,
                                            "max_rel": None}
    assert ValidationReport("exp", "lstm", [ok, ok]).to_json()["summary"]["torch_vs_ort"]["max_abs"] == 1e-7

    out = io.StringIO()
    render_report(report, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "torch_vs_ort" in text and "✓" in text and "✗" in text
    assert "non-finite values [/bold] [ONNXRuntimeError]" in text             # shown, not parsed as markup
    assert "FAILED" in text.splitlines()[-1]
    out = io.StringIO()
    render_report(good, Console(file=out, width=200, color_system=None))
    assert "PASSED" in out.getvalue().splitlines()[-1]
    # A passing report shows only the summary; --verbose adds every row's table.
    assert "(" + "1/1 passed)" not in out.getvalue()
    out = io.StringIO()
    render_report(good, Console(file=out, width=200, color_system=None), verbose=True)
    assert " passed)" in out.getvalue()


def test_real_report_round_trips_json(exported):
    report = validate_export(exported("gpt"), ValidateConfig(batches=(2,), sequences=(3,), pasts=(1,),
                                                             generate_tokens=4))
    d = report.to_json()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["passed"] and len(d["checks"]) == len(report.checks)
    assert any("batch=2 sequence=3 past=1" in r["case"] for r in d["checks"])
    assert all("tokens=4" in r.case for r in report.rows("greedy_generation"))


def test_compare():
    b = np.array([[1.0, -2.0, 0.0]], np.float32)
    r = compare(b + np.float32(1e-3), b, atol=1e-4, rtol=1e-3)
    assert not r.passed and r.max_abs == pytest.approx(1e-3, rel=1e-3)      # |0| reference: atol only
    assert r.max_rel == pytest.approx(1e-3, rel=1e-3)                       # over non-zero references
    assert compare(b + np.float32(1e-3), b, atol=r.max_abs, rtol=0).passed  # the tolerance it needed
    assert not compare(b[:, :2], b, 1, 1).passed
    nan = b.copy()
    nan[0, 1] = np.nan
    r = compare(nan, b, 1, 1)
    assert not r.passed and "non-finite" in r.detail
