"""Crash-safe writes (issue 10, F6-F8): the real CLI is SIGKILLed right after each rename/link.

For every N the write performs (measured on an unkilled run first), `tests/fault_inject.py` runs
`seqserve export` / `seqserve package` and kills it right after its N-th os.replace / os.rename /
os.link / seqserve.io.exchange. Then the result must validate, serve one consistent version of
every model of a package, and the next run must recover (finish or roll back) and leave no hidden
leftovers (`.NAME.tmp-*`, `.NAME.old-*`, `.N.tmp-*`).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import hidden_leftovers, run

ROOT = Path(__file__).resolve().parents[1]
FAULT = Path(__file__).parent / "fault_inject.py"
GROUP = ["lstm", "lstm_step", "lstm_generate"]


def killed_cli(kill_after: int, log: Path, *args, flags: tuple = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(FAULT), str(kill_after), str(log), *flags, "--", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


def steps_of(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def measure(tmp: Path, *args, flags: tuple = ()) -> list[str]:
    """The renames/links of an unkilled run (which must succeed)."""
    log = tmp / "measure.log"
    res = killed_cli(0, log, *args, flags=flags)
    assert res.returncode == 0, res.stdout + res.stderr
    return steps_of(log)


def kill_at(k: int, tmp: Path, *args, flags: tuple = ()) -> None:
    log = tmp / f"kill{k}.log"
    res = killed_cli(k, log, *args, flags=flags)
    assert res.returncode == -signal.SIGKILL, (k, res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert len(steps_of(log)) == k


def hidden_anywhere(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


def package_id(folder: Path) -> str | None:
    return (json.loads((folder / "seqserve.json").read_text()).get("package") or {}).get("id")


# ---- export (F6) --------------------------------------------------------------------------------

def _earlier_kills(parent: Path, name: str) -> None:
    """Leftovers of earlier killed exports: a staged folder and a moved-aside old one."""
    (parent / f".{name}.tmp-0badc0de").mkdir()
    (parent / f".{name}.tmp-0badc0de" / "full.onnx").write_bytes(b"x" * 1000)
    (parent / f".{name}.old-0badc0de" / "x").mkdir(parents=True)


EXPORT_FLAGS = {"exchange": (), "two-renames": ("--no-exchange",),
                "with-removals": pytest.param(("--removals",), marks=pytest.mark.slow)}


@pytest.mark.parametrize("flags", list(EXPORT_FLAGS.values()), ids=list(EXPORT_FLAGS))
def test_export_killed_after_every_rename_leaves_a_valid_export(checkpoint, exported, tmp_path, flags):
    ckpt, base = checkpoint("lstm"), exported("lstm")
    probe = tmp_path / "probe"
    shutil.copytree(base, probe / "exp")
    _earlier_kills(probe, "exp")
    steps = measure(probe, "export", ckpt, "--out", probe / "exp", flags=flags)
    ops = [line.split() for line in steps]
    # the step that puts the new export in place, and (two renames) the one that moves the old aside
    swap = 1 + next(i for i, op in enumerate(ops) if op[1] in ("exchange", "replace") and op[-1].endswith("/exp"))
    aside = 1 + next((i for i, op in enumerate(ops) if op[1] == "replace" and op[2].endswith("/exp")), swap - 1)
    if "--removals" not in flags:
        # the staged sidecar, then one exchange (or: move aside + rename in)
        assert len(steps) == (3 if "--no-exchange" in flags else 2), steps
    for k in range(1, len(steps) + 1):
        parent = tmp_path / f"k{k}"
        out = parent / "exp"
        shutil.copytree(base, out)
        _earlier_kills(parent, "exp")
        old_inode = (out / "seqserve.json").stat().st_ino
        kill_at(k, parent, "export", ckpt, "--out", out, flags=flags)
        if aside <= k < swap:                        # between the fallback's two renames
            assert not out.exists()                  # only where the filesystem cannot exchange...
        else:
            res = run("validate", out, "--summary")
            assert res.exit_code == 0 and "PASSED" in res.output, (k, steps[k - 1], res.output)
            new = (out / "seqserve.json").stat().st_ino != old_inode
            assert new == (k >= swap), k             # the old export until the swap, then the new
        res = run("export", ckpt, "--out", out)      # ...and the next run puts the old one back first
        assert res.exit_code == 0, (k, res.output)
        assert hidden_leftovers(parent) == []
        assert hidden_anywhere(out) == []
    res = run("validate", out, "--summary")
    assert res.exit_code == 0, res.output


def test_export_cleans_leftovers_of_earlier_kills(checkpoint, tmp_path):
    """F6: hidden `.NAME.tmp-*` folders from killed runs were never cleaned up; the next export
    removes them (and a missing target whose old copy was moved aside is restored)."""
    from seqserve.io import atomic_dir

    target = tmp_path / "out"
    (tmp_path / ".out.old-00000001" / "x").mkdir(parents=True)
    (tmp_path / ".out.old-00000001" / "x" / "seqserve.json").write_text("old")
    (tmp_path / ".out.tmp-00000002").mkdir()
    (tmp_path / ".out.tmp-00000002" / "seqserve.json").write_text("half new")
    (tmp_path / ".out.tmp-00000003").write_text("a file")
    (tmp_path / ".other.tmp-00000004").mkdir()            # another target's: not ours to touch
    with pytest.raises(RuntimeError):
        with atomic_dir(target, "seqserve.json"):
            assert (target / "seqserve.json").read_text() == "old"    # restored before the write
            raise RuntimeError("stop")
    assert (target / "seqserve.json").read_text() == "old"
    assert hidden_leftovers(tmp_path) == [".other.tmp-00000004"]


def test_a_live_writers_staging_folder_is_not_taken_for_a_leftover(tmp_path):
    from seqserve.io import atomic_dir

    target = tmp_path / "out"
    with atomic_dir(target, "m") as outer:
        (outer / "m").write_text("outer")
        with atomic_dir(target, "m") as inner:              # another writer of the same target
            assert outer.exists()                         # its cleanup left the live one alone
            (inner / "m").write_text("inner")
    assert (target / "m").read_text() == "outer" and hidden_leftovers(tmp_path) == []


def test_another_processes_staging_folder_is_not_taken_for_a_leftover(tmp_path):
    """The same across processes: a live writer's staging folder holds an flock; the cleanup of
    killed runs' leftovers skips it (a killed writer's lock died with it)."""
    from seqserve.io import atomic_dir

    target = tmp_path / "out"
    code = ("import sys; from pathlib import Path; from seqserve.io import atomic_dir\n"
            f"with atomic_dir(Path({str(target)!r}), 'm') as t:\n"
            "    (t / 'm').write_text('other'); print(t, flush=True); sys.stdin.read()\n")
    other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=ROOT)
    try:
        staging = Path(other.stdout.readline().strip())
        assert staging.is_dir()
        with atomic_dir(target, "m") as mine:
            (mine / "m").write_text("mine")
        assert staging.is_dir() and (target / "m").read_text() == "mine"
    finally:
        other.communicate("", timeout=60)
    assert other.returncode == 0 and (target / "m").read_text() == "other"
    assert hidden_leftovers(tmp_path) == []


# ---- package (F7, F8) ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_repo(exported, tmp_path_factory):
    """A repository with version 1 of lstm, lstm_step, lstm_generate (and another model, gru)."""
    from seqserve.package import package_export

    repo = tmp_path_factory.mktemp("crash-base") / "repo"
    package_export(exported("lstm"), repo)
    package_export(exported("gru"), repo)
    return repo


def served(repo: Path) -> dict[str, tuple[str, list[str], str | None]]:
    """What `seqserve serve` loads from `repo`: {model: (state, ready versions, package id of the
    newest)}."""
    from seqserve.runtime import RuntimeOptions
    from seqserve.serve.repository import ModelRepository

    r = ModelRepository(repo, RuntimeOptions(intra_op_threads=1))
    try:
        for name in r.names_on_disk():
            r.load_sync(name)
        out = {}
        for name, e in r.models.items():
            newest = e.versions[max(e.versions, key=int)] if e.versions else None
            pid = (newest.info.raw.get("package") or {}).get("id") if newest is not None else None
            out[name] = (e.state, r.versions(name), pid)
        return out
    finally:
        r.close()


def assert_one_consistent_version(repo: Path, group: list[str], may_be_absent: bool = False) -> int:
    """Every model of the group serves the same version of the same package (0: none serves)."""
    s = served(repo)
    assert s.get("gru", ("?",))[0] == "READY", s                      # the bystander always serves
    states = {m: s.get(m, ("ABSENT", [], None)) for m in group}
    if may_be_absent and not any(st == "READY" for st, _, _ in states.values()):
        return 0
    assert all(st == "READY" for st, _, _ in states.values()), states
    versions = {tuple(v) for _, v, _ in states.values()}
    assert len(versions) == 1, states                                 # no mix of versions
    assert len({pid for _, _, pid in states.values()}) == 1, states   # ...nor of packages
    return int(versions.pop()[-1])


def assert_recovered(repo: Path, group: list[str], versions: list[int]) -> None:
    """Only numeric version folders, all complete, the same ones and the same package per model."""
    from seqserve.package import list_versions

    assert hidden_anywhere(repo) == []
    for m in group:
        assert list_versions(repo / m) == versions, m
        assert sorted(int(p.name) for p in (repo / m).iterdir() if p.is_dir()) == versions
    for v in versions:
        assert len({package_id(repo / m / str(v)) for m in group}) == 1


SCENARIOS = {
    # name: (extra package arguments, repository before, versions expected after a rerun by how
    #        many the killed run had committed)
    "new-version": ([], "v1", lambda served_v: [1, 2] if served_v == 1 else [1, 2, 3]),
    "in-place": (["--version", "1"], "v1", lambda served_v: [1]),
    "first": ([], "empty", lambda served_v: [1] if served_v == 0 else [1, 2]),
}


def _sweep(scenario: str, base_repo: Path, exported, tmp_path: Path, flags: tuple = ()) -> int:
    extra, before, expected = SCENARIOS[scenario]
    export = exported("lstm")

    def fresh(where: Path) -> Path:
        repo = where / "repo"
        shutil.copytree(base_repo, repo)
        if before == "empty":
            for m in GROUP:
                shutil.rmtree(repo / m)
        return repo

    probe = tmp_path / "probe"
    steps = measure(probe, "package", export, "--repository", fresh(probe), *extra, flags=flags)
    for k in range(1, len(steps) + 1):
        where = tmp_path / f"k{k}"
        repo = fresh(where)
        kill_at(k, where, "package", export, "--repository", repo, *extra, flags=flags)
        res = run("validate", "--repository", repo, "--summary")
        assert res.exit_code == 0 and "PASSED" in res.output, (k, steps[k - 1], res.output)
        v = assert_one_consistent_version(repo, GROUP, may_be_absent=before == "empty")
        assert v in ({0, 1} if before == "empty" else {1, 2} if scenario == "new-version" else {1}), (k, v)
        res = run("package", export, "--repository", repo, *extra)     # the next run recovers
        assert res.exit_code == 0, (k, res.output)
        try:
            assert_recovered(repo, GROUP, expected(v))
        except AssertionError as e:
            raise AssertionError(f"kill point {k} ({steps[k - 1]}), served v{v} before the rerun: {e}") from None
    return len(steps)


def test_package_new_version_killed_after_every_rename(base_repo, exported, tmp_path):
    """F7: v2 onto v1, killed after each of its 12 steps (3 links, 3 staged sidecars, the last of
    which commits, 3 renames into place, 3 configs): v1 or v2 everywhere, never a mix; the rerun
    writes v2 (rolled back) or v3 (v2 rolled forward)."""
    assert _sweep("new-version", base_repo, exported, tmp_path) == 12


def test_package_in_place_killed_after_every_rename(base_repo, exported, tmp_path):
    """F8: --version 1 onto v1, killed after each step (the old and the new folder are exchanged
    in one step per model): every model always has its version 1, all from one package."""
    assert _sweep("in-place", base_repo, exported, tmp_path) == 12


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["new-version", "in-place"])
def test_package_killed_without_an_atomic_exchange(base_repo, exported, tmp_path, scenario):
    """Where the filesystem cannot exchange two names: move aside, then rename in (15 steps in
    place: each model's old folder moved aside is one more)."""
    n = _sweep(scenario, base_repo, exported, tmp_path, flags=("--no-exchange",))
    assert n == (12 if scenario == "new-version" else 15)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["in-place", "first"])
