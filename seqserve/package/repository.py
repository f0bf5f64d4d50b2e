"""Write and read a Triton model repository: DIR/<model>/config.pbtxt + DIR/<model>/<N>/{model.onnx, seqserve.json}.

Everything that can be refused is checked before the first byte is written (configs vs ONNX,
names, versions, an existing model of another shape), so a refused package leaves the repository
as it was.

The models of one package (NAME, NAME_step, NAME_generate) are one unit, also across a SIGKILL at
any instant. Each model's version folder is staged under a hidden name in its model folder
(`.N.tmp-ID`; Triton ignores names that are not numbers) and gets its sidecar last, atomically:
the sidecar's `package` entry names the package id and every model of the group. A version N of a
model is the newest package id (by `created`) that every model of its group holds for N, in `N/`
or a hidden folder (`resolve_versions`); a version without such an id is ignored. So writing the
last staged sidecar commits the package; renaming the staged folders to `N` (or exchanging them
with the old `N`, in place) only publishes it for readers of numeric folders only (tritonserver),
and the next `seqserve package` finishes or rolls back what a killed one left (`recover_repository`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from seqserve.errors import SeqserveError
from seqserve.export.sidecar import SIDECAR, ExportInfo, load_export
from seqserve import io as sio
from seqserve.io import atomic_write_text, check_replaceable
from seqserve.package.triton_gpu_graphs import backend_problems, write_backend_graph
from seqserve.package.triton_config import (KIND_GRAPH, KINDS, ModelConfig, PackageOptions, build_configs, label_files,
                                            served_graphs,
                                            check_against_onnx, kind_of, model_names, parse_config, target_of,
                                            to_pbtxt, type_name)

CONFIG = "config.pbtxt"
MODEL_FILE = "model.onnx"
PYTHON_MODEL = "model.py"

# A python-backend model (targets triton-python, and generate under triton-gpu): Triton's stub
# imports model.py and looks for TritonPythonModel; ours is seqserve's served model of this kind.
PYTHON_MODEL_TEXT = '''"""Written by `seqserve package`: Triton's python backend runs seqserve's served model of this
kind (config.pbtxt's seqserve.kind) on this folder's model.onnx and seqserve.json. Needs the
seqserve package in the Python the stub runs (`seqserve serve --engine triton` arranges it)."""

from seqserve.triton.python_model import TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class PackagedModel:
    name: str
    version: int
    kind: str             # "full" | "step" | "generate"
    path: Path            # the version folder
    config: ModelConfig


@dataclass(frozen=True)
class ServedVersion:
    """One version folder: what it serves and the export sidecar it carries."""

    kind: str             # "full" | "step" | "generate"
    graph: str            # "full" | "step"
    info: ExportInfo      # info.graph_path(graph) is this folder's model.onnx
    once: tuple[str, ...] = ()   # generate of a chain task: graphs run first per sequence (init), `<graph>.onnx`

    @property
    def model_path(self) -> Path:
        return self.info.graph_path(self.graph)


# ---- reading ------------------------------------------------------------------------------------

PACKAGE = "package"          # the sidecar entry that ties a version folder to its package
_HIDDEN_VERSION = re.compile(r"\.(\d+)\.(?:tmp|old)-[0-9a-f]+")


def _package_of(folder: Path) -> dict | None:
    """The sidecar's `package` entry {id, created, models, version}, or None (no sidecar, not
    readable, or a version written before packages were groups)."""
    try:
        pkg = json.loads((folder / SIDECAR).read_text()).get(PACKAGE)
    except (OSError, ValueError, AttributeError):
        return None
    ok = (isinstance(pkg, dict) and isinstance(pkg.get("id"), str) and isinstance(pkg.get("created"), int)
          and isinstance(pkg.get("version"), int) and isinstance(pkg.get("models"), list)
          and all(isinstance(m, str) and m and "/" not in m and not m.startswith(".") for m in pkg["models"]))
    return pkg if ok else None


class _Scan:
    """Every version folder of the model folders one resolution looks at, read once:
    model folder -> {N: [(folder, package or None, numeric?)]}."""

    def __init__(self):
        self._dirs: dict[Path, dict[int, list[tuple[Path, dict | None, bool]]]] = {}

    def __call__(self, model_dir: Path) -> dict[int, list[tuple[Path, dict | None, bool]]]:
        if model_dir not in self._dirs:
            out: dict[int, list] = {}
            try:
                entries = sorted(model_dir.iterdir()) if model_dir.is_dir() else []
            except OSError:
                entries = []
            for p in entries:
                if not p.is_dir():
                    continue
                if p.name.isdigit():
                    out.setdefault(int(p.name), []).append((p, _package_of(p), True))
                elif m := _HIDDEN_VERSION.fullmatch(p.name):
                    pkg = _package_of(p)
                    if pkg is not None:           # a hidden folder counts only with a package sidecar
                        out.setdefault(int(m.group(1)), []).append((p, pkg, False))
            self._dirs[model_dir] = out
        return self._dirs[model_dir]


def _resolve(scan: _Scan, model_dir: Path, n: int) -> Path | None:
    complete = []
    for folder, pkg, numeric in scan(model_dir).get(n, []):
        if pkg is None or pkg["version"] != n or model_dir.name not in pkg["models"]:
            continue
        # A model of the group whose whole folder is gone was removed on purpose (a user who
        # serves NAME but not NAME_generate): it is not waited for. A package cannot look like
        # that while it is written: every model folder exists before the first sidecar commits.
        if all(any(q is not None and q["id"] == pkg["id"] for _, q, _ in scan(model_dir.parent / m).get(n, []))
               for m in pkg["models"] if m == model_dir.name or (model_dir.parent / m).exists()):
            complete.append((pkg["created"], pkg["id"], numeric, folder))
    if complete:
        return max(complete)[3]
    for folder, pkg, numeric in scan(model_dir).get(n, []):
        if numeric and pkg is None:               # written before packages were groups (or by hand)
            return folder
    return None


def resolve_versions(model_dir: str | Path) -> dict[int, Path]:
    """{version: the folder to read}, ascending: the one resolver `seqserve serve`,
    `validate --repository` and `package` use. A version of a package is the newest package id
    that every model of its group holds for that number (in `N/` or a hidden staged or previous
    folder); a version with no complete id (an interrupted package) is left out. A numeric folder
    whose sidecar has no `package` entry is taken as it is."""
    model_dir = Path(model_dir)
    scan = _Scan()
    out = {}
    for n in sorted(scan(model_dir)):
        folder = _resolve(scan, model_dir, n)
        if folder is not None:
            out[n] = folder
    return out


def resolve_version(model_dir: str | Path, version: int) -> Path | None:
    """The folder that holds `version` of the model, or None (absent or incomplete)."""
    return _resolve(_Scan(), Path(model_dir), int(version))


def list_versions(model_dir: str | Path) -> list[int]:
    """Complete version numbers, ascending (see resolve_versions)."""
    return sorted(resolve_versions(model_dir))


def pending_versions(model_dir: str | Path) -> list[int]:
    """Version numbers that have folders on disk (numeric, or hidden staged ones) but no complete
    package: what an interrupted `seqserve package` left, which readers ignore."""
    model_dir = Path(model_dir)
    on_disk = set()
    with contextlib.suppress(OSError):
        for p in model_dir.iterdir():
            m = _HIDDEN_VERSION.fullmatch(p.name)
            if p.is_dir() and (p.name.isdigit() or m):
                on_disk.add(int(p.name) if p.name.isdigit() else int(m.group(1)))
    return sorted(on_disk - set(resolve_versions(model_dir)))


def read_config(model_dir: str | Path) -> ModelConfig:
    model_dir = Path(model_dir)
    path = model_dir / CONFIG
    if not path.is_file():
        raise SeqserveError(f"model folder {model_dir} has no {CONFIG}; expected a Triton model folder "
                            "(written by `seqserve package`)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SeqserveError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    cfg = parse_config(text, str(path))
    if cfg.name and cfg.name != model_dir.name:      # Triton expects the folder name too
        raise SeqserveError(f"{path} names model {cfg.name!r} but its folder is {model_dir.name!r}; "
                            "they must match")
    return cfg


def load_version(version_dir: str | Path) -> ServedVersion:
    version_dir = Path(version_dir)
    info = load_export(version_dir, graphs=())        # which graph must exist depends on "serve"
    serve = info.raw.get("serve")
    kind = serve.get("kind") if isinstance(serve, dict) else None
    if kind not in KINDS or serve.get("graph") != KIND_GRAPH[kind]:
        raise SeqserveError(f"{version_dir / SIDECAR} has serve {serve!r}; expected "
                            "{'kind': 'full'|'step'|'generate'|'classify'|'step_state', 'graph': the graph "
                            "that kind serves} "
                            "(a version folder written by `seqserve package`)")
    graph = serve["graph"]
    if not isinstance(info.raw.get("graphs"), dict) or graph not in info.raw["graphs"]:
        raise SeqserveError(f"{version_dir / SIDECAR} lists no file for its {graph} graph")
    once = tuple(serve.get("once", ()))
    for g in (graph, *once):
        if g not in info.raw["graphs"] or not info.graph_path(g).is_file():
            raise SeqserveError(f"version folder {version_dir} is missing its {g} graph "
                                f"{info.raw['graphs'].get(g, g + '.onnx')}")
    return ServedVersion(kind, graph, info, once)


def load_resolved(model_dir: str | Path, version: int, folder: Path | None = None) -> ServedVersion:
    """load_version of the folder that holds `version` (resolve_version). A concurrent package may
    rename a staged folder into place while we read it: then resolve again (twice at most)."""
    model_dir = Path(model_dir)
    for attempt in range(3):
        if folder is None:
            folder = resolve_version(model_dir, version)
            if folder is None:
                raise SeqserveError(f"{model_dir} has no complete version {version}")
        try:
            return load_version(folder)
        except (SeqserveError, OSError):
            if attempt == 2 or folder.exists():
                raise
            folder = None
    raise AssertionError("unreachable")


# ---- writing ------------------------------------------------------------------------------------

def package_export(export_dir: str | Path, repository: str | Path, name: str | None = None,
                   version: int | None = None, options: PackageOptions = PackageOptions()) -> list[PackagedModel]:
    info = load_export(export_dir)
    static = info.spec.extra.get("kv_cache") == "static"
    if static and options.target != "seqserve":
        # Triton feeds state as the concat graph takes it (implicit state); the slot pool that
        # runs an in-place cache is seqserve's generation scheduler. GQA has no fp32 CUDA kernel.
        raise SeqserveError(f"{info.path} was exported with --kv-cache static (an in-place KV cache), which "
                            f"target {options.target} does not run (only --target seqserve serves it, on a slot "
                            "pool); package an export made with --kv-cache concat")
    name = info.family if name is None else name
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise SeqserveError(f"repository {repository} is a file; expected a folder (it is created if missing)")
    configs = build_configs(info, name, options)          # also checks the name
    if static:
        # NAME_generate runs the in-place cache on a slot pool (serve/slot_pool.py); client-driven
        # sequences (NAME_step) would each need a slot held between their requests: not packaged.
        dropped = model_names(name)["step"]
        if configs.pop(dropped, None) is not None:
            logging.getLogger(__name__).warning(
                "%s: exported with --kv-cache static; %s (client-driven sequences) is not packaged for an "
                "in-place cache, only %s and %s_generate", info.path, dropped, name, name)
    kinds = {model: kind_of(cfg) for model, cfg in configs.items()}

    # 1. Everything that can be refused, before writing anything.
    for model, cfg in configs.items():
        graph = KIND_GRAPH[kinds[model]]
        problems = check_against_onnx(cfg, info.graph_path(graph), info.graph(graph)) + backend_problems(cfg, info)
        for g in served_graphs(info.spec, kinds[model])[1:]:   # the chain's once graphs (generate)
            problems += [f"{g}.onnx: {p}" for p in _signature_problems(info, g)]
        if problems:
            raise SeqserveError(f"the {model} config does not agree with {info.graph_path(graph)}: "
                                + "; ".join(problems))
        if parse_config(to_pbtxt(cfg), f"{model}/{CONFIG}") != cfg:    # what Triton will read back
            raise SeqserveError(f"the {model} config does not survive a round trip through {CONFIG}")
    if version is not None:
        _check_version(version)

    # 2. One writer at a time per repository (readers take no lock: it may be mounted read-only).
    repository.mkdir(parents=True, exist_ok=True)
    lock = sio.lock_path(repository)
    try:
        recover_repository(repository)            # finish or roll back what a killed package left
        for model, cfg in configs.items():
            _check_existing(repository / model, cfg, info.family)
        version = _choose_version(repository, list(configs), version)
        for model in configs:
            check_replaceable(repository / model / str(version), SIDECAR)
        return _write(repository, info, configs, kinds, version)
    finally:
        sio.unlock(lock)


def _write(repository: Path, info: ExportInfo, configs: dict[str, ModelConfig], kinds: dict[str, str],
           version: int) -> list[PackagedModel]:
    pkg_id = secrets.token_hex(8)
    scan = _Scan()
    newest = max((q["created"] for m in configs for _, q, _ in scan(repository / m).get(version, []) if q), default=0)
    package = {"id": pkg_id, "created": max(time.time_ns(), newest + 1), "models": list(configs),
               "version": version}
    staged_name = f".{version}.tmp-{pkg_id}"
    staged: dict[str, Path] = {}
    made: list[Path] = []               # model folders this call created (removed again on failure)
    outer: list[Path] = []
    try:
        # 3. Stage each model's version folder, all files but the sidecar. A model new to the
        #    repository is built in a hidden sibling with its config.pbtxt and its staged version
        #    and renamed in whole, so a model folder never shows without its config; until the
        #    commit it has no version readers take (a hidden staged one: validate notes it).
        for model, cfg in configs.items():
            model_dir = repository / model
            new = not model_dir.exists()
            if new:
                hidden, lock = sio._locked_sibling(model_dir, "tmp", Path.mkdir)
                sio.unlock(lock)            # the repository lock keeps other writers out
                outer.append(hidden)
                build = hidden / model
                build.mkdir()
                for fname, text in label_files(info, cfg).items():     # classify: labels.txt
                    atomic_write_text(build / fname, text)
                atomic_write_text(build / CONFIG, to_pbtxt(cfg))
            else:
                build = model_dir
            folder = build / staged_name
            folder.mkdir()
            if not new:
                staged[model] = folder
            _link_or_copy(info.graph_path(KIND_GRAPH[kinds[model]]), folder / MODEL_FILE)
            for g in served_graphs(info.spec, kinds[model])[1:]:
                _link_or_copy(info.graph_path(g), folder / f"{g}.onnx")
            write_backend_graph(cfg, info, folder)      # triton-gpu: the graph Triton's backend loads
            if cfg.backend == "python":
                (folder / PYTHON_MODEL).write_text(PYTHON_MODEL_TEXT)
            if new:
                os.rename(build, model_dir)
                made.append(model_dir)
                with contextlib.suppress(OSError):
                    os.rmdir(hidden)
            staged[model] = model_dir / staged_name
        # 4. The sidecars, each written atomically; the last one commits the package.
        for model in configs:
            atomic_write_text(staged[model] / SIDECAR,
                              json.dumps(served_sidecar(info, kinds[model], package), indent=2) + "\n")
    except BaseException:
        for model, folder in staged.items():
            sio.remove_tree(folder, SIDECAR)
        for d in made + outer:
            shutil.rmtree(d, ignore_errors=True)
        raise
    # 5. Committed: readers that honour packages see version N of every model now. Publish it for
    #    those that read numeric folders only, then the configs (unchanged in what a client sees).
    for model in configs:
        _publish(staged[model], repository / model / str(version))
    for model, cfg in configs.items():
        if repository / model not in made:
            for fname, text in label_files(info, cfg).items():
                atomic_write_text(repository / model / fname, text)
            atomic_write_text(repository / model / CONFIG, to_pbtxt(cfg))
    return [PackagedModel(model, version, kinds[model], repository / model / str(version), cfg)
            for model, cfg in configs.items()]


def _publish(staged: Path, target: Path) -> None:
    """Put a staged (complete) version folder at its numeric name; the previous folder, if any, is
    removed (its sidecar first, so a half-removed folder is never taken for a version)."""
    if not target.exists():
        os.rename(staged, target)
        return
    if sio.exchange(staged, target):        # one atomic swap: `staged` now holds the previous one
        sio.remove_tree(staged, SIDECAR)
        return
    aside = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
    os.rename(target, aside)                # readers find both hidden ones; the newer package wins
    os.rename(staged, target)
    sio.remove_tree(aside, SIDECAR)


def recover_repository(repository: str | Path) -> None:
    """Finish or roll back what killed `seqserve package` runs left (call with the repository
    lock held): every model's resolved versions are moved to their numeric folders, every other
    hidden version folder is removed, and so are hidden model folders that never got renamed in."""
    repository = Path(repository)
    root_hidden = re.compile(r"\.(.+)\.(?:tmp|old)-[0-9a-f]+")
    for p in list(repository.iterdir()):
        if m := root_hidden.fullmatch(p.name):
            sio.recover(repository / m.group(1))
    # Decide for every model before touching any: a model folder that recovery removes must not
    # change what its group's other models resolve to (a group member whose folder is gone is
    # not waited for: see _resolve).
    model_dirs = sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))
    scan = _Scan()
    plan = {d: {n: _resolve(scan, d, n) for n in sorted(scan(d))} for d in model_dirs}
    for model_dir in model_dirs:
        removed = False
        for n, chosen in plan[model_dir].items():
            if chosen is not None and chosen.name != str(n):
                _publish(chosen, model_dir / str(n))
            for p in list(model_dir.iterdir()):
                if (m := _HIDDEN_VERSION.fullmatch(p.name)) and int(m.group(1)) == n:
                    sio.remove_tree(p, SIDECAR)
                    removed = True
        for p in list(model_dir.iterdir()):        # hidden folders without a package sidecar
            if _HIDDEN_VERSION.fullmatch(p.name):
                sio.remove_tree(p, SIDECAR)
                removed = True
        sio.recover(model_dir / CONFIG)            # a killed config write's temporary file
        with contextlib.suppress(OSError):
            if removed and [p.name for p in model_dir.iterdir()] == [CONFIG]:
                os.unlink(model_dir / CONFIG)      # a model a killed first package was creating
                os.rmdir(model_dir)


def served_sidecar(info: ExportInfo, kind: str, package: dict | None = None) -> dict:
    """The export sidecar for one served version: only its graph, named model.onnx, plus `serve`
    (and `package`: {id, created, models, version}, which makes the version part of a group)."""
    graph, *once = served_graphs(info.spec, kind)
    raw = copy.deepcopy(info.raw)
    raw["graphs"] = {graph: MODEL_FILE, **{g: f"{g}.onnx" for g in once}}
    raw["serve"] = {"kind": kind, "graph": graph, **({"once": once} if once else {})}
    if package is not None:
        raw[PACKAGE] = dict(package)
    return raw


def _signature_problems(info: ExportInfo, graph: str) -> list[str]:
    import onnx

    from seqserve.tasks.signature import signature_problems

    return signature_problems(onnx.load(str(info.graph_path(graph)), load_external_data=False).graph,
                              info.graph(graph))[0]


def _link_or_copy(src: Path, dst: Path) -> None:
    # A hard link costs no space. It is safe: exports are replaced by renaming a new folder in,
    # never rewritten in place, so the linked file never changes under a served version.
    try:
        os.link(src, dst)
    except OSError:                 # another filesystem, or one without hard links
        shutil.copy2(src, dst)


def _choose_version(repository: Path, models: list[str], version: int | None) -> int:
    if version is None:
        # One number for the three models of an export, so NAME/N, NAME_step/N and
        # NAME_generate/N always come from the same export.
        return 1 + max((v for m in models for v in list_versions(repository / m)), default=0)
    return _check_version(version)


def _check_version(version) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SeqserveError(f"version must be a whole number of at least 1; got {version!r}")
    return version


def _signature(cfg: ModelConfig) -> dict[str, list[str]]:
    """What a client depends on: tensor names, types, dims (and the kind of model). Optional
    inputs are not part of it: a version that adds one (a new generation field) still serves
    every client of the old."""
    def t(x) -> str:
        return f"{x.name} {type_name(x.data_type)} {list(x.dims)}"

    return {"kind": [cfg.parameters["seqserve.kind"].string_value if "seqserve.kind" in cfg.parameters else ""],
            "target": [target_of(cfg)],
            "inputs": [t(x) for x in cfg.input if not x.optional], "outputs": [t(x) for x in cfg.output],
            "state": [f"{s.input_name}->{s.output_name} {type_name(s.data_type)} {list(s.dims)}"
                      for s in cfg.sequence_batching.state]}


def _check_existing(model_dir: Path, cfg: ModelConfig, family: str) -> None:
    """Refuse to add a version to a model that serves something else (another family or shape)."""
    if not model_dir.exists():
        return
    if not model_dir.is_dir():
        raise SeqserveError(f"{model_dir} exists and is a file; expected a model folder "
                            "(choose another --name or remove it)")
    if not (model_dir / CONFIG).exists():
        if any(model_dir.iterdir()):
            raise SeqserveError(f"{model_dir} exists without {CONFIG}; refusing to write into it "
                                "(choose another --name or remove it)")
        return
    old = read_config(model_dir)
    before, after = _signature(old), _signature(cfg)
    for what in before:
        if before[what] != after[what]:
            raise SeqserveError(f"model {model_dir.name} in {model_dir.parent} already has {what} "
                                f"{before[what]}; this export has {after[what]} (another family or "
                                "shape: choose another --name)")
    # Families can share a signature (rnn and gru with the same sizes): compare the newest
    # version's family too. A version folder we cannot read says nothing either way.
    versions = resolve_versions(model_dir)
    old_family = None
    if versions:
        with contextlib.suppress(SeqserveError):
            old_family = load_version(versions[max(versions)]).info.family
    if old_family is not None and old_family != family:
        raise SeqserveError(f"model {model_dir.name} in {model_dir.parent} serves family "
                            f"{old_family}; this export is {family} (choose another --name)")
