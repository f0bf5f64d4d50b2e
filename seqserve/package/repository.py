"""Write and read a Triton model repository: DIR/<model>/config.pbtxt + DIR/<model>/<N>/{model.onnx, seqserve.json}.

Everything that can be refused is checked before the first byte is written (configs vs ONNX,
names, versions, an existing model of another shape), so a refused package leaves the repository
as it was. The three version folders are staged as temporary siblings and renamed in together.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from seqserve.errors import SeqserveError
from seqserve.export.sidecar import SIDECAR, ExportInfo, load_export
from seqserve.io import atomic_dir, atomic_write_text, check_replaceable, write_json
from seqserve.package.triton_config import (KIND_GRAPH, KINDS, ModelConfig, PackageOptions, build_configs,
                                            check_against_onnx, kind_of, parse_config, target_of,
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

    @property
    def model_path(self) -> Path:
        return self.info.graph_path(self.graph)


# ---- reading ------------------------------------------------------------------------------------

def list_versions(model_dir: str | Path) -> list[int]:
    """Numeric version folders, ascending (Triton ignores other names, so do we)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted({int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()})


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
                            "{'kind': 'full'|'step'|'generate', 'graph': the graph that kind serves} "
                            "(a version folder written by `seqserve package`)")
    graph = serve["graph"]
    if not isinstance(info.raw.get("graphs"), dict) or graph not in info.raw["graphs"]:
        raise SeqserveError(f"{version_dir / SIDECAR} lists no file for its {graph} graph")
    if not info.graph_path(graph).is_file():
        raise SeqserveError(f"version folder {version_dir} is missing {info.graph_path(graph).name}")
    return ServedVersion(kind, graph, info)


# ---- writing ------------------------------------------------------------------------------------

def package_export(export_dir: str | Path, repository: str | Path, name: str | None = None,
                   version: int | None = None, options: PackageOptions = PackageOptions()) -> list[PackagedModel]:
    info = load_export(export_dir)
    name = info.family if name is None else name
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise SeqserveError(f"repository {repository} is a file; expected a folder (it is created if missing)")
    configs = build_configs(info, name, options)          # also checks the name
    kinds = {model: kind_of(cfg) for model, cfg in configs.items()}

    # 1. Everything that can be refused, before writing anything.
    for model, cfg in configs.items():
        graph = KIND_GRAPH[kinds[model]]
        problems = check_against_onnx(cfg, info.graph_path(graph), info.graph(graph))
        if problems:
            raise SeqserveError(f"the {model} config does not agree with {info.graph_path(graph)}: "
                                + "; ".join(problems))
        if parse_config(to_pbtxt(cfg), f"{model}/{CONFIG}") != cfg:    # what Triton will read back
            raise SeqserveError(f"the {model} config does not survive a round trip through {CONFIG}")
        _check_existing(repository / model, cfg, info.family)
    version = _choose_version(repository, list(configs), version)
    for model in configs:
        check_replaceable(repository / model / str(version), SIDECAR)

    # 2. Stage the three version folders; they are renamed in together when the block ends, and
    #    all removed if anything inside fails.
    created = [repository / m for m in configs if not (repository / m).exists()]
    written = []
    try:
        with contextlib.ExitStack() as stack:
            for model, cfg in configs.items():
                kind = kinds[model]
                graph = KIND_GRAPH[kind]
                tmp = stack.enter_context(atomic_dir(repository / model / str(version), SIDECAR))
                _link_or_copy(info.graph_path(graph), tmp / MODEL_FILE)
                write_json(tmp / SIDECAR, served_sidecar(info, kind))
                if cfg.backend == "python":
                    (tmp / PYTHON_MODEL).write_text(PYTHON_MODEL_TEXT)
                written.append(PackagedModel(model, version, kind, repository / model / str(version), cfg))
        for model, cfg in configs.items():
            atomic_write_text(repository / model / CONFIG, to_pbtxt(cfg))
    except BaseException:
        for d in created:               # a model folder we made for this call and left empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return written


def served_sidecar(info: ExportInfo, kind: str) -> dict:
    """The export sidecar for one served version: only its graph, named model.onnx, plus `serve`."""
    graph = KIND_GRAPH[kind]
    raw = copy.deepcopy(info.raw)
    raw["graphs"] = {graph: MODEL_FILE}
    raw["serve"] = {"kind": kind, "graph": graph}
    return raw


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
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SeqserveError(f"version must be a whole number of at least 1; got {version!r}")
    return version


def _signature(cfg: ModelConfig) -> dict[str, list[str]]:
    """What a client depends on: tensor names, types, dims (and the kind of model)."""
    def t(x) -> str:
        return f"{x.name} {type_name(x.data_type)} {list(x.dims)}"

    return {"kind": [cfg.parameters["seqserve.kind"].string_value if "seqserve.kind" in cfg.parameters else ""],
            "target": [target_of(cfg)],
            "inputs": [t(x) for x in cfg.input], "outputs": [t(x) for x in cfg.output],
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
    versions = list_versions(model_dir)
    old_family = None
    if versions:
        with contextlib.suppress(SeqserveError):
            old_family = load_version(model_dir / str(versions[-1])).info.family
    if old_family is not None and old_family != family:
        raise SeqserveError(f"model {model_dir.name} in {model_dir.parent} serves family "
                            f"{old_family}; this export is {family} (choose another --name)")