def test_package_killed_after_every_removal_too(base_repo, exported, tmp_path, scenario):
    """"At any instant": also right after each unlink/rmdir (removing the replaced folders, whose
    sidecar goes first, so a half-removed one is never taken for a version)."""
    n = _sweep(scenario, base_repo, exported, tmp_path, flags=("--removals",))
    assert n > (12 if scenario == "in-place" else 15)


def test_first_package_killed_after_every_rename(base_repo, exported, tmp_path):
    """A model new to the repository appears with its config.pbtxt in one rename and has no
    version until the commit; the repository's other models keep serving."""
    assert _sweep("first", base_repo, exported, tmp_path) == 15


# ---- the resolver, in isolation -------------------------------------------------------------------

def _version(model_dir: Path, folder: str, pkg: dict | None) -> Path:
    d = model_dir / folder
    d.mkdir(parents=True)
    side = {"format": "seqserve-export/1"}
    if pkg is not None:
        side["package"] = pkg
    (d / "seqserve.json").write_text(json.dumps(side))
    return d


def _pkg(pid: str, created: int, version: int, models=("a", "b", "c")) -> dict:
    return {"id": pid, "created": created, "models": list(models), "version": version}


def test_resolver_ignores_an_incomplete_group(tmp_path):
    from seqserve.package import list_versions, pending_versions, resolve_versions

    for m in "abc":
        _version(tmp_path / m, "1", _pkg("x1", 1, 1))
    _version(tmp_path / "a", "2", _pkg("x2", 2, 2))          # published in a...
    _version(tmp_path / "b", ".2.tmp-00aa", _pkg("x2", 2, 2))  # ...staged in b, and nothing in c
    (tmp_path / "c" / ".2.tmp-00aa").mkdir()                  # (c's sidecar was never written)
    for m in "abc":
        assert list_versions(tmp_path / m) == [1], m
        assert resolve_versions(tmp_path / m) == {1: tmp_path / m / "1"}
    assert pending_versions(tmp_path / "a") == pending_versions(tmp_path / "c") == [2]
    # c's staged sidecar arrives: the package is committed, found in a/2, b/.2.tmp-00aa, c/.2.tmp-00aa
    _version(tmp_path / "c", ".2.tmp-00bb", _pkg("x2", 2, 2))
    assert resolve_versions(tmp_path / "b")[2] == tmp_path / "b" / ".2.tmp-00aa"
    assert all(list_versions(tmp_path / m) == [1, 2] for m in "abc")


