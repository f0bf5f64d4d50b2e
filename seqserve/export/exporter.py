"""export_checkpoint: the graphs and the sidecar of one checkpoint (see seqserve.export)."""

from __future__ import annotations

import importlib.metadata as md
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

import seqserve
from seqserve.checkpoint import load_checkpoint
from seqserve.errors import SeqserveError
from seqserve.export.onnx_graphs import DEFAULTS, RECURRENT_DEFAULT, conform_dims, export_graph
from seqserve.export.sidecar import FORMAT, SIDECAR, ExportInfo, load_export
from seqserve.io import atomic_dir, write_json


@dataclass(frozen=True)
class ExportOptions:
    opset: int | None = None        # None: the family's default (gpt 23, recurrent 17)
    exporter: str | None = None     # "dynamo" | "torchscript"; None: the family's default


def export_checkpoint(checkpoint: str | Path, out: str | Path, options: ExportOptions = ExportOptions(),
                      progress=None) -> ExportInfo:
    ckpt = load_checkpoint(checkpoint)
    exporter, opset = DEFAULTS.get(ckpt.family, RECURRENT_DEFAULT)
    exporter, opset = options.exporter or exporter, options.opset or opset
    spec = ckpt.model.spec()
    src, dst = ckpt.path.resolve(), Path(out).resolve()
    if dst == src or src in dst.parents:
        raise SeqserveError(f"--out {out} is the checkpoint folder or inside it; export to a separate folder")
    with atomic_dir(out, SIDECAR) as tmp:
        for graph in spec.graphs.values():
            if progress:
                progress(f"exporting {graph.name} graph ({exporter}, opset {opset})")
            path = tmp / f"{graph.name}.onnx"
            try:
                export_graph(ckpt.model, graph, path, exporter, opset)
            except SeqserveError:
                raise
            except Exception as e:  # exporter internals: say which graph and how to change course
                text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()    # no terminal colour codes
                first = text.splitlines()[0] if text else type(e).__name__
                raise SeqserveError(f"exporting the {graph.name} graph with the {exporter} exporter "
                                    f"failed: {first} (try --exporter / --opset)") from None
            conform_dims(path, graph)
            onnx.checker.check_model(str(path), full_check=True)
        (tmp / "checkpoint").mkdir()
        for name in ("config.json", "tokenizer.json", "model.safetensors"):   # no optimizer state
            shutil.copy2(ckpt.path / name, tmp / "checkpoint" / name)
        write_json(tmp / SIDECAR, {
            "format": FORMAT,
            "task": spec.task,
            "family": ckpt.family,
            "spec": spec.to_json(),
            "tokenizer": ckpt.tokenizer.to_json(),
            "special_tokens": {"pad": ckpt.tokenizer.pad_id, "bos": ckpt.tokenizer.bos_id,
                               "eos": ckpt.tokenizer.eos_id},
            "graphs": {name: f"{name}.onnx" for name in spec.graphs},
            "model_config": ckpt.info["model"],
            "export_options": {"exporter": exporter, "opset": opset},
            "versions": {"seqserve": seqserve.__version__, **_versions("torch", "onnx", "onnxscript")},
            "training": ckpt.info.get("training", {}),
            # a handful of held-out inputs with the expected output (classify, tag, conditioned), from
            # training; causal-lm sidecars stay as they were (no key)
            **({"examples": ex} if (ex := (ckpt.info.get("training") or {}).get("examples")) else {}),
        })
    return load_export(out)


def _versions(*pkgs: str) -> dict[str, str]:
    out = {}
    for p in pkgs:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "not installed"
    return out

