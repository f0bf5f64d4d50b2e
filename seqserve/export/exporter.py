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
from seqserve.export.static_cache import parse_kv_cache, rewrite_static_cache
from seqserve.io import atomic_dir, write_json
from seqserve.tasks.causal_lm import in_place_spec
from seqserve.tasks.spec import STEP


@dataclass(frozen=True)
class ExportOptions:
    opset: int | None = None        # None: the family's default (gpt 23, recurrent 17)
    exporter: str | None = None     # "dynamo" | "torchscript"; None: the family's default
    kv_cache: str = "concat"        # "concat" | "static[:N]": gpt step graph on an in-place buffer (static_cache.py)
    quantize: str | None = None     # "int8" | "int8-block": quantized graphs beside the fp32 ones (export/quantize.py)


def export_checkpoint(checkpoint: str | Path, out: str | Path, options: ExportOptions = ExportOptions(),
                      progress=None) -> ExportInfo:
    ckpt = load_checkpoint(checkpoint)
    src, dst = ckpt.path.resolve(), Path(out).resolve()
    if dst == src or src in dst.parents:
        raise SeqserveError(f"--out {out} is the checkpoint folder or inside it; export to a separate folder")

    def ship(tmp: Path) -> None:
        (tmp / "checkpoint").mkdir()
        for name in ("config.json", "tokenizer.json", "model.safetensors"):   # no optimizer state
            shutil.copy2(ckpt.path / name, tmp / "checkpoint" / name)

    training = ckpt.info.get("training", {})
    return export_model(ckpt.model, out, ckpt.tokenizer, ckpt.family, {
        "model_config": ckpt.info["model"],
        "training": training,
        # a handful of held-out inputs with the expected output (classify, tag, conditioned), from
        # training; causal-lm sidecars stay as they were (no key)
        **({"examples": ex} if (ex := (training or {}).get("examples")) else {}),
    }, ship, options, progress)


def export_model(model, out: str | Path, tokenizer, family: str, fields: dict, ship, options: ExportOptions,
                 progress=None) -> ExportInfo:
    """Every graph of `model`'s task (the model interface: seqserve/adapters/protocol.py) to ONNX,
    checked against the spec, and the sidecar (the common fields + `fields`); `ship(tmp)` adds
    what the torch side needs later (a checkpoint copy, a brought module's weights). One atomic
    write: a failure leaves whatever was at `out` untouched."""
    exporter, opset = getattr(model, "export_with", None) or DEFAULTS.get(family, RECURRENT_DEFAULT)
    exporter, opset = options.exporter or exporter, options.opset or opset
    spec = model.spec()
    kv_length = parse_kv_cache(options.kv_cache, spec)
    exported = in_place_spec(spec, kv_length) if kv_length else spec    # what the files and sidecar are
    if options.quantize:
        from seqserve.export.quantize import check_method

        check_method(options.quantize, spec.task)
    with atomic_dir(out, SIDECAR) as tmp:
        for graph in spec.graphs.values():
            if progress:
                progress(f"exporting {graph.name} graph ({exporter}, opset {opset})")
            path = tmp / f"{graph.name}.onnx"
            try:
                export_graph(model, graph, path, exporter, opset)
            except SeqserveError:
                raise
            except Exception as e:  # exporter internals: say which graph and how to change course
                text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()    # no terminal colour codes
                first = text.splitlines()[0] if text else type(e).__name__
                raise SeqserveError(f"exporting the {graph.name} graph with the {exporter} exporter "
                                    f"failed: {first} (try --exporter / --opset)") from None
            if kv_length and graph.runs == STEP:
                if progress:
                    progress(f"rewriting the {graph.name} graph for an in-place KV cache of {kv_length} positions")
                try:
                    rewrite_static_cache(path, graph, exported.graph(graph.name), kv_length)
                except ValueError as e:
                    raise SeqserveError(f"--kv-cache static: {e}") from None
            conform_dims(path, exported.graph(graph.name))
            onnx.checker.check_model(str(path), full_check=True)
        quantized = {}
        if options.quantize:      # after the fp32 graphs passed conform_dims + checker; they stay
            from seqserve.export.quantize import quantize_export

            quantized = quantize_export(tmp, spec, options.quantize, fields.get("training"), tokenizer, progress)
        ship(tmp)
        write_json(tmp / SIDECAR, {
            "format": FORMAT,
            "task": spec.task,
            "family": family,
            "spec": exported.to_json(),
            "tokenizer": tokenizer.to_json(),
            "special_tokens": {"pad": tokenizer.pad_id, "bos": tokenizer.bos_id, "eos": tokenizer.eos_id},
            "graphs": {name: f"{name}.onnx" for name in spec.graphs},
            "export_options": {"exporter": exporter, "opset": opset,
                               **({"kv_cache": f"static:{kv_length}"} if kv_length else {}),
                               **({"quantize": options.quantize} if options.quantize else {})},
            "versions": {"seqserve": seqserve.__version__, **_versions("torch", "onnx", "onnxscript")},
            **fields,
            **quantized,
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

