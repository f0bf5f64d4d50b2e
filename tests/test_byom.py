"""Bring your own model, end to end: the user's own nn.Module file (tests/user_models, written the
way users write them) -> `seqserve export --module` -> `seqserve validate` (against the user's own
forward) -> package -> `seqserve serve` -> a tritonclient request equal to in-process ONNX
Runtime; the user's tokenizer (a word vocabulary file or a tokenizer.json); bad input is one line,
exit 2, nothing written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_one_line_error, run
from serving import assert_full_graph_served, assert_streams, serve_export
from test_triton import triton_ready  # noqa: F401 - fixture: tritonserver and its stub environment

MODELS = Path(__file__).with_name("user_models")
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
VOCAB_MT = 40


def word_vocab(path: Path, size: int) -> Path:
    """A vocabulary file, one token per line: the four specials, then words w4 .. w{size-1}."""
    path.write_text("\n".join(SPECIALS + [f"w{i}" for i in range(len(SPECIALS), size)]) + "\n")
    return path


def tokenizer_json(path: Path, size: int) -> Path:
    """A Hugging Face tokenizer.json (WordLevel over whitespace) of exactly `size` tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS + [f"w{i}" for i in range(len(SPECIALS), size)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return path


def generate_inputs(text: str, max_tokens: int, seed: int) -> list:
    """tritonclient inputs of a NAME_generate request: the text, max_tokens and a sampling seed."""
    import tritonclient.http as th

    inputs = []
    for key, value, dtype in (("text_input", np.array([text.encode()], dtype=object), "BYTES"),
                              ("max_tokens", np.array([max_tokens], np.int32), "INT32"),
                              ("seed", np.array([seed], np.uint64), "UINT64")):
        inputs.append(th.InferInput(key, [1], dtype))
        inputs[-1].set_data_from_numpy(value)
    return inputs


# name -> (module, task, vocabulary size, tokenizer kind, extra export options)
CASES = {
    "lstm_lm": ("lstm_lm.py:build", "causal-lm", 40, "vocab", []),
    "lstm_proj": ("lstm_proj.py:build", "causal-lm", 36, "json", []),
    "gru_classifier": ("gru_classifier.py:build", "classify", 30, "vocab", ["--labels", "neg,neu,pos"]),
    "transformer_lm": ("transformer_lm.py:build", "causal-lm", 50, "json",
                       ["--adapter", str(MODELS / "adapter_transformer_lm.py:adapter")]),
    "transformer_mt": ("transformer_mt.py:build", "seq2seq", VOCAB_MT, "json", []),
    "normed_gru_lm": ("normed_gru_lm.py:build", "causal-lm", 44, "vocab",
                      ["--adapter", str(MODELS / "adapter_normed_gru_lm.py:adapter")]),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def brought(request, tmp_path_factory):
    """(case name, export folder, CLI output) for each user model, exported through the CLI."""
    torch.set_num_threads(1)
    name = request.param
    module, task, size, kind, extra = CASES[name]
    root = tmp_path_factory.mktemp(f"byom-{name}")
    tok = word_vocab(root / "vocab.txt", size) if kind == "vocab" else tokenizer_json(root / "tokenizer.json", size)
    res = run("export", "--module", str(MODELS / module), "--task", task, "--tokenizer", tok, *extra,
              "--out", root / "export")
    assert res.exit_code == 0, res.output
    return name, root / "export", res.output


def test_export_records_where_the_module_came_from_and_how_it_was_read(brought):
    name, export, output = brought
    side = json.loads((export / "seqserve.json").read_text())
    src = side["source"]
    assert src["module"].endswith(CASES[name][0]) and Path(src["module"].rpartition(":")[0]).is_absolute()
    assert src["decisions"] and all(f"{k}: " in output for k in src["decisions"])   # printed, and recorded
    assert (export / src["weights_file"]).is_file() and len(src["sha256"]) == 64
    assert side["family"] == "module" and side["task"] == CASES[name][1]


def test_validate_passes_against_the_users_own_forward(brought):
    from seqserve.validate import validate_export

    name, export, _ = brought
    report = validate_export(export)
    failed = [r for r in report.checks if not r.passed]
    assert not failed, failed[:3]
    rows = report.checks
    assert any("re-imported module" in r.case for r in rows)            # the sidecar vs the user's module
    if CASES[name][1] == "causal-lm":
        # the chain vs the user's forward itself, and greedy tokens vs the user recomputing the prefix
        assert any(r.check == "incremental_vs_full" and "the user's forward" in r.case for r in rows)
        assert any(r.check == "greedy_generation" and "recomputing the prefix" in r.case for r in rows)


def test_validate_fails_when_the_module_computes_something_else(brought, tmp_path):
    """The gate compares with the user's module as it is now: a changed forward fails it."""
    from seqserve.validate import ValidateConfig, validate_export

    name, export, _ = brought
    original = MODELS / CASES[name][0].split(":")[0]
    changed = tmp_path / original.name
    changed.write_text(original.read_text() + "\n\n_build = build\n\n\ndef build():\n    m = _build()\n"
                       "    return m\n")
    for f in MODELS.glob("*.py"):                 # the adapter files it imports, unchanged
        if not (tmp_path / f.name).exists():
            (tmp_path / f.name).write_text(f.read_text())
    same = validate_export(export, ValidateConfig(module=f"{changed}:build"))
    assert same.passed                           # the same module from elsewhere: still passes

    perturbed = tmp_path / "perturbed.py"
    perturbed.write_text(f"import sys, torch\nsys.path.insert(0, {str(tmp_path)!r})\n"
                         f"from {original.stem} import build as _build\n\n\ndef build():\n    m = _build()\n"
                         "    _fwd = m.forward\n\n    def forward(*a, **k):\n        out = _fwd(*a, **k)\n"
                         "        if isinstance(out, tuple):\n            return (out[0] * 1.5, *out[1:])\n"
                         "        return out * 1.5\n\n    m.forward = forward\n    return m\n")
    report = validate_export(export, ValidateConfig(module=f"{perturbed}:build"))
    assert not report.passed
    assert any(not r.passed for r in report.rows("torch_vs_ort") if r.graph == "full")


def test_packaged_and_served_tritonclient_gets_what_onnx_runtime_gives(brought, tmp_path_factory):
    import tritonclient.http as th

    from seqserve.loadtest import make_config, run_loadtest

    name, export, _ = brought
    task = CASES[name][1]
    with serve_export(export, tmp_path_factory.mktemp(f"serve-{name}"), "mine") as server:
        # seqserve loadtest drives it unchanged (generate: prompts through the user's tokenizer;
        # classify: infer with synthesized token ids)
        model, workload = ("mine", "infer") if task == "classify" else ("mine_generate", "generate")
        res = run_loadtest(make_config(server.http_url, model, metrics_url=server.metrics_url, workload=workload,
                                       concurrency="2", max_tokens=4, duration="0.6s", warmup="0.1s"))
        level = res["levels"][0]
        assert level["ok"] > 0 and level["errors"] == 0, level["error_kinds"]
        ids = np.array([[4, 9, 5, 7, 6]], np.int64)
        if task == "causal-lm":
            assert_full_graph_served(server, "mine", export, {"input_ids": ids})
            # generated text through the user's tokenizer, seeded sampling (a random model's greedy
            # choice may be a special token, which prints nothing): what in-process generation gives
            from seqserve.export import load_export
            from seqserve.generation import SamplingParams, generate_text
            from seqserve.runtime import OrtBackend

            info = load_export(export)
            want = generate_text(OrtBackend(info, "step"), info.tokenizer, ["w4 w9"],
                                 SamplingParams(max_tokens=5, seed=3))[0].text
            client = th.InferenceServerClient(server.http_address)
            out = client.infer("mine_generate", generate_inputs("w4 w9", 5, 3)).as_numpy("text_output")
            assert out.reshape(-1)[0].decode() == want
        elif task == "seq2seq":
            from seqserve.export import load_export
            from seqserve.generation import SamplingParams
            from seqserve.runtime import make_chain
            from seqserve.tasks import seq2seq

            assert_full_graph_served(server, "mine", export, {
                "source_ids": ids, "source_mask": np.ones_like(ids), "input_ids": np.array([[1, 7, 8]], np.int64)})
            info = load_export(export)
            step, chain = make_chain(info)
            want = "".join(ev.text for ev in seq2seq.generate_targets(
                chain.once[0], step, info.spec, info.tokenizer, ["w4 w9 w5"], SamplingParams(max_tokens=6, seed=3)))
            client = th.InferenceServerClient(server.http_address)
            got = client.infer("mine_generate", generate_inputs("w4 w9 w5", 6, 3)).as_numpy("text_output")
            assert got.reshape(-1)[0].decode() == want
        else:
            from seqserve.export import load_export
            from seqserve.runtime import OrtBackend

            local = OrtBackend(load_export(export), "full").run({"input_ids": ids})["class_logits"]
            x = th.InferInput("input_ids", list(ids.shape), "INT64")
            x.set_data_from_numpy(ids)
            client = th.InferenceServerClient(server.http_address)
            got = client.infer("mine", [x]).as_numpy("class_logits")
            np.testing.assert_allclose(got, local, atol=1e-5)
            top = client.infer("mine", [x], outputs=[th.InferRequestedOutput("class_logits", class_count=2)])
            labels = [s.decode().split(":")[2] for s in top.as_numpy("class_logits").reshape(-1)]
            assert labels == [["neg", "neu", "pos"][i] for i in np.argsort(-local[0])[:2]]


# -- bad input: one line, exit 2, nothing written -------------------------------------------------

@pytest.fixture
def vocab40(tmp_path):
    return word_vocab(tmp_path / "vocab.txt", 40)


def _export(tmp_path, *args):
    res = run("export", *args, "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    return res


def test_a_wrong_module_reference_is_one_line(tmp_path, vocab40):
    assert_one_line_error(_export(tmp_path, "--module", tmp_path / "nope.py:build", "--task", "causal-lm",
                                  "--tokenizer", vocab40), "does not exist")
    assert_one_line_error(_export(tmp_path, "--module", MODELS / "lstm_lm.py:nothing", "--task", "causal-lm",
                                  "--tokenizer", vocab40), "defines no 'nothing'", "build")
    assert_one_line_error(_export(tmp_path, "--module", MODELS / "lstm_lm.py", "--task", "causal-lm",
                                  "--tokenizer", vocab40), "FILE.py:NAME")


def test_a_factory_that_raises_is_one_line(tmp_path, vocab40):
    bad = tmp_path / "bad.py"
    bad.write_text("def build():\n    raise ValueError('no weights here')\n")
    assert_one_line_error(_export(tmp_path, "--module", f"{bad}:build", "--task", "causal-lm", "--tokenizer", vocab40),
                          "raised ValueError", "no weights here")


def test_weights_that_do_not_fit_list_the_keys(tmp_path, vocab40, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("u_lstm", MODELS / "lstm_lm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setitem(sys.modules, "u_lstm", mod)          # so torch.save can pickle the class
    sd = mod.build().state_dict()
    sd["extra.weight"] = torch.zeros(2)
    del sd["decoder.bias"]
    torch.save(sd, tmp_path / "w.pt")
    assert_one_line_error(_export(tmp_path, "--module", MODELS / "lstm_lm.py:build", "--weights", tmp_path / "w.pt",
                                  "--task", "causal-lm", "--tokenizer", vocab40),
                          "missing decoder.bias", "unexpected extra.weight")
    torch.save(mod.build(), tmp_path / "pickled.pt")          # a whole pickled model: refused
    assert_one_line_error(_export(tmp_path, "--module", MODELS / "lstm_lm.py:build", "--weights",
                                  tmp_path / "pickled.pt", "--task", "causal-lm", "--tokenizer", vocab40),
                          "pickled", "state_dict()")


def test_a_tokenizer_of_another_size_is_one_line(tmp_path):
    assert_one_line_error(_export(tmp_path, "--module", MODELS / "lstm_lm.py:build", "--task", "causal-lm",
                                  "--tokenizer", word_vocab(tmp_path / "v.txt", 41)), "41 tokens", "40")


def test_a_module_the_automatic_adapter_cannot_read_asks_for_an_adapter(tmp_path):
    """normed_gru_lm without its adapter: the norm before the head defeats the probe."""
    assert_one_line_error(_export(tmp_path, "--module", MODELS / "normed_gru_lm.py:build", "--task", "causal-lm",
                                  "--tokenizer", word_vocab(tmp_path / "v.txt", 44)), "--adapter")


def test_a_module_that_cannot_be_rebuilt_names_it_and_the_adapter_protocol(tmp_path):
    vocab = word_vocab(tmp_path / "v.txt", 30)
    assert_one_line_error(_export(tmp_path, "--module", MODELS / "unsupported.py:build", "--task", "causal-lm",
                                  "--tokenizer", vocab), "encoder.layers.0.self_attn", "add_bias_kv", "--adapter")
    assert_one_line_error(_export(tmp_path, "--module", MODELS / "unsupported.py:build_kdim", "--task", "causal-lm",
                                  "--tokenizer", vocab), "encoder.layers.0.self_attn", "kdim 8", "--adapter")


@pytest.mark.slow
def test_tritonserver_python_backend_serves_a_brought_model_with_its_tokenizer(tmp_path_factory, request):
    """The real tritonserver (python backend, a triton-python repository) generates with the
    user's tokenizer.json what in-process generation gives, and serves the full graph."""
    from seqserve.export import load_export
    from seqserve.generation import SamplingParams, generate_text
    from seqserve.runtime import OrtBackend

    request.getfixturevalue("triton_ready")
    root = tmp_path_factory.mktemp("byom-triton")
    module, task, size, _, extra = CASES["transformer_lm"]
    res = run("export", "--module", str(MODELS / module), "--task", task, "--tokenizer",
              tokenizer_json(root / "tokenizer.json", size), *extra, "--out", root / "export")
    assert res.exit_code == 0, res.output
    info = load_export(root / "export")
    want = generate_text(OrtBackend(info, "step"), info.tokenizer, ["w4 w9"], SamplingParams(max_tokens=5, seed=3))[0].text
    s = serve_export(root / "export", root, "mine", "triton-python")
    try:
        assert_full_graph_served(s, "mine", root / "export", {"input_ids": np.array([[4, 9, 5]], np.int64)})
        # generate is decoupled on tritonserver: its SSE stream (tritonserver's final response is empty)
        assert_streams(s, "mine_generate", [{"text_input": "w4 w9", "max_tokens": 5, "seed": 3}], [want],
                       finished=False)
    finally:
        assert s.stop(60) == 0


def test_the_python_entry_point_exports_a_module_object_and_validate_needs_its_factory(tmp_path):
    """seqserve.export_module(model, ...) with no source recorded: validate says to pass --module,
    and with it passes."""
    import importlib.util

    import seqserve
    from seqserve.validate import ValidateConfig, validate_export

    spec = importlib.util.spec_from_file_location("u_gru", MODELS / "normed_gru_lm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    info = seqserve.export_module(mod.build(), tmp_path / "out", task="causal-lm",
                                  tokenizer=word_vocab(tmp_path / "v.txt", 44),
                                  adapter=str(MODELS / "adapter_normed_gru_lm.py:adapter"))
    assert info.task == "causal-lm" and "module" not in info.raw["source"]
    report = validate_export(info.path)
    assert not report.passed
    assert any("--module" in r.detail for r in report.checks if not r.passed)
    assert validate_export(info.path, ValidateConfig(module=f"{MODELS / 'normed_gru_lm.py'}:build")).passed


def test_generate_with_the_torch_backend_runs_the_users_module(brought):
    """`seqserve generate --backend torch` on a brought export re-imports the user's module and
    gives the tokens ONNX Runtime gives (greedy, and 4 beams); `seqserve classify` likewise."""
    name, export, _ = brought
    task = CASES[name][1]
    prompt = "w4 w9 w5"
    if task == "classify":       # nothing to generate: `seqserve classify` runs the user's module
        got = [run("classify", export, "--text", prompt, "--backend", b) for b in ("ort", "torch")]
        assert all(r.exit_code == 0 for r in got) and got[0].output == got[1].output, got[0].output
        assert any(label in got[0].output for label in ("neg", "neu", "pos"))
        return
    outs = {}
    for backend in ("ort", "torch"):
        for mode in (["--greedy"], ["--beams", "4"]):
            res = run("generate", export, "--prompt", prompt, "--max-tokens", "6", "--backend", backend, *mode)
            assert res.exit_code == 0, res.output
            outs[backend, mode[0]] = res.output
    assert outs["ort", "--greedy"] == outs["torch", "--greedy"]
    assert outs["ort", "--beams"] == outs["torch", "--beams"]