def test_resolver_takes_the_newest_complete_package(tmp_path):
    from seqserve.package import resolve_version

    for m in "abc":
        _version(tmp_path / m, "1", _pkg("old", 10, 1))
    # replace in place, killed mid-way: a holds the new one at 1 and the old one hidden
    shutil.move(tmp_path / "a" / "1", tmp_path / "a" / ".1.tmp-0001")
    _version(tmp_path / "a", "1", _pkg("new", 20, 1))
    _version(tmp_path / "b", ".1.tmp-0001", _pkg("new", 20, 1))
    # "new" is not in c yet: the old package, hidden in a, is still version 1 everywhere
    assert resolve_version(tmp_path / "a", 1) == tmp_path / "a" / ".1.tmp-0001"
    assert resolve_version(tmp_path / "b", 1) == tmp_path / "b" / "1"
    _version(tmp_path / "c", ".1.tmp-0001", _pkg("new", 20, 1))
    assert resolve_version(tmp_path / "a", 1) == tmp_path / "a" / "1"
    assert resolve_version(tmp_path / "b", 1) == tmp_path / "b" / ".1.tmp-0001"
    assert resolve_version(tmp_path / "c", 1) == tmp_path / "c" / ".1.tmp-0001"
    # an even newer one that is not complete changes nothing
    _version(tmp_path / "b", ".1.tmp-0002", _pkg("newer", 30, 1))
    assert resolve_version(tmp_path / "b", 1) == tmp_path / "b" / ".1.tmp-0001"


