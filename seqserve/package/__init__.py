"""Package an export as a Triton model repository (see DESIGN.md, "Packaging").

    DIR/NAME/config.pbtxt             full graph, dynamic batching
    DIR/NAME_step/config.pbtxt        step graph, sequence batching with implicit state
    DIR/NAME_generate/config.pbtxt    decoupled text generation over the step graph
    DIR/NAME_step_state/config.pbtxt  (--stateless-step) step graph, dynamic batching, state in/out
    DIR/<model>/<N>/model.onnx        the graph (hard link to the export's file, or a copy)
    DIR/<model>/<N>/seqserve.json     the export sidecar, graphs -> model.onnx, plus "serve" and
                                      "package" (the group a version belongs to; see repository.py)
"""

from seqserve.package.repository import (CONFIG, MODEL_FILE, PYTHON_MODEL, PackagedModel, ServedVersion, list_versions,
                                         load_resolved, load_version, package_export, pending_versions, read_config,
                                         recover_repository, resolve_version, resolve_versions, served_sidecar)
from seqserve.package.triton_config import (KIND_GRAPH, KINDS, TARGETS, ModelConfig,
                                            PackageOptions, build_configs, check_against_onnx, check_model_name,
                                            derived_inputs, keeps_own_state, kind_of, model_names, runner_of,
                                            onnx_signature, parse_config, state_pairs, target_of, to_pbtxt)

__all__ = [
    "CONFIG", "KINDS", "KIND_GRAPH", "MODEL_FILE", "PYTHON_MODEL", "TARGETS", "ModelConfig",
    "PackageOptions", "keeps_own_state", "target_of",
    "PackagedModel", "ServedVersion", "build_configs", "check_against_onnx", "check_model_name",
    "derived_inputs", "kind_of", "list_versions", "load_resolved", "load_version", "model_names", "onnx_signature",
    "package_export", "parse_config", "runner_of", "pending_versions", "read_config", "recover_repository",
    "resolve_version", "resolve_versions", "served_sidecar", "state_pairs", "to_pbtxt",
]
