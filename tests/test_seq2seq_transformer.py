"""The seq2seq task's Transformer family: the spec (cross K/V from the encoder, self and cross
caches with distinct names), the model (padded == alone, steps from an empty past == full), the gate
failing a step graph that differs, the target-position limit. The chain through serving is
test_seq2seq_task.py's, per family. Trains on numbers in digits -> words: 30 steps of tiny.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run

from seqserve.models import build_model, make_config
from seqserve.tasks.spec import CONSTANT, MASK, ONCE, PAST, POSITIONS, SOURCE, SOURCE_MASK, SOURCE_TOKENS, STATE

# Per Transformer family of the seq2seq task (test_registry checks every such family has an entry).
FAMILY_FACTS = {"transformer": {"tiny_layers": 1, "small_layers": 2}}


def tiny(**kw):
    return build_model("transformer", make_config("transformer", "tiny", 20, **kw)).eval()


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from seqserve.export import export_checkpoint
    from seqserve.training import TrainConfig, train

    root = tmp_path_factory.mktemp("translate")
    ckpt = train(TrainConfig(family="transformer", preset="tiny", steps=30, eval_every=30, batch_size=32),
                 root / "ckpt").path
    return export_checkpoint(ckpt, root / "export").path


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_spec_feeds_cross_kv_from_the_encoder_and_keeps_the_self_cache_apart(preset):
    model = build_model("transformer", make_config("transformer", preset, 20))
    spec = model.spec()
    layers = FAMILY_FACTS["transformer"][f"{preset}_layers"]
    assert spec.task == "seq2seq" and [g.name for g in spec.graphs.values()] == ["encoder", "step", "full"]
    enc, step = spec.graph("encoder"), spec.step
    assert enc.runs == ONCE and enc.role(SOURCE_TOKENS).dims == ("batch", SOURCE) and enc.role(SOURCE_MASK)
    cross = [t.name for t in step.inputs if t.role == CONSTANT]
    assert cross == [f"cross_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    assert {name for _, name, _ in spec.links()} == set(cross)       # computed once, by the encoder
    assert [p.input for p in step.state] == [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    assert all(p.seq_axis == 2 for p in step.state) and not set(cross) & step.state_inputs
    # the step returns logits and the present SELF K/V only (no cross K/V comes back)
    assert step.output_names == ["logits", *(p.output for p in step.state)]
    assert step.role(MASK) and step.role(POSITIONS) and step.role(SOURCE_MASK)
    assert all(t.dims[2] == PAST for t in step.inputs if t.role == STATE)


def test_steps_from_an_empty_past_equal_full_and_a_padded_source_equals_it_alone():
    torch.manual_seed(0)
    m = tiny()
    src = torch.randint(3, 20, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0                                   # row 1: a 4-token source, padded to 6
    ids = torch.randint(3, 20, (2, 7))
    with torch.no_grad():
        full = m(src, mask, ids)
        _, cross = m.encode(src, mask)
        past, parts = m.empty_past(2), []
        for n in (3, 1, 1, 2):                        # chunks, from past length 0
            pos = sum(p.shape[1] for p in parts)
            logits, past = m.decode(ids[:, pos:pos + n], past, cross, mask)
            parts.append(logits)
        alone = m(src[1:, :4], mask[1:, :4], ids[1:])
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone, full[1:2], atol=1e-5, rtol=1e-4)


def test_gate_fails_a_step_graph_that_differs_and_names_where(export, tmp_path):
    import shutil

    import onnx
    from onnx import numpy_helper

    from seqserve.validate import validate_export

    path = shutil.copytree(export, tmp_path / "broken")
    model = onnx.load(str(path / "step.onnx"))
    init = next(i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) > 1)
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(w + 0.5 * np.random.default_rng(0).standard_normal(w.shape).astype(w.dtype),
                                          init.name))
    onnx.save(model, str(path / "step.onnx"))
    report = validate_export(path)
    assert not report.passed
    # the chain vs the full graph fails and says where; "padded == alone" compares the step with itself
    rows = [r for r in report.rows("incremental_vs_full") if "== alone" not in r.case]
    assert rows and all(not r.passed and "first mismatch at position" in r.detail for r in rows)
    assert len(report.rows("incremental_vs_full")) == len(rows) + 1
    vs = report.rows("torch_vs_ort")
    assert all(r.passed for r in vs if r.graph in ("encoder", "full"))
    assert any(not r.passed for r in vs if r.graph == "step")




def test_max_tokens_beyond_the_target_positions_is_one_line(export):
    assert_one_line_error(run("generate", export, "--prompt", "12", "--max-tokens", "500"), "500", "target positions")
