"""The export sidecar `seqserve.json`: what every later component reads about an export.

Reading it needs neither torch nor the model code: the task spec (its graphs, their tensors with
names, dtypes, dims and roles, state pairs), the tokenizer and the graph files are all in the JSON.
Format 2 carries a task spec; format 1 (before tasks) is read as the causal-lm task it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from seqserve.data import Tokenizer
from seqserve.errors import SeqserveError
from seqserve.tasks.spec import GraphSpec, TaskSpec

SIDECAR = "seqserve.json"
FORMAT = "seqserve-export/2"
READABLE = ("seqserve-export/1", FORMAT)


@dataclass(frozen=True)
class ExportInfo:
    path: Path
    family: str
    spec: TaskSpec
    tokenizer: Tokenizer
    raw: dict                   # the whole sidecar

    def graph_path(self, graph: str, fp32: bool = False) -> Path:
        """The file a graph name maps to (the one place that decides): `graphs` in the sidecar,
        which for a quantized export (`quantize`: "int8") names the quantized files; fp32=True:
        that export's fp32 original (`fp32_graphs`), the quantization gate's reference."""
        if fp32 and self.quantized:
            return self.path / self.raw["fp32_graphs"][graph]
        return self.path / self.raw["graphs"][graph]

    @property
    def quantized(self) -> str | None:
        """The quantization method ("int8", "int8-block") or None for an fp32 export."""
        return self.raw.get("quantize")

    def fp32(self) -> "ExportInfo":
        """This export as its fp32 graphs (itself when not quantized): backends built on it run
        the originals a quantized export keeps beside its quantized graphs."""
        if not self.quantized:
            return self
        raw = {k: v for k, v in self.raw.items() if k not in ("quantize", "fp32_graphs")}
        return ExportInfo(self.path, self.family, self.spec, self.tokenizer, {**raw, "graphs": self.raw["fp32_graphs"]})

    @property
    def task(self) -> str:
        return self.spec.task

    def graph(self, graph: str) -> GraphSpec:
        return self.spec.graph(graph)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint"

    @property
    def max_context(self) -> int | None:
        # a static KV cache holds at most kv_cache_length positions (export --kv-cache static:N)
        lengths = [n for n in (self.spec.extra.get("max_seq_len"), self.spec.extra.get("kv_cache_length")) if n]
        return min(lengths) if lengths else None


def load_export(path: str | Path, graphs: tuple[str, ...] | None = None) -> ExportInfo:
    """Read an export's sidecar; `graphs` are the graph files that must exist (default: every
    graph of the task; a packaged per-version folder holds only the one graph it serves)."""
    path = Path(path)
    side = path / SIDECAR
    if not path.is_dir():
        raise SeqserveError(f"export {path} is not a folder; expected the output of `seqserve export`")
    if not side.is_file():
        raise SeqserveError(f"export {path} has no {SIDECAR}; expected the output of `seqserve export`")
    try:
        raw = json.loads(side.read_text())
        if not isinstance(raw, dict):
            raise SeqserveError(f"{side} holds a JSON {type(raw).__name__}; expected an object")
        if raw.get("format") not in READABLE:
            raise SeqserveError(f"{side} has format {raw.get('format')!r}; expected one of {list(READABLE)} "
                                "(written by `seqserve export`)")
        try:
            tokenizer = Tokenizer.from_json(raw["tokenizer"])
        except SeqserveError as e:
            raise SeqserveError(f"{side}: {e}") from None
        info = ExportInfo(path, raw["family"], TaskSpec.from_json(raw["spec"]), tokenizer, raw)
        for g in (info.spec.graphs if graphs is None else graphs):
            if not info.graph_path(g).is_file():
                raise SeqserveError(f"export {path} is missing its {g} graph {info.graph_path(g).name}")
    except json.JSONDecodeError as e:
        raise SeqserveError(f"{side} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise SeqserveError(f"{side} is missing or has a bad field: {e}") from None
    return info
