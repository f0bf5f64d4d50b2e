"""The served model repository: which models and versions are loaded, load/unload, lookups.

Reads the layout `seqserve package` writes (Triton's): `ROOT/<model>/config.pbtxt` and
`ROOT/<model>/<version>/{model.onnx, seqserve.json}`. Versions follow the config's
`version_policy` (latest N by default, as Triton). A model that fails to load is UNAVAILABLE with
the reason; the others serve (and `/v2/health/ready` says not ready, as Triton's strict readiness).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from seqserve import __version__
from seqserve.errors import SeqserveError
from seqserve.runtime import RuntimeOptions
from seqserve.serve.stats import metrics_text
from seqserve.serve.types import ServeError

log = logging.getLogger("seqserve.serve")

EXTENSIONS = ["classification", "sequence", "model_repository", "model_repository(unload_dependents)",
              "schedule_policy", "model_configuration", "system_shared_memory", "cuda_shared_memory",
              "binary_tensor_data", "parameters", "statistics", "trace", "logging", "generate"]
# what we implement of Triton's list (no shared memory, trace or logging APIs)
EXTENSIONS = [e for e in EXTENSIONS if e not in ("system_shared_memory", "cuda_shared_memory", "trace",
                                                 "logging")]


@dataclass
class _Entry:
    state: str                    # READY | UNAVAILABLE | LOADING | UNLOADING
    reason: str = ""
    versions: dict | None = None  # version str -> model


def _model_class(kind: str):
    from seqserve.serve.classify_text import ClassifyTextModel
    from seqserve.serve.generate import GenerateModel
    from seqserve.serve.models import FullModel, StatelessStepModel
    from seqserve.serve.sequences import StepModel

    try:
        return {"full": FullModel, "step": StepModel, "generate": GenerateModel, "classify": ClassifyTextModel,
                "step_state": StatelessStepModel}[kind]
    except KeyError:
        raise SeqserveError(f"unknown served model kind {kind!r}; expected full, step, generate, classify or "
                            "step_state") from None


def _chosen_versions(config, available: list[int]) -> list[int]:
    vp = config.version_policy
    which = vp.WhichOneof("policy_choice")
    if which == "all":
        return available
    if which == "specific":
        return [v for v in available if v in set(vp.specific.versions)]
    n = vp.latest.num_versions if which == "latest" else 1
    return available[-max(n, 1):]


class ModelRepository:
    def __init__(self, root: str | Path, options: RuntimeOptions = RuntimeOptions()):
        self.root = Path(root)
        self.options = options
        self.models: dict[str, _Entry] = {}
        self._lock = threading.Lock()       # loads run in worker threads
        self.draining = False
        if not self.root.is_dir():
            raise SeqserveError(f"model repository {self.root} is not a folder; create one with "
                                "`seqserve package EXPORT --repository DIR`")

    # -- loading ----------------------------------------------------------------------------------

    def names_on_disk(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "config.pbtxt").is_file())

    def load_all(self, names: list[str] | None = None, progress=None) -> None:
        names = names if names is not None else self.names_on_disk()
        if not names:
            raise SeqserveError(f"model repository {self.root} holds no models (no <model>/config.pbtxt); "
                                "add one with `seqserve package EXPORT --repository DIR`")
        for name in names:
            self.load_sync(name)
            if progress:
                progress(name, self.models[name])

    def load_sync(self, name: str) -> _Entry:
        from seqserve.package import load_resolved, read_config, resolve_versions

        folder = self.root / name
        if not (folder / "config.pbtxt").is_file():
            raise ServeError(400, f"failed to load '{name}': no {folder}/config.pbtxt in the model repository")
        with self._lock:
            old = self.models.get(name)
            self.models[name] = _Entry("LOADING")
        versions, errors = {}, []
        try:
            config = read_config(folder)
            if config.name and config.name != name:
                raise SeqserveError(f"{folder}/config.pbtxt names the model '{config.name}'; the folder is '{name}'")
            folders = resolve_versions(folder)    # complete versions only: an interrupted package's are ignored
            available = sorted(folders)
            chosen = _chosen_versions(config, available)
            if not chosen:
                raise SeqserveError(f"{folder} has no version folder the version_policy selects "
                                    f"(found {available or 'none'}); expected e.g. {folder}/1/model.onnx")
            for v in chosen:
                served = load_resolved(folder, v, folders[v])
                versions[str(v)] = _model_class(served.kind)(name, str(v), config, served, self.options)
        except SeqserveError as e:
            errors.append(str(e))
        except Exception as e:    # a corrupt graph can raise from deep inside ORT/protobuf
            errors.append(f"{type(e).__name__}: {e}")
        if errors:
            for m in versions.values():
                m.close()
            entry = _Entry("UNAVAILABLE", errors[0])
            log.error("model '%s' failed to load: %s", name, errors[0])
        else:
            for m in versions.values():
                m.all_versions = sorted(versions, key=int)
            entry = _Entry("READY", "", versions)
        with self._lock:
            self.models[name] = entry
        if old is not None and old.versions:
            for m in old.versions.values():     # a reload replaces the old versions, then frees them
                m.close()
        return entry

    async def load(self, name: str) -> None:
        entry = await asyncio.get_running_loop().run_in_executor(None, self.load_sync, name)
        if entry.state != "READY":
            raise ServeError(400, f"failed to load '{name}': {entry.reason}")

    async def unload(self, name: str) -> None:
        with self._lock:
            entry = self.models.get(name)
            if entry is None:
                raise ServeError(404, f"unknown model '{name}'; loaded models: {self._known()}")
            self.models[name] = _Entry("UNAVAILABLE", "unloaded")
        if entry.versions:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: [m.close() for m in entry.versions.values()])

    def end_all(self) -> None:
        """Shutdown: every queued request and open stream of every model gets its terminal answer
        now (streams a final event with finish_reason "shutdown"). Blocking; see Worker.end_all."""
        for m in list(self.all_models()):
            if m.worker is not None:
                m.worker.end_all()

    def close(self) -> None:
        with self._lock:
            entries, self.models = list(self.models.values()), {}
        for e in entries:
            for m in (e.versions or {}).values():
                m.close()

    # -- lookups --------------------------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self.draining and bool(self.models) and all(e.state == "READY" for e in self.models.values())

    def _known(self) -> str:
        return ", ".join(sorted(self.models)) or "none"

    def get(self, name: str, version: str = ""):
        if self.draining:
            raise ServeError(503, "the server is shutting down and accepts no new requests")
        entry = self.models.get(name)
        if entry is None:
            raise ServeError(404, f"unknown model '{name}'; this server has: {self._known()}")
        if entry.state != "READY":
            raise ServeError(503 if entry.state == "LOADING" else 404,
                             f"model '{name}' is {entry.state.lower()}" + (f": {entry.reason}" if entry.reason else ""))
        if not version:
            return entry.versions[max(entry.versions, key=int)]
        m = entry.versions.get(version)
        if m is None:
            raise ServeError(404, f"model '{name}' has no version '{version}'; ready versions: "
                                  f"{', '.join(sorted(entry.versions, key=int))}")
        return m

    def versions(self, name: str) -> list[str]:
        entry = self.models.get(name)
        return sorted(entry.versions, key=int) if entry and entry.versions else []

    def index(self, ready_only: bool = False) -> list[dict]:
        out = []
        names = sorted(set(self.models) | set(self.names_on_disk()))
        for name in names:
            e = self.models.get(name, _Entry("UNAVAILABLE", "not loaded"))
            if e.versions:
                out += [{"name": name, "version": v, "state": e.state, "reason": e.reason}
                        for v in sorted(e.versions, key=int)]
            else:
                out.append({"name": name, "version": "", "state": e.state, "reason": e.reason})
        return [r for r in out if r["state"] == "READY"] if ready_only else out

    def server_metadata(self) -> dict:
        return {"name": "seqserve", "version": __version__, "extensions": EXTENSIONS}

    def all_models(self):
        for e in list(self.models.values()):
            yield from (e.versions or {}).values()

    def stats_json(self, name: str = "", version: str = "") -> dict:
        if name:
            models = [self.get(name, version)] if version else \
                [m for m in self.all_models() if m.name == name] or [self.get(name)]
        else:
            models = list(self.all_models())
        return {"model_stats": [m.stats.to_json() for m in models]}

    def metrics_text(self) -> str:
        return metrics_text([m.stats for m in self.all_models()])

    def busy(self) -> int:
        return sum(m.stats.pending for m in self.all_models())
