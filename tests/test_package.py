"""Packaging an export as a Triton model repository: configs, strict parsing, ONNX agreement, versions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ALL_FAMILIES
from seqserve.errors import SeqserveError
from seqserve.export import load_export
from seqserve.package import (ModelConfig, PackageOptions, build_configs, check_against_onnx, list_versions,
                              load_version, package_export, parse_config, read_config, to_pbtxt)
from seqserve.package import repository as repo_module
from seqserve.tasks.spec import example_inputs
from tritonclient.grpc import model_config_pb2 as mc

from helpers import assert_one_line_error, hidden_leftovers, run, snapshot

KIND_GRAPH = {"full": "full", "step": "step", "generate": "step"}


def models_of(name: str) -> dict[str, str]:
    return {name: "full", f"{name}_step": "step", f"{name}_generate": "generate"}


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_written_models_parse_agree_and_load(exported, tmp_path, family):
    import onnxruntime as ort

    info = load_export(exported(family))
    written = package_export(exported(family), tmp_path / "repo")
    assert [(m.name, m.version, m.kind) for m in written] == [(n, 1, k) for n, k in models_of(family).items()]
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == sorted(models_of(family))
    for model, kind in models_of(family).items():
        folder = tmp_path / "repo" / model
        assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt"]
        assert sorted(p.name for p in (folder / "1").iterdir()) == ["model.onnx", "seqserve.json"]
        cfg = read_config(folder)
        assert cfg == parse_config((folder / "config.pbtxt").read_text(), "x")
        assert cfg.name == model
        graph = KIND_GRAPH[kind]
        assert check_against_onnx(cfg, folder / "1" / "model.onnx", info.graph(graph)) == []
        assert (folder / "1" / "model.onnx").read_bytes() == info.graph_path(graph).read_bytes()

        served = load_version(folder / "1")
        assert (served.kind, served.graph) == (kind, graph)
        assert served.model_path == folder / "1" / "model.onnx"
        assert served.info.spec == info.spec and served.info.tokenizer == info.tokenizer
        side = json.loads((folder / "1" / "seqserve.json").read_text())
        assert side["graphs"] == {graph: "model.onnx"} and side["serve"] == {"kind": kind, "graph": graph}
        assert {k: v for k, v in side.items() if k not in ("graphs", "serve", "package")} == \
               {k: v for k, v in info.raw.items() if k != "graphs"}
        # the group this version belongs to: one package id for the three models (crash-safe writes)
        assert side["package"]["models"] == list(models_of(family)) and side["package"]["version"] == 1

        # ONNX Runtime loads the written graph and runs it (batch 1, 3 tokens, empty past).
        sess = ort.InferenceSession(str(served.model_path), providers=["CPUExecutionProvider"])
        feeds = example_inputs(info.graph(graph), {"batch": 1, "sequence": 3}, np.random.default_rng(0))
        logits = sess.run(["logits"], feeds)[0]
        assert logits.shape == (1, 3, info.tokenizer.vocab_size)


@pytest.mark.parametrize("family", ["lstm", "gpt"])
def test_config_contents(exported, family):
    info = load_export(exported(family))
    cfgs = build_configs(info, "m", PackageOptions(max_batch_size=8, max_sequences=5,
                                                   sequence_idle_seconds=2.5, max_streams=3))
    assert list(cfgs) == ["m", "m_step", "m_generate"]
    vocab = info.tokenizer.vocab_size

    full = cfgs["m"]
    assert (full.platform, full.max_batch_size) == ("onnxruntime_onnx", 8)
    assert [(t.name, t.data_type, list(t.dims)) for t in full.input] == [("input_ids", mc.TYPE_INT64, [-1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in full.output] == [("logits", mc.TYPE_FP32, [-1, vocab])]
    assert full.HasField("dynamic_batching") and full.dynamic_batching.max_queue_delay_microseconds == 0
    assert [(g.count, g.kind) for g in full.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU)]
    assert full.version_policy.latest.num_versions == 1
    assert full.parameters["seqserve.kind"].string_value == "full"

    step = cfgs["m_step"]
    assert [t.name for t in step.input] == ["input_ids"]      # state and derived inputs are not sent
    assert [t.name for t in step.output] == ["logits"]
    sb = step.sequence_batching
    assert sb.max_sequence_idle_microseconds == 2_500_000
    assert sb.oldest.max_candidate_sequences == 5 and sb.oldest.max_queue_delay_microseconds == 0
    C = mc.ModelSequenceBatching.Control
    controls = {c.name: c.control[0] for c in sb.control_input}
    assert {n: c.kind for n, c in controls.items()} == {
        "START": C.CONTROL_SEQUENCE_START, "END": C.CONTROL_SEQUENCE_END,
        "READY": C.CONTROL_SEQUENCE_READY, "CORRID": C.CONTROL_SEQUENCE_CORRID}
    assert all(list(controls[n].int32_false_true) == [0, 1] for n in ("START", "END", "READY"))
    assert controls["CORRID"].data_type == mc.TYPE_UINT64
    assert [(s.input_name, s.output_name) for s in sb.state] == [(p.input, p.output) for p in info.spec.step.state]
    for s in sb.state:
        (init,) = s.initial_state
        assert init.zero_data and init.name == "zeros" and init.data_type == s.data_type == mc.TYPE_FP32
        assert list(init.dims) == [0 if d == -1 else d for d in s.dims]
    if family == "gpt":
        assert list(sb.state[0].dims) == [info.spec.extra["n_heads"], -1, info.spec.extra["head_dim"]]
        assert list(sb.state[0].initial_state[0].dims)[1] == 0     # the KV cache starts empty
        assert step.parameters["seqserve.derived_inputs"].string_value == "attention_mask,position_ids"
    else:
        assert list(sb.state[0].dims) == [info.spec.extra["num_layers"], info.spec.extra["hidden_size"]]
        assert "seqserve.derived_inputs" not in step.parameters
    assert step.parameters["seqserve.kind"].string_value == "step"

    gen = cfgs["m_generate"]
    assert (gen.backend, gen.max_batch_size, gen.model_transaction_policy.decoupled) == ("seqserve", 0, True)
    assert [(t.name, t.data_type, list(t.dims), t.optional) for t in gen.input] == [
        ("text_input", mc.TYPE_STRING, [1], False), ("max_tokens", mc.TYPE_INT32, [1], True),
        ("temperature", mc.TYPE_FP32, [1], True), ("top_k", mc.TYPE_INT32, [1], True),
        ("top_p", mc.TYPE_FP32, [1], True), ("seed", mc.TYPE_UINT64, [1], True),
        ("stop", mc.TYPE_STRING, [-1], True), ("beams", mc.TYPE_INT32, [1], True),
        ("length_penalty", mc.TYPE_FP32, [1], True)]
    assert [(t.name, t.data_type) for t in gen.output] == [("text_output", mc.TYPE_STRING),
                                                           ("finish_reason", mc.TYPE_STRING)]
    assert gen.parameters["seqserve.kind"].string_value == "generate"
    assert gen.parameters["seqserve.max_streams"].string_value == "3"

    # The text form spells out every control kind (START is proto3's default 0) and round-trips.
    text = to_pbtxt(step)
    assert "kind: CONTROL_SEQUENCE_START" in text
    assert parse_config(text, "x") == step


def _tamper(cfg: ModelConfig, how: str) -> ModelConfig:
    cfg = parse_config(to_pbtxt(cfg), "copy")
    if how == "dtype":
        cfg.input[0].data_type = mc.TYPE_INT32
    elif how == "renamed":
        cfg.input[0].name = "input_idz"
    elif how == "dims":
        cfg.output[0].dims[-1] += 1
    elif how == "state":
        del cfg.sequence_batching.state[-1]
    elif how == "derived":
        del cfg.parameters["seqserve.derived_inputs"]
    return cfg


@pytest.mark.parametrize("family,model,how,words", [
    ("lstm", "m", "dtype", ["input input_ids", "TYPE_INT32", "TYPE_INT64"]),
    ("lstm", "m_step", "renamed", ["input_idz is not an ONNX graph input", "ONNX graph input input_ids is fed by nothing"]),
    ("lstm", "m", "dims", ["output logits", "dims"]),
    ("lstm", "m_step", "state", ["past_cell", "fed by nothing", "no sequence_batching state"]),
    ("gpt", "m_step", "derived", ["attention_mask", "position_ids", "fed by nothing"]),
])
def test_tampered_config_is_caught(exported, family, model, how, words):
    info = load_export(exported(family))
    kind = "full" if model == "m" else "step"
    cfg = _tamper(build_configs(info, "m", PackageOptions())[model], how)
    problems = check_against_onnx(cfg, info.graph_path(kind), info.graph(kind))
    text = "; ".join(problems)
    for w in words:
        assert w in text, text


def test_generate_config_needs_the_step_graph(exported):
    info = load_export(exported("gru"))
    gen = build_configs(info, "m", PackageOptions())["m_generate"]
    assert check_against_onnx(gen, info.graph_path("step"), info.spec.step) == []
    problems = check_against_onnx(gen, info.graph_path("full"), info.spec.step)
    assert any("past_hidden is not an ONNX graph input" in p for p in problems), problems


@pytest.mark.parametrize("text,words", [
    ('name: "m"\nmax_batch_size: 4\nfrobnicate: 1\n', ["cfg.pbtxt:3:", "frobnicate"]),
    ('name: "m"\ninput { name: "x" data_type: TYPE_INT65 }\n', ["cfg.pbtxt:2:", "TYPE_INT65"]),
    ('name: "m"\ninput {\n', ["cfg.pbtxt:", "expected a Triton ModelConfig"]),
])
def test_parse_is_strict(text, words):
    with pytest.raises(SeqserveError) as e:
        parse_config(text, "cfg.pbtxt")
    for w in words:
        assert w in str(e.value)


def test_read_config_errors(tmp_path):
    with pytest.raises(SeqserveError, match="has no config.pbtxt"):
        read_config(tmp_path / "m")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "other"\n')
    with pytest.raises(SeqserveError, match="names model 'other' but its folder is 'm'"):
        read_config(tmp_path / "m")
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nunknown_field: 3\n')
    with pytest.raises(SeqserveError, match="unknown_field"):
        read_config(tmp_path / "m")


def test_load_version_refuses_a_plain_export(exported):
    with pytest.raises(SeqserveError, match="expected .*kind"):
        load_version(exported("rnn"))


def test_second_package_adds_a_version_and_keeps_the_first(exported, tmp_path):
    repo = tmp_path / "repo"
    package_export(exported("rnn"), repo, name="m")
    first = {m: snapshot(repo / m / "1") for m in models_of("m")}
    written = package_export(exported("rnn"), repo, name="m")
    assert {m.version for m in written} == {2}
    for m in models_of("m"):
        assert list_versions(repo / m) == [1, 2]
        assert snapshot(repo / m / "1") == first[m]
        assert hidden_leftovers(repo / m) == []
    # An explicit version that we wrote before is replaced; one the user made is not touched.
    assert {m.version for m in package_export(exported("rnn"), repo, name="m", version=1)} == {1}
    (repo / "m_step" / "7").mkdir()
    (repo / "m_step" / "7" / "notes.txt").write_text("mine")
    before = snapshot(repo)
    with pytest.raises(SeqserveError, match="refusing to replace"):
        package_export(exported("rnn"), repo, name="m", version=7)
    assert snapshot(repo) == before
    # Without --version the next one is above every model's newest (they stay in lockstep).
    assert {m.version for m in package_export(exported("rnn"), repo, name="m")} == {8}


@pytest.mark.parametrize("first,second,words", [
    ("gpt", "lstm", ["choose another --name"]),
    ("rnn", "gru", ["family rnn", "gru", "choose another --name"]),   # same tensors, other family
])
def test_another_family_under_an_existing_name_is_refused(exported, tmp_path, first, second, words):
    repo = tmp_path / "repo"
    package_export(exported(first), repo, name="m")
    before = snapshot(repo)
    with pytest.raises(SeqserveError) as e:
        package_export(exported(second), repo, name="m")
    for w in words:
        assert w in str(e.value)
    assert snapshot(repo) == before
    assert all(hidden_leftovers(repo / m) == [] for m in models_of("m"))
    assert hidden_leftovers(repo) == []


def test_failing_write_leaves_nothing_behind(exported, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    real, calls = repo_module._link_or_copy, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 3:                          # the third model's graph: disk full
            raise OSError(28, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(repo_module, "_link_or_copy", flaky)
    with pytest.raises(OSError):
        package_export(exported("gru"), repo, name="m")
    assert list(repo.iterdir()) == []               # not even an empty model folder

    monkeypatch.setattr(repo_module, "_link_or_copy", real)
    package_export(exported("gru"), repo, name="m")
    before = snapshot(repo)
    calls.clear()
    monkeypatch.setattr(repo_module, "_link_or_copy", flaky)
    with pytest.raises(OSError):
        package_export(exported("gru"), repo, name="m")
    assert snapshot(repo) == before                 # no version 2 in any of the three models
    assert hidden_leftovers(repo) == [] and all(hidden_leftovers(repo / m) == [] for m in models_of("m"))


def test_copy_when_hard_links_fail(exported, tmp_path, monkeypatch):
    import os

    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    package_export(exported("rnn"), tmp_path / "repo")
    model = tmp_path / "repo" / "rnn" / "1" / "model.onnx"
    assert model.stat().st_nlink == 1
    assert model.read_bytes() == load_export(exported("rnn")).graph_path("full").read_bytes()


def test_options_are_validated():
    for bad in (dict(max_batch_size=0), dict(max_sequences=-1), dict(max_streams=1.5),
                dict(sequence_idle_seconds=0), dict(sequence_idle_seconds=float("nan"))):
        with pytest.raises(SeqserveError, match="must be"):
            PackageOptions(**bad)


def test_cli_writes_the_table(exported, tmp_path):
    repo = tmp_path / "repo"
    res = run("package", exported("lstm"), "--repository", repo, "--name", "chars", "--max-batch-size", 4)
    assert res.exit_code == 0, res.output
    for word in ("chars", "chars_step", "chars_generate", "full", "step", "generate", "input_ids", "logits",
                 "text_output", "seqserve serve --repository"):
        assert word in res.output, res.output
    assert read_config(repo / "chars").max_batch_size == 4
    assert read_config(repo / "chars_step").max_batch_size == 4


def test_cli_errors_are_one_line(exported, tmp_path):
    repo = tmp_path / "repo"
    assert_one_line_error(run("package", exported("rnn"), "--repository", repo, "--name", "bad name"),
                          "bad name", "not a valid Triton model name")
    assert_one_line_error(run("package", tmp_path / "nowhere", "--repository", repo), "nowhere", "seqserve export")
    assert_one_line_error(run("package", exported("rnn"), "--repository", repo, "--max-sequences", 0),
                          "max sequences")
    assert_one_line_error(run("package", exported("rnn"), "--repository", repo, "--version", 0), "version")
    assert not repo.exists()
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run("package", exported("rnn"), "--repository", tmp_path / "file"), "is a file")


# ---- targets: triton-gpu (native onnxruntime backend) and triton-python (python backend) ------

@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("target", ["triton-gpu", "triton-python"])
def test_triton_targets_parse_strictly_and_agree_with_onnx(exported, tmp_path, family, target):
    info = load_export(exported(family))
    package_export(exported(family), tmp_path / "repo", options=PackageOptions(target=target))
    step_inputs = {t.name for t in info.graph("step").inputs}
    for model, kind in models_of(family).items():
        folder = tmp_path / "repo" / model
        cfg = read_config(folder)                      # strict protobuf parse
        assert cfg.parameters["seqserve.target"].string_value == target
        assert check_against_onnx(cfg, folder / "1" / "model.onnx", info.graph(KIND_GRAPH[kind])) == []
        python = target == "triton-python" or kind == "generate"
        assert (cfg.backend, cfg.platform) == (("python", "") if python else ("", "onnxruntime_onnx"))
        files = sorted(p.name for p in (folder / "1").iterdir())
        # triton-gpu: a rewritten graph for Triton's onnxruntime backend where the export's does not
        # fit it (gpt: START input, decomposed attention), named by default_model_filename
        backend = [cfg.default_model_filename] if cfg.default_model_filename else []
        assert files == (["model.onnx", "model.py", "seqserve.json"] if python
                         else sorted(["model.onnx", "seqserve.json"] + backend))
        if python:
            assert "from seqserve.triton.python_model import TritonPythonModel" in (folder / "1" / "model.py").read_text()
        gpu = mc.ModelInstanceGroup.KIND_GPU if target == "triton-gpu" else mc.ModelInstanceGroup.KIND_CPU
        assert [g.kind for g in cfg.instance_group] == [gpu]
        if target == "triton-gpu" and not python:
            assert [a.name for a in cfg.optimization.execution_accelerators.gpu_execution_accelerator] == ["cuda"]
        if kind != "step":
            continue
        pairs = {(p.input, p.output) for p in info.graph("step").state}
        states = {(s.input_name, s.output_name) for s in cfg.sequence_batching.state}
        if target == "triton-gpu":
            # implicit state carries every state pair; a new sequence starts from zeros / empty past
            assert states == pairs
            for s in cfg.sequence_batching.state:
                (init,) = s.initial_state
                # Triton core starts a state at its dims with -1 -> 1 (sequence_state.cc)
                assert init.zero_data and list(init.dims) == [1 if d == -1 else d for d in s.dims]
            # the client contract is the other targets': input_ids only (the backend's graph derives
            # attention_mask/position_ids itself; tests/test_triton_gpu.py replays it)
            assert {i.name for i in cfg.input} == {"input_ids"} and step_inputs >= {"input_ids"}
            growing = any(p.seq_axis is not None for p in info.graph("step").state)
            assert cfg.max_batch_size == (1 if growing else 16)
        else:
            assert states == set()          # the python backend ignores implicit state: the model keeps it
            assert {i.name for i in cfg.input} == {"input_ids"}


def test_retargeting_an_existing_model_is_refused(exported, tmp_path):
    package_export(exported("lstm"), tmp_path / "repo")
    with pytest.raises(SeqserveError, match="target"):
        package_export(exported("lstm"), tmp_path / "repo", options=PackageOptions(target="triton-python"))
    assert list_versions(tmp_path / "repo" / "lstm") == [1]


def test_unknown_target_is_refused():
    with pytest.raises(SeqserveError, match="unknown target 'triton'.*triton-gpu"):
        PackageOptions(target="triton")
