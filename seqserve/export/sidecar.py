"""The export sidecar `seqserve.json`: what every later component reads about an export.

Reading it needs neither torch nor the model code: the family spec (tensor names, dtypes, dims,
state pairs), the tokenizer and the graph files are all in the JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from seqserve.data import Tokenizer
from seqserve.errors import SeqserveError
from seqserve.spec import FamilySpec, GraphSpec

SIDECAR = "seqserve.json"
FORMAT = "seqserve-export/1"


@dataclass(frozen=True)
class ExportInfo:
    path: Path
    family: str
    spec: FamilySpec
    tokenizer: Tokenizer
    raw: dict                   # the whole sidecar

    def graph_path(self, graph: str) -> Path:
        return self.path / self.raw["graphs"][graph]

    def graph(self, graph: str) -> GraphSpec:
        return {"full": self.spec.full, "step": self.spec.step}[graph]

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint"

    @property
    def max_context(self) -> int | None:
        return self.spec.extra.get("max_seq_len")


def load_export(path: str | Path, graphs: tuple[str, ...] = ("full", "step")) -> ExportInfo:
    """Read an export's sidecar; `graphs` are the graph files that must exist (a packaged
    per-version folder holds only the one graph it serves)."""
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
        if raw.get("format") != FORMAT:
            raise SeqserveError(f"{side} has format {raw.get('format')!r}; expected {FORMAT!r}")
        try:
            tokenizer = Tokenizer.from_json(raw["tokenizer"])
        except SeqserveError as e:
            raise SeqserveError(f"{side}: {e}") from None
        info = ExportInfo(path, raw["family"], FamilySpec.from_json(raw["spec"]), tokenizer, raw)
        for g in graphs:
            if not info.graph_path(g).is_file():
                raise SeqserveError(f"export {path} is missing its {g} graph {info.graph_path(g).name}")
    except json.JSONDecodeError as e:
        raise SeqserveError(f"{side} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise SeqserveError(f"{side} is missing or has a bad field: {e}") from None
    return info
