"""`seqserve validate --repository`: a whole repository, every target; broken pieces become failed rows."""

from __future__ import annotations

import shutil

import pytest
from helpers import run

from seqserve.package import PackageOptions, package_export
from seqserve.validate.repository import validate_repository


@pytest.fixture(scope="module")
def repos(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("val-repos")
    out = {}
    for target in ("seqserve", "triton-gpu", "triton-python"):
        for family in ("lstm", "gpt"):
            package_export(exported(family), root / target, options=PackageOptions(target=target))
        out[target] = root / target
    return out


@pytest.mark.parametrize("target", ["seqserve", "triton-gpu", "triton-python"])
def test_packaged_repositories_pass(repos, target):
    report = validate_repository(repos[target])
    assert report.passed, [r for r in report.checks if not r.passed]
    # 6 models: a config row each, then a version and a runs row per version
    assert [len(report.rows(c)) for c in ("config", "version", "runs")] == [6, 6, 6]
    res = run("validate", "--repository", repos[target], "--summary")
    assert res.exit_code == 0 and "PASSED" in res.output, res.output


def test_broken_pieces_fail_with_what_is_wrong(repos, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(repos["triton-python"], repo)
    onnx = repo / "lstm" / "1" / "model.onnx"
    data = onnx.read_bytes()
    onnx.unlink()                                               # never write through a hard link
    onnx.write_bytes(data[: len(data) // 3])                    # truncated graph
    (repo / "gpt_step" / "1" / "model.py").unlink()              # python backend without model.py
    cfg = repo / "gpt" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('name: "logits"', 'name: "scores"'))   # disagrees with ONNX
    (repo / "stray").mkdir()                                    # a folder that is no model
    report = validate_repository(repo)
    assert not report.passed
    failed = {(r.check, r.graph): r.detail for r in report.checks if not r.passed}
    assert "ONNX Runtime cannot" in failed[("runs", "lstm/1")]
    assert "model.py" in failed[("version", "gpt_step/1")]
    assert "scores" in failed[("version", "gpt/1")]
    assert "no config.pbtxt" in failed[("config", "stray")]
    assert not any(k[1].startswith(("lstm_step", "gpt_generate")) for k in failed)   # the rest pass
    res = run("validate", "--repository", repo, "--summary")
    assert res.exit_code == 1 and "FAILED" in res.output and "Traceback" not in res.output


def test_bad_arguments(tmp_path, repos):
    res = run("validate")
    assert res.exit_code == 2 and "one of the two" in res.output
    res = run("validate", "--repository", tmp_path / "nope")
    assert res.exit_code == 2 and "is not a folder" in res.output
    (tmp_path / "empty").mkdir()
    assert not validate_repository(tmp_path / "empty").passed
