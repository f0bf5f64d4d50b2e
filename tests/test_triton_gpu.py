"""`--target triton-gpu` against Triton's onnxruntime backend (r25.12, ORT 1.23.2), without Triton.

- The replay: every graph of a triton-gpu repository run on CPU ONNX Runtime exactly as Triton
  feeds it (tests/triton_replay.py, seqserve.triton.onnxruntime_backend.SequenceModel), every
  response compared with the in-process reference, for lstm, gru and gpt.
- One test per load rule of the backend (seqserve.triton.onnxruntime_backend), each from the
  backend's own message, by breaking a good config the way the rule forbids.
- `seqserve package` refuses, and `validate --repository` fails, what the backend would refuse.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2 as mc

from seqserve.errors import SeqserveError
from seqserve.export import load_export
from seqserve.package import PackageOptions, package_export, parse_config, read_config, to_pbtxt
from seqserve.package import repository as repo_module
from seqserve.package.triton_gpu_graphs import BACKEND_GRAPH, START
from seqserve.triton.onnxruntime_backend import BackendError, SequenceModel, check_config
from seqserve.validate.repository import validate_repository
from triton_replay import TOLERANCE, replay_full_model, replay_step_model

FAMILIES = ("rnn", "lstm", "gru", "gpt")     # every causal-lm family
C = mc.ModelSequenceBatching.Control


@pytest.fixture(scope="module")
def repo(served_repo):
    return served_repo(*FAMILIES, target="triton-gpu")


def _copy(cfg):
    return parse_config(to_pbtxt(cfg), "copy")


def _graph(repo, model):
    cfg = read_config(repo / model)
    return cfg, repo / model / "1" / (cfg.default_model_filename or "model.onnx")


# ---- the replay ----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_sequences_replayed_as_triton_feeds_them_match_the_reference(repo, family):
    r = replay_step_model(repo / f"{family}_step")
    assert r["max_diff"] <= TOLERANCE, r
    if family == "gpt":     # KV cache: one sequence per execution
        assert r["executions"] == r["requests"] and r["max_rows"] == 1
    else:                   # recurrent: sequences share executions, their states stacked
        assert r["max_rows"] > 1 and r["executions"] < r["requests"], r


@pytest.mark.parametrize("family", FAMILIES)
def test_full_model_replayed_with_dynamic_batching_matches_the_reference(repo, family):
    r = replay_full_model(repo / family)
    assert r["max_diff"] <= TOLERANCE and r["executions"] == 2, r


def test_the_pre_fix_step_configs_fail_the_replay(repo):
    """The configs the package writer wrote before this fix (all four controls; a KV cache that
    starts empty; mask/positions from the client) fail exactly as Triton would."""
    cfg, graph = read_config(repo / "lstm_step"), repo / "lstm_step" / "1" / "model.onnx"
    old = _copy(cfg)
    for name, kind in (("END", C.CONTROL_SEQUENCE_END), ("READY", C.CONTROL_SEQUENCE_READY)):
        old.sequence_batching.control_input.add(name=name).control.add(kind=kind, int32_false_true=[0, 1])
    with pytest.raises(BackendError, match="configuration specified sequence control 'END', but model does "
                                           "not provide that input"):
        SequenceModel(old, graph)
    with pytest.raises(BackendError, match="Invalid input name: (END|READY)"):
        SequenceModel(old, graph, strict=False).infer({"input_ids": np.ones((1, 2), np.int64)}, 7, start=True)

    cfg, graph = _graph(repo, "gpt_step")
    old = _copy(cfg)
    for s in old.sequence_batching.state:
        s.initial_state[0].dims[1] = 0
    with pytest.raises(BackendError, match=r"initial_state dims \[4,0,16\] hold 0 elements.*not enough space"):
        SequenceModel(old, graph)
    with pytest.raises(BackendError, match="not enough space: expected 256, got 0"):
        SequenceModel(old, graph, strict=False).infer({"input_ids": np.ones((1, 2), np.int64)}, 7, start=True)


# ---- what the package writes ---------------------------------------------------------------------

def test_clients_send_input_ids_and_sequence_controls_only(repo, exported):
    for family in FAMILIES:
        info = load_export(exported(family))
        step = read_config(repo / f"{family}_step")
        assert [i.name for i in step.input] == ["input_ids"]
        controls = [(c.name, [k.kind for k in c.control]) for c in step.sequence_batching.control_input]
        growing = family == "gpt"
        assert controls == ([("START", [C.CONTROL_SEQUENCE_START])] if growing else [])
        assert step.max_batch_size == (1 if growing else 16)
        for s in step.sequence_batching.state:
            assert list(s.initial_state[0].dims) == [1 if d == -1 else d for d in s.dims]
        # model.onnx stays the export's graph (seqserve serve runs it from the same repository)
        for model, graph in ((family, "full"), (f"{family}_step", "step")):
            assert (repo / model / "1" / "model.onnx").read_bytes() == info.graph_path(graph).read_bytes()


def test_gpt_backend_graphs_take_start_and_have_no_cpu_only_attention(repo):
    for model, want_inputs in (("gpt", ["input_ids"]),
                               ("gpt_step", ["input_ids", START] + [f"past_key_values.{i}.{kv}" for i in range(2)
                                                                    for kv in ("key", "value")])):
        cfg, path = _graph(repo, model)
        assert cfg.default_model_filename == BACKEND_GRAPH and path.is_file()
        g = onnx.load(str(path)).graph
        assert [i.name for i in g.input] == want_inputs
        assert not [n for n in g.node if n.op_type == "Attention"]      # no CUDA kernel in ORT 1.23
        assert "Attention" in cfg.parameters["seqserve.backend_graph"].string_value
    for model in ("lstm", "lstm_step", "gru_step"):
        assert not read_config(repo / model).default_model_filename


def test_every_triton_gpu_model_passes_the_backend_rules(repo):
    for model in sorted(p.name for p in repo.iterdir() if not p.name.endswith("_generate")):
        cfg, path = _graph(repo, model)
        assert check_config(cfg, path) == [], model
    report = validate_repository(repo)
    assert report.passed, [r for r in report.checks if not r.passed]


# ---- one test per backend rule -------------------------------------------------------------------

def _problems(repo, model, tamper) -> str:
    cfg, path = _graph(repo, model)
    cfg = _copy(cfg)
    tamper(cfg)
    return "; ".join(check_config(cfg, path))


def test_rule_controls_are_graph_inputs_with_dims_1_and_the_configured_type(repo):
    def add_end(cfg):
        cfg.sequence_batching.control_input.add(name="END").control.add(kind=C.CONTROL_SEQUENCE_END,
                                                                       int32_false_true=[0, 1])
    assert "configuration specified sequence control 'END', but model does not provide that input" \
        in _problems(repo, "gru_step", add_end)

    def fp32_start(cfg):
        c = cfg.sequence_batching.control_input[0].control[0]
        del c.int32_false_true[:]
        c.fp32_false_true.extend([0.0, 1.0])
    assert "sequence control 'START', the model expects data-type TYPE_INT32 but the model configuration " \
           "specifies data-type TYPE_FP32" in _problems(repo, "gpt_step", fp32_start)

    def start_on_input_ids(cfg):
        cfg.sequence_batching.control_input[0].name = "input_ids"
    assert "sequence control 'input_ids' in model has dims [-1] but dims [1] is expected" \
        in _problems(repo, "gpt_step", start_on_input_ids)

    def two_kinds(cfg):
        c = cfg.sequence_batching.control_input[0].control[0]
        c.fp32_false_true.extend([0.0, 1.0])
    assert "specifies more than one from 'int32_false_true', 'fp32_false_true' and 'bool_false_true'" \
        in _problems(repo, "gpt_step", two_kinds)


def test_rule_config_inputs_controls_and_states_count_the_graph_inputs(repo):
    def drop_state(cfg):
        del cfg.sequence_batching.state[-1]
    assert "configuration expects 2 inputs, model provides 3" in _problems(repo, "lstm_step", drop_state)

    def drop_start(cfg):
        del cfg.sequence_batching.control_input[:]
    assert "configuration expects 5 inputs, model provides 6" in _problems(repo, "gpt_step", drop_start)


def test_rule_config_inputs_match_graph_inputs(repo):
    def renamed(cfg):
        cfg.input[0].name = "input_idz"
    assert "unexpected inference input 'input_idz', allowed inputs are: input_ids" in _problems(repo, "lstm", renamed)

    def int32(cfg):
        cfg.input[0].data_type = mc.TYPE_INT32
    assert "configuration expects datatype TYPE_INT32 for input 'input_ids', model provides TYPE_INT64" \
        in _problems(repo, "lstm", int32)

    def rank(cfg):
        cfg.input[0].dims.append(5)
    assert "tensor 'input_ids': the model expects 2 dimensions (shape [-1,-1]) but the model configuration " \
           "specifies 3 dimensions" in _problems(repo, "gru", rank)

    def optional(cfg):
        cfg.input[0].optional = True
    assert "optional input 'input_ids' is not supported for models that support batching" \
        in _problems(repo, "gru", optional)


def test_rule_config_outputs_match_graph_outputs_exactly(repo):
    def vocab(cfg):
        cfg.output[0].dims[-1] += 1
    assert "tensor 'logits': the model expects 3 dimensions" in _problems(repo, "gpt", vocab)

    def renamed(cfg):
        cfg.output[0].name = "scores"
    assert "unexpected inference output 'scores', allowed outputs are: logits" in _problems(repo, "gpt", renamed)

    def fp16(cfg):
        cfg.output[0].data_type = mc.TYPE_FP16
    assert "configuration expects datatype TYPE_FP16 for output 'logits', model provides TYPE_FP32" \
        in _problems(repo, "lstm", fp16)


def test_rule_states_are_graph_inputs_and_outputs_of_their_type(repo):
    def out_name(cfg):
        cfg.sequence_batching.state[0].output_name = "present_hidn"
    assert "unexpected inference output 'present_hidn'" in _problems(repo, "lstm_step", out_name)

    def fp16(cfg):
        s = cfg.sequence_batching.state[0]
        s.data_type = s.initial_state[0].data_type = mc.TYPE_FP16
    assert "configuration expects datatype TYPE_FP16 for output state 'present_hidden', model provides TYPE_FP32" \
        in _problems(repo, "gru_step", fp16)

    def dims(cfg):
        cfg.sequence_batching.state[0].dims[-1] += 1
        cfg.sequence_batching.state[0].initial_state[0].dims[-1] += 1
    assert "tensor 'past_hidden': the model expects 3 dimensions" in _problems(repo, "gru_step", dims)


def test_rule_initial_state_is_what_triton_core_starts_a_sequence_with(repo):
    def empty_past(cfg):                       # the pre-fix config
        cfg.sequence_batching.state[0].initial_state[0].dims[1] = 0
    text = _problems(repo, "gpt_step", empty_past)
    assert "a new sequence's state has shape [1,4,1,16]" in text and "not enough space" in text

    def variable(cfg):
        cfg.sequence_batching.state[0].initial_state[0].dims[1] = -1
    assert "'initial_state' field for state input name 'past_key_values.0.key' contains variable dimensions" \
        in _problems(repo, "gpt_step", variable)

    def none(cfg):
        del cfg.sequence_batching.state[0].initial_state[:]
    assert "uninitialized memory" in _problems(repo, "lstm_step", none)

    def two(cfg):
        s = cfg.sequence_batching.state[0]
        s.initial_state.add().CopyFrom(s.initial_state[0])
    assert "must contain exactly one or zero element. Found '2' elements." in _problems(repo, "lstm_step", two)

    def other_type(cfg):
        cfg.sequence_batching.state[0].initial_state[0].data_type = mc.TYPE_FP64
    assert "The data type used for 'initial_state' field of state 'past_hidden' does not match" \
        in _problems(repo, "lstm_step", other_type)

    def wrong_dim(cfg):
        cfg.sequence_batching.state[0].initial_state[0].dims[0] += 1
    assert "'initial_state' dim for input name 'past_hidden' doesn't match 'state' dim description" \
        in _problems(repo, "lstm_step", wrong_dim)


def test_rule_max_batch_size_vs_batch_axes(repo, tmp_path):
    def batch_kv(cfg):
        cfg.max_batch_size = 4
    assert "the onnxruntime backend stacks a batch's states as one buffer" in _problems(repo, "gpt_step", batch_kv)

    def unbatched(cfg):
        cfg.max_batch_size = 0
    assert "tensor 'input_ids': the model expects 2 dimensions (shape [-1,-1]) but the model configuration " \
           "specifies 1 dimensions (shape [-1])" in _problems(repo, "lstm", unbatched)

    # a graph with a fixed first axis cannot be served with max_batch_size > 0
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    cfg = mc.ModelConfig(name="fixed", platform="onnxruntime_onnx", max_batch_size=4)
    cfg.input.add(name="x", data_type=mc.TYPE_FP32, dims=[3])
    cfg.output.add(name="y", data_type=mc.TYPE_FP32, dims=[3])
    text = "; ".join(check_config(cfg, model.SerializeToString()))
    assert "for the model to support batching the shape should have at least 1 dimension and the first " \
           "dimension must be -1; but shape expected by the model is [2,3]" in text
    assert "model does not support batching while non-zero max_batch_size is specified" in text


def test_rule_execution_accelerators_and_backend_parameters(repo):
    def tensorrt_typo(cfg):
        cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].name = "cudnn"
    assert "unknown Execution Accelerator 'cudnn' is requested" in _problems(repo, "gpt", tensorrt_typo)

    def arena(cfg):
        cfg.parameters["arena_extend_strategy"].string_value = "kSameAsRequested"
    assert "unsupported arena_extend_strategy value 'kSameAsRequested'" in _problems(repo, "lstm", arena)


# ---- applied by package and validate -------------------------------------------------------------

def test_package_refuses_what_the_backend_would_not_load(exported, tmp_path, monkeypatch):
    real = repo_module.build_configs

    def with_end_control(info, name, options):
        cfgs = real(info, name, options)
        cfgs[f"{name}_step"].sequence_batching.control_input.add(name="END").control.add(
            kind=C.CONTROL_SEQUENCE_END, int32_false_true=[0, 1])
        return cfgs

    monkeypatch.setattr(repo_module, "build_configs", with_end_control)
    with pytest.raises(SeqserveError, match="Triton's onnxruntime backend would refuse it: configuration "
                                            "specified sequence control 'END'"):
        package_export(exported("gru"), tmp_path / "repo", options=PackageOptions(target="triton-gpu"))
    assert not (tmp_path / "repo" / "gru_step").exists()


def test_validate_repository_applies_the_backend_rules(repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    cfg_path = copy / "lstm_step" / "config.pbtxt"
    cfg = read_config(copy / "lstm_step")
    cfg.sequence_batching.control_input.add(name="START").control.add(kind=C.CONTROL_SEQUENCE_START,
                                                                     int32_false_true=[0, 1])
    cfg_path.write_text(to_pbtxt(cfg))
    (copy / "gpt_step" / "1" / BACKEND_GRAPH).unlink()
    full = copy / "gpt" / "1" / BACKEND_GRAPH
    data = full.read_bytes()
    full.unlink()
    full.write_bytes(data[: len(data) // 2])                   # truncated
    report = validate_repository(copy)
    failed = {r.graph: r.detail for r in report.checks if not r.passed}
    assert "configuration specified sequence control 'START', but model does not provide that input" \
        in failed["lstm_step/1"]
    assert f"{BACKEND_GRAPH} (the config's default_model_filename" in failed["gpt_step/1"]
    assert "cannot read the model's graph" in failed["gpt/1"]
    assert not report.passed


def test_package_says_what_triton_loads_and_why(exported, tmp_path):
    from helpers import run

    res = run("package", exported("gpt"), "--repository", tmp_path / "repo", "--target", "triton-gpu")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert f"gpt_step: Triton loads {BACKEND_GRAPH}" in out and "CPU-only" in out and "START" in out


# ---- Triton's CUDA memory pool -------------------------------------------------------------------

def test_implicit_state_bytes_at_full_context(repo, exported):
    from seqserve.triton.onnxruntime_backend import implicit_state_bytes, repository_state_bytes

    extra = load_export(exported("gpt")).spec.extra
    kv = 2 * extra["n_layers"] * extra["n_heads"] * extra["head_dim"] * extra["max_seq_len"] * 4
    cfg = read_config(repo / "gpt_step")
    assert implicit_state_bytes(cfg, extra["max_seq_len"]) == 2 * kv * 64
    sizes = repository_state_bytes(repo)
    assert set(sizes) == {f"{f}_step" for f in FAMILIES} and sizes["gpt_step"] == 2 * kv * 64
    assert implicit_state_bytes(read_config(repo / "gpt"), 256) == 0


def test_compose_sizes_the_cuda_memory_pool_for_gpt_small_sequences():
    """Triton's CUDA pool defaults to 64 MB; past it implicit state falls back to pinned host
    memory. The compose file's default covers 64 sequences of the gpt "small" preset at full
    context (the package's default max_sequences)."""
    import re
    from pathlib import Path

    import yaml

    from seqserve.models import FAMILIES

    compose = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())
    flags = [c for c in compose["services"]["triton"]["command"] if c.startswith("--cuda-memory-pool-byte-size=")]
    assert len(flags) == 1, compose["services"]["triton"]["command"]
    value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", flags[0].split("=", 1)[1])
    device, size = value.split(":")
    small = FAMILIES["gpt"].presets["small"]
    kv = 2 * small["n_layers"] * small["d_model"] * small["max_seq_len"] * 4
    assert device == "0" and int(size) >= 2 * kv * PackageOptions().max_sequences


