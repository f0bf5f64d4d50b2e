"""The seq2seq task's RNN family (encoder-decoder with attention): the spec and its links, the
model's graphs (padded == alone, steps == full, every attention), every variant trained, exported
and validated, the train CLI. The chain through serving is test_seq2seq_task.py's, per family.

The model trains on numbers in digits -> words from num2words (no download): 30 steps of tiny.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_one_line_error, run

from seqserve.models import build_model, make_config
from seqserve.tasks.spec import ATTENTION, CONSTANT, ONCE, SOURCE_MASK, SOURCE_TOKENS, STATE

# Per family of the seq2seq task (test_registry checks every such family has an entry).
FAMILY_FACTS = {"seq2seq": {"attentions": ("none", "dot", "general", "additive"), "states": {"gru": 1, "lstm": 2}}}
# (cell, attention, bidirectional): the additive GRU runs in the quick suite, the rest are slow
VARIANTS = [pytest.param("gru", "additive", False, id="gru-additive"),
            pytest.param("lstm", "dot", True, id="lstm-dot-bi", marks=pytest.mark.slow),
            pytest.param("gru", "general", True, id="gru-general-bi", marks=pytest.mark.slow),
            pytest.param("lstm", "none", False, id="lstm-none", marks=pytest.mark.slow)]


def tiny(cell="gru", attention="additive", bidirectional=False, **kw):
    return build_model("seq2seq", make_config("seq2seq", "tiny", 20, cell=cell, attention=attention,
                                              bidirectional=bidirectional, **kw)).eval()


def _trained(root, cell, attention, bidirectional):
    from seqserve.export import export_checkpoint
    from seqserve.training import TrainConfig, train

    overrides = {"cell": cell, "attention": attention, "bidirectional": bidirectional}
    ckpt = train(TrainConfig(family="seq2seq", preset="tiny", steps=30, eval_every=30, batch_size=32,
                             model_overrides=overrides), root / "ckpt").path
    return export_checkpoint(ckpt, root / "export").path


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("attention", FAMILY_FACTS["seq2seq"]["attentions"])
def test_spec_links_the_encoder_to_the_step_state_and_constants(cell, attention):
    spec = tiny(cell, attention).spec()
    assert spec.task == "seq2seq" and [g.name for g in spec.graphs.values()] == ["encoder", "step", "full"]
    enc = spec.graph("encoder")
    assert enc.runs == ONCE and enc.role(SOURCE_TOKENS).name == "source_ids" and enc.role(SOURCE_MASK)
    links = {name for _, name, _ in spec.links()}
    assert {p.input for p in spec.step.state} <= links
    assert len(spec.step.state) == FAMILY_FACTS["seq2seq"]["states"][cell]
    consts = {t.name for t in spec.step.inputs if t.role == CONSTANT}
    assert consts <= links and all(t.role == CONSTANT for t in enc.outputs if t.name in consts)
    if attention == "none":
        assert not consts and spec.step.role(ATTENTION) is None
    else:
        assert spec.step.role(ATTENTION).dims == ("batch", "sequence", "source_sequence")
        assert ("encoder_keys" in consts) == (attention in ("general", "additive"))
        assert "source_mask" in spec.step.input_names
    assert all(t.role == STATE for t in enc.outputs if t.name.startswith("past_"))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("attention", FAMILY_FACTS["seq2seq"]["attentions"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_steps_equal_full_and_a_padded_source_equals_it_alone(cell, attention, bidirectional):
    from seqserve.tasks import run_graph

    model, g = tiny(cell, attention, bidirectional, num_layers=2), torch.Generator().manual_seed(0)
    spec = model.spec()
    src, ids = torch.randint(3, 20, (3, 6), generator=g), torch.randint(3, 20, (3, 7), generator=g)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:], mask[2, 1:] = 0, 0
    full = run_graph(model, spec, spec.full, {"source_ids": src, "source_mask": mask, "input_ids": ids})["logits"]
    start = run_graph(model, spec, spec.graph("encoder"), {"source_ids": src, "source_mask": mask})
    consts = {k: v for k, v in start.items() if not k.startswith("past_")}
    state = {k: v for k, v in start.items() if k.startswith("past_")}
    parts = []
    for a, b in ((0, 1), (1, 4), (4, 7)):
        out = run_graph(model, spec, spec.step, {"input_ids": ids[:, a:b], "source_mask": mask, **state, **consts})
        parts.append(out["logits"])
        if attention != "none":
            w = out["attention_weights"]
            assert w.shape == (3, b - a, 6) and torch.allclose(w.sum(-1), torch.ones(3, b - a))
            assert (w[1, :, 4:] == 0).all() and (w[2, :, 1:] == 0).all()      # no weight on padding
        state = {p.input: out[p.output] for p in spec.step.state}
    torch.testing.assert_close(torch.cat(parts, 1), full)
    alone = run_graph(model, spec, spec.full, {"source_ids": src[1:2, :4], "source_mask": mask[1:2, :4],
                                               "input_ids": ids[1:2]})["logits"]
    torch.testing.assert_close(alone, full[1:2])


@pytest.mark.parametrize("cell, attention, bidirectional", VARIANTS[1:])
def test_every_attention_variant_trains_exports_and_validates(tmp_path, cell, attention, bidirectional):
    from seqserve.validate import validate_export

    report = validate_export(_trained(tmp_path, cell, attention, bidirectional))
    assert report.passed, [r for r in report.checks if not r.passed]


def test_train_cli_takes_cell_attention_and_bidirectional(tmp_path):
    res = run("train", "--family", "seq2seq", "--cell", "lstm", "--attention", "dot", "--bidirectional",
              "--steps", "2", "--eval-every", "2", "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert "held-out exact match" in res.output
    assert_one_line_error(run("train", "--family", "gru", "--attention", "dot", "--out", tmp_path / "d"),
                          "--attention", "seq2seq")
    assert_one_line_error(run("train", "--family", "seq2seq", "--attention", "luong", "--steps", "1",
                              "--out", tmp_path / "e"), "attention must be one of")


def test_loadtest_synthesizes_sources_within_the_source_vocabulary_and_length():
    from seqserve.loadtest.workloads import synthesized_sources

    got = synthesized_sources(50, "0123456789", 4, seed=0)
    assert all(1 <= len(s) <= 4 and set(s) <= set("0123456789") for s in got) and len(set(got)) > 10


