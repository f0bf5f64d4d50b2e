"""The classify and tag tasks through the whole chain: train (tiny, 30 steps) -> export -> validate
-> ORT == torch -> package (every target) -> `seqserve serve` and the real tritonserver (python
backend) -> tritonclient outputs == in-process ONNX Runtime; Triton's classification extension
(class_count) on both servers; bad input is a clear 4xx / INVALID_ARGUMENT.

FAMILY_FACTS is what tests/test_registry.py checks: a registered family of a task other than
causal-lm needs an entry in a tests/test_task_*.py module.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from seqserve.models import build_model, make_config

FAMILY_FACTS = {
    "classifier": {"task": "classify", "output": "class_logits", "stream_encoders": ("rnn", "lstm", "gru")},
    "tagger": {"task": "tag", "output": "tag_logits", "stream_encoders": ("rnn", "lstm", "gru")},
}
# (family, encoder) trained and exported once per session; the first two go through the servers.
CASES = [("classifier", "lstm"), ("tagger", "transformer"), ("classifier", "transformer"), ("tagger", "gru")]
TINY = dict(preset="tiny", steps=30, eval_every=15, eval_batches=2, batch_size=8, seq_len=32,
            max_corpus_bytes=200_000)


@pytest.fixture(scope="session")
def labelled(tmp_path_factory):
    """(family, encoder) -> export folder (trained on demand, once)."""
    from seqserve.export import export_checkpoint
    from seqserve.training import TrainConfig, train

    root, done = tmp_path_factory.mktemp("labelled"), {}

    def make(family: str, encoder: str):
        if (family, encoder) not in done:
            ckpt = root / f"{family}-{encoder}"
            train(TrainConfig(family=family, model_overrides={"encoder": encoder}, **TINY), ckpt)
            done[family, encoder] = export_checkpoint(ckpt, root / f"{family}-{encoder}-onnx").path
        return done[family, encoder]
    return make


# ---- model ------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(FAMILY_FACTS))
@pytest.mark.parametrize("encoder", ["rnn", "lstm", "gru", "transformer"])
def test_step_chunks_equal_the_full_sequence_and_streaming_encoders_have_a_step_graph(family, encoder):
    import torch

    m = build_model(family, make_config(family, "tiny", 30, encoder=encoder, labels=("a", "b", "c")))
    ids = torch.randint(0, 30, (2, 9))
    full = m(ids)
    streams = encoder in FAMILY_FACTS[family]["stream_encoders"]
    assert list(m.spec().graphs) == (["full", "step"] if streams else ["full"])
    assert m.spec().task == FAMILY_FACTS[family]["task"] and m.spec().io["labels"] == ["a", "b", "c"]
    assert full.shape == ((2, 3) if family == "classifier" else (2, 9, 3))
    if streams:
        s = m.initial_state(2)
        a, s = m.step(ids[:, :4], s)
        b, s = m.step(ids[:, 4:], s)
        got = b if family == "classifier" else torch.cat([a, b], 1)
        assert torch.allclose(got, full, atol=1e-5)


def test_presets_and_bad_configs():
    from seqserve.errors import SeqserveError

    for family in FAMILY_FACTS:
        sizes = [sum(p.numel() for p in build_model(family, make_config(family, pr, 40)).parameters())
                 for pr in ("tiny", "small")]
        assert sizes[0] < sizes[1]
    with pytest.raises(SeqserveError, match="encoder must be one of"):
        make_config("classifier", "tiny", 40, encoder="cnn")
    with pytest.raises(SeqserveError, match="bidirectional applies to a recurrent tagger"):
        make_config("classifier", "tiny", 40, bidirectional=True)
    tagger = build_model("tagger", make_config("tagger", "tiny", 40, bidirectional=True))
    assert list(tagger.spec().graphs) == ["full"]           # reads both ways: full graph only


def test_tokenize_tags_cover_every_character():
    from seqserve.data.labelled import TAGS, char_tags

    src = "def f(x):\n    return x + 1  # one\n"
    tags = "".join(TAGS[i][0] for i in char_tags(src))
    assert tags == "kkksnonoossssskkkkkksnsosnsscccccs"   # def f(x):\n    return x + 1  # one\n


# ---- export, validate, torch == ORT ----------------------------------------------------------

@pytest.mark.parametrize("family, encoder", CASES[:2] + [pytest.param(*c, marks=pytest.mark.slow) for c in CASES[2:]])
def test_export_validates_and_ort_equals_torch(labelled, family, encoder):
    from seqserve.export import load_export
    from seqserve.runtime import OrtBackend
    from seqserve.runtime.torch_backend import TorchBackend
    from seqserve.validate import validate_export

    path = labelled(family, encoder)
    report = validate_export(path)
    assert report.passed, [r for r in report.checks if not r.passed]
    checks = report.summary()
    assert "greedy_generation" not in checks
    assert ("incremental_vs_full" in checks) == (encoder != "transformer")
    info = load_export(path)
    assert len(info.raw["examples"]) >= 3 and info.spec.io["labels"]
    ids = np.array([info.tokenizer.encode(info.raw["examples"][0]["input"])], np.int64)
    out = FAMILY_FACTS[family]["output"]
    a = OrtBackend(info, "full").run({"input_ids": ids})[out]
    b = TorchBackend.from_export(info, "full").run({"input_ids": ids})[out]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_classify_cli_prints_labels_the_same_with_ort_and_torch(labelled):
    from helpers import run

    from seqserve.export import load_export

    path = labelled("classifier", "lstm")
    text = load_export(path).raw["examples"][0]["input"]
    res = {b: run("classify", path, "--text", text, "--backend", b, "--top", "3") for b in ("ort", "torch")}
    assert res["ort"].exit_code == 0, res["ort"].output
    assert res["ort"].output.splitlines()[:4] == res["torch"].output.splitlines()[:4]
    bad = run("classify", path, "--text", "\u2603 snowman")
    assert bad.exit_code == 2 and "outside the model's vocabulary" in bad.output
    gen = run("generate", path, "--prompt", "def ")
    assert gen.exit_code == 2 and "does not generate text" in gen.output and "Traceback" not in gen.output


# ---- packaging and serving ----------------------------------------------------------------------

def _repo(labelled, root, target: str):
    from seqserve.package import PackageOptions, package_export

    for family, encoder in CASES[:2]:
        package_export(labelled(family, encoder), root, family, options=PackageOptions(target=target))
    # a streaming tagger: NAME_step returns the tag scores of each chunk
    package_export(labelled("tagger", "gru"), root, "tagger_gru", options=PackageOptions(target=target))
    return root


@pytest.mark.parametrize("target", ["seqserve", "triton-gpu", "triton-python"])
def test_package_writes_the_scoring_models_and_the_label_file(labelled, tmp_path, target):
    from seqserve.export import load_export

    root = _repo(labelled, tmp_path / "repo", target)
    assert sorted(p.name for p in root.iterdir()) == ["classifier", "classifier_classify", "classifier_step", "tagger",
                                                      "tagger_classify", "tagger_gru", "tagger_gru_classify",
                                                      "tagger_gru_step"]
    labels = load_export(labelled("classifier", "lstm")).spec.io["labels"]
    assert (root / "classifier" / "labels.txt").read_text().splitlines() == labels
    assert 'label_filename: "labels.txt"' in (root / "classifier" / "config.pbtxt").read_text()
    from seqserve.validate.repository import validate_repository

    report = validate_repository(root)     # configs == ONNX, the onnxruntime backend's rules, every graph runs
    assert report.passed, [r for r in report.checks if not r.passed]


def _infer(server, model, ids, proto, class_count=None, output="class_logits"):
    mod = th if proto == "http" else tg
    c = mod.InferenceServerClient(server.http_address if proto == "http" else server.grpc_address)
    i = mod.InferInput("input_ids", list(ids.shape), "INT64")
    i.set_data_from_numpy(ids)
    kw = {} if class_count is None else {"class_count": class_count}
    return c.infer(model, [i], outputs=[mod.InferRequestedOutput(output, **kw)]).as_numpy(output)


def _step(server, model, sid, chunks, output="class_logits"):
    c = tg.InferenceServerClient(server.grpc_address)
    out = []
    for k, chunk in enumerate(chunks):
        i = tg.InferInput("input_ids", [1, len(chunk)], "INT64")
        i.set_data_from_numpy(np.array([chunk], np.int64))
        r = c.infer(model, [i], sequence_id=sid, sequence_start=k == 0, sequence_end=k == len(chunks) - 1)
        out.append(r.as_numpy(output)[0])
    return np.stack(out) if output == "class_logits" else np.concatenate(out)


def _check_server(server, labelled, triton: bool):
    """What both servers must answer alike: raw scores == ORT, top-K strings, the stateful
    classifier, and clear errors. Real tritonserver's core implements the classification extension
    (the python backend never sees class_count): it clamps a class_count above the number of
    classes to all of them, where seqserve answers 400."""
    from seqserve.export import load_export
    from seqserve.runtime import OrtBackend
    from seqserve.runtime.scoring import softmax
    from seqserve.serve.models import top_classes

    cls, tag = load_export(labelled("classifier", "lstm")), load_export(labelled("tagger", "transformer"))
    ids = np.array([cls.tokenizer.encode(e["input"][:20]) for e in cls.raw["examples"][:3]], np.int64)
    want = OrtBackend(cls, "full").run({"input_ids": ids})["class_logits"]
    tags = OrtBackend(tag, "full").run({"input_ids": ids})["tag_logits"]
    labels = cls.spec.io["labels"]
    for proto in ("http", "grpc"):
        np.testing.assert_allclose(_infer(server, "classifier", ids, proto), want, atol=1e-5)
        np.testing.assert_allclose(_infer(server, "tagger", ids, proto, output="tag_logits"), tags, atol=1e-5)
        top = _infer(server, "classifier", ids, proto, class_count=3)
        assert top.shape == (3, 3)
        expect = top_classes(want, 3, labels)
        for got, exp in zip(top.reshape(-1), expect.reshape(-1)):
            g, e = got.decode().split(":"), exp.decode().split(":")
            assert g[1:] == e[1:] and abs(float(g[0]) - float(e[0])) < 1e-4, (got, exp)
        if triton:
            assert _infer(server, "classifier", ids, proto, class_count=len(labels) + 1).shape == (3, len(labels))
        else:
            with pytest.raises(InferenceServerException, match="more classes than output 'class_logits'"):
                _infer(server, "classifier", ids, proto, class_count=len(labels) + 1)
            with pytest.raises(InferenceServerException, match="one numeric axis of classes"):
                _infer(server, "tagger", ids, proto, class_count=2, output="tag_logits")
        with pytest.raises(InferenceServerException, match="vocabulary"):
            _infer(server, "classifier", np.array([[cls.tokenizer.vocab_size]], np.int64), proto)
    # text in (Triton's generate extension on NAME_classify): labels and probabilities
    text = cls.raw["examples"][0]["input"]
    p = softmax(OrtBackend(cls, "full").run({"input_ids": np.array([cls.tokenizer.encode(text)])})["class_logits"][0])
    status, _, body = server.request("POST", "/v2/models/classifier_classify/generate",
                                     {"text_input": text, "class_count": 2})
    assert status == 200, body
    doc = json.loads(body)
    assert doc["labels"] == [labels[i] for i in np.argsort(-p)[:2]]
    np.testing.assert_allclose(doc["probabilities"], np.sort(p)[::-1][:2], atol=1e-5)
    status, _, body = server.request("POST", "/v2/models/tagger_classify/generate", {"text_input": "def f(x):"})
    assert status == 200 and len(json.loads(body)["labels"]) == 9, body
    for model, doc, words in (("classifier_classify", {"text_input": "\u2603"}, "outside the model's vocabulary"),
                              ("classifier_classify", {"text_input": "ab", "class_count": 99}, "class_count 99"),
                              ("classifier", {"text_input": "ab"}, "input_ids")):   # a generate request to NAME
        status, _, body = server.request("POST", f"/v2/models/{model}/generate", doc)
        assert status == 400 and words in body.decode(), (model, status, body)
    # incremental: the stream's class scores after each chunk == the full graph on that prefix
    row = ids[0].tolist()
    got = _step(server, "classifier_step", 7, [row[:5], row[5:9], row[9:]])
    ref = np.stack([OrtBackend(cls, "full").run({"input_ids": ids[:1, :n]})["class_logits"][0] for n in (5, 9, 20)])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    gru = load_export(labelled("tagger", "gru"))
    ids = np.array([gru.tokenizer.encode("def f(x):\n    return x")], np.int64)
    got = _step(server, "tagger_gru_step", 8, [ids[0, :4].tolist(), ids[0, 4:].tolist()], output="tag_logits")
    np.testing.assert_allclose(got, OrtBackend(gru, "full").run({"input_ids": ids})["tag_logits"][0], atol=1e-5)


def test_served_by_seqserve(labelled, tmp_path):
    from serving import start_server

    with start_server(_repo(labelled, tmp_path / "repo", "seqserve"), tmp_path / "logs") as server:
        _check_server(server, labelled, triton=False)
        status, _, body = server.request("POST", "/v2/models/classifier/infer", (
            b'{"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [3, 4]}],'
            b' "outputs": [{"name": "class_logits", "parameters": {"classification": 0}}]}'))
        assert status == 400 and b"classification" in body
        from helpers import run

        res = run("classify", "--url", f"http://{server.http_address}", "--model", "classifier_classify",
                  "--text", "import os", "--top", "2")
        assert res.exit_code == 0 and len(res.output.strip().splitlines()) == 3, res.output
        # seqserve loadtest drives them: synthesized token ids (in the config's vocab_size), a sequence

        for model, workload in (("classifier", "infer"), ("classifier_step", "sequence"),
                                ("classifier_classify", "infer")):
            res = run("loadtest", "--url", f"http://{server.http_address}", "--model", model, "--workload",
                      workload, "--concurrency", "2", "--duration", "1s")
            assert res.exit_code == 0 and " 0 errors" in res.output, res.output


@pytest.mark.slow
def test_served_by_tritonserver(labelled, tmp_path):
    from serving import start_server
    from tritonserver_fixture import tritonserver_or_skip

    from seqserve.triton.stub_env import prepare_overlay

    tritonserver_or_skip()
    prepare_overlay()
    repo = _repo(labelled, tmp_path / "repo", "triton-python")
    server = start_server(repo, tmp_path / "logs", "--engine", "triton", threads=None, timeout=240)
    try:
        _check_server(server, labelled, triton=True)
    finally:
        assert server.stop(60) == 0


def test_classification_extension_rules():
    from types import SimpleNamespace

    from seqserve.serve.models import ServedModelBase, TensorRule, top_classes
    from seqserve.serve.types import RequestedOutput, ServeError

    got = top_classes(np.array([[1.0, 5.0, 10.0, 4.0]], np.float32), 2, ["a", "b", "c", "d"])
    assert got.tolist() == [[b"10.000000:2:c", b"5.000000:1:b"]]        # Triton's doc example, its format
    assert top_classes(np.array([0.5, 0.5], np.float32), 2, None).tolist() == [b"0.500000:0", b"0.500000:1"]
    model = SimpleNamespace(name="m", max_batch=0, output_rules={
        "text_output": TensorRule("text_output", "BYTES", (1,), False),
        "scores": TensorRule("scores", "FP32", (4,), False)})
    ServedModelBase._check_classification(model, RequestedOutput("scores", classification=4))
    for name, k, words in (("scores", 5, "more classes"), ("text_output", 1, "numeric axis")):
        with pytest.raises(ServeError, match=words) as e:
            ServedModelBase._check_classification(model, RequestedOutput(name, classification=k))
        assert e.value.status == 400


def test_train_cli_takes_the_encoder_and_reports_held_out_accuracy(tmp_path):
    from helpers import assert_one_line_error, run

    res = run("train", "--family", "classifier", "--encoder", "gru", "--steps", "3", "--eval-every", "3",
              "--batch-size", "4", "--seq-len", "16", "--max-corpus-mb", "0.2", "--out", tmp_path / "c")
    assert res.exit_code == 0 and "held-out accuracy" in res.output, res.output
    assert_one_line_error(run("train", "--family", "lstm", "--encoder", "gru", "--out", tmp_path / "x"),
                          "--encoder", "classifier or tagger")
    assert_one_line_error(run("train", "--family", "classifier", "--corpus", tmp_path, "--steps", "1",
                              "--out", tmp_path / "y"), "--corpus")