def test_seqserve_serve_and_triton_answer_alike_on_one_triton_gpu_repository(repo):
    """docker-compose runs both servers on the same repository: seqserve's step models (export's
    model.onnx, state kept by seqserve) and Triton's (the backend's graph, implicit state) give the
    same logits for the same client requests."""
    import asyncio

    from seqserve.serve.repository import ModelRepository
    from seqserve.serve.types import InferRequest

    async def main():
        served = ModelRepository(repo)
        served.load_all(["gpt_step", "gru_step"])
        try:
            for model in ("gpt_step", "gru_step"):
                triton = SequenceModel.from_folder(repo / model)
                chunks = [[5, 6, 7], [8], [9, 10], [11]]
                for i, ids in enumerate(chunks):
                    a = np.array([ids], np.int64)
                    start, end = i == 0, i == len(chunks) - 1
                    r = await served.get(model).infer(InferRequest(
                        model=model, inputs={"input_ids": a},
                        parameters={"sequence_id": 7, "sequence_start": start, "sequence_end": end}))
                    t = triton.infer({"input_ids": a}, 7, start=start, end=end)
                    assert np.abs(r.outputs["logits"] - t["logits"]).max() <= TOLERANCE, (model, i)
        finally:
            served.close()

    asyncio.run(main())