def test_resolver_keeps_versions_written_before_groups(tmp_path):
    from seqserve.package import list_versions

    _version(tmp_path / "a", "1", None)                            # no "package": taken as it is
    (tmp_path / "a" / "3").mkdir()                                 # no sidecar: load_version reports it
    _version(tmp_path / "a", ".2.tmp-0001", None)                   # hidden without a package: ignored
    _version(tmp_path / "a", ".4.tmp-0001", _pkg("y", 1, 4, models=("a", "zz")))   # zz has none
    (tmp_path / "zz").mkdir()
    assert list_versions(tmp_path / "a") == [1, 3]


def test_a_model_removed_whole_does_not_hold_back_the_rest_of_its_group(tmp_path):
    """A user who deletes NAME_generate/ (serving only NAME) keeps NAME's versions; a model whose
    folder is there without the package still holds its group back."""
    from seqserve.package import list_versions

    for m in "abc":
        _version(tmp_path / m, "1", _pkg("x1", 1, 1))
    shutil.rmtree(tmp_path / "c")
    assert list_versions(tmp_path / "a") == list_versions(tmp_path / "b") == [1]
    (tmp_path / "c").mkdir()
    assert list_versions(tmp_path / "a") == list_versions(tmp_path / "b") == []


def test_validate_notes_and_passes_an_incomplete_version(base_repo, tmp_path):
    from seqserve.validate.repository import validate_repository

    repo = tmp_path / "repo"
    shutil.copytree(base_repo, repo)
    side = json.loads((repo / "lstm" / "1" / "seqserve.json").read_text())
    side["package"] = dict(side["package"], id="f00d", version=2)
    shutil.copytree(repo / "lstm" / "1", repo / "lstm" / "2")
    (repo / "lstm" / "2" / "seqserve.json").write_text(json.dumps(side))     # v2 only in lstm
    report = validate_repository(repo)
    assert report.passed, [r for r in report.checks if not r.passed]
    notes = [r for r in report.checks if r.case == "incomplete, ignored"]
    assert [r.graph for r in notes] == ["lstm"] and "[2]" in notes[0].detail
    assert served(repo)["lstm"][:2] == ("READY", ["1"])
