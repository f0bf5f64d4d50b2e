"""The translate task (family transformer: an encoder-decoder Transformer) through the chain: the
spec (cross K/V from the encoder, self and cross caches with distinct names), the model (padded ==
alone, steps == full), the decoding loop running the encoder once (beams copy the cross K/V, never
recompute them), train -> export -> validate -> generate (torch == ORT, greedy and beams 4), bad
sources. The model trains on numbers in digits -> words (num2words, no download): 30 steps of tiny.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run

from seqserve.models import build_model, make_config
from seqserve.tasks.spec import CONSTANT, MASK, ONCE, PAST, POSITIONS, SOURCE, SOURCE_MASK, SOURCE_TOKENS, STATE

# Per family of the translate task (test_registry checks every such family has an entry).
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
    assert spec.task == "translate" and [g.name for g in spec.graphs.values()] == ["encoder", "step", "full"]
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


def test_beam_search_runs_the_encoder_once_per_source_and_copies_cross_kv_per_beam(export):
    from seqserve.export import load_export
    from seqserve.generation.beam import BeamParams
    from seqserve.runtime import make_chain
    from seqserve.tasks import translate

    info = load_export(export)
    step, chain = make_chain(info, "ort")
    calls, widths = [], []
    encoder, run_step = chain.once[0], step.run

    class Counting:
        spec = encoder.spec
        to_host, from_host = encoder.to_host, encoder.from_host

        def run(self, feeds):
            calls.append(feeds["source_ids"].shape)
            return encoder.run(feeds)

    def counted_step(feeds):
        widths.append(feeds["cross_key_values.0.key"].shape[0])    # one copy per beam row
        return run_step(feeds)

    step.run = counted_step
    hyps = translate.generate_targets(Counting(), step, info.spec, info.tokenizer, ["12", "3456"],
                                      BeamParams(beams=4, max_tokens=6, stop_at_eos=False))
    assert calls == [(1, 2), (1, 4)]                 # the encoder ran once per source, never again
    assert [len(h) for h in hyps] == [4, 4] and max(widths) == 4


def test_sources_of_different_lengths_share_a_batch(export):
    """Greedy over a batch of sources (cross K/V right-padded by DecodeState.merge) == each alone."""
    from seqserve.export import load_export
    from seqserve.generation import SamplingParams
    from seqserve.runtime import make_chain
    from seqserve.tasks import translate

    info = load_export(export)
    step, chain = make_chain(info, "ort")
    params = SamplingParams(max_tokens=8, greedy=True, stop_at_eos=False)

    def tokens(sources):
        out = [[] for _ in sources]
        for ev in translate.generate_targets(chain.once[0], step, info.spec, info.tokenizer, sources, params):
            out[ev.index].append(ev.token)
        return out

    together = tokens(["7", "1234", "56"])
    assert together == [tokens([s])[0] for s in ("7", "1234", "56")]


def test_validate_passes_every_check(export):
    from seqserve.validate import validate_export

    report = validate_export(export)
    assert report.passed, [r for r in report.checks if not r.passed]
    cases = " ".join(r.case for r in report.checks)
    for what in ("batch=1", "batch=3", "padded", "past=0", "past=4", "beams=4", "token by token"):
        assert what in cases
    graphs = {r.graph for r in report.rows("torch_vs_ort")}
    assert graphs == {"encoder", "step", "full"}


@pytest.mark.parametrize("extra", [["--greedy"], ["--beams", "4"]])
def test_generate_is_identical_through_ort_and_torch(export, extra):
    outs = [run("generate", export, "--prompt", "342", "--prompt", "1999", "--max-tokens", "12",
                "--backend", b, *extra) for b in ("ort", "torch")]
    assert all(r.exit_code == 0 for r in outs), [r.output for r in outs]
    assert outs[0].output == outs[1].output


def test_generate_examples_shows_each_reference(export):
    res = run("generate", export, "--examples", "--greedy", "--max-tokens", "8")
    assert res.exit_code == 0, res.output
    assert "reference" in res.output and "exact match" in res.output


@pytest.mark.parametrize("args, words", [
    (["--prompt", "12a"], ["'a'", "source vocabulary"]),
    (["--prompt", "1" * 80], ["80", "at most"]),
    (["--prompt", "12", "--beams", "0"], ["beams"]),
    (["--prompt", "12", "--max-tokens", "500"], ["500", "target positions"]),
])
def test_bad_sources_and_beams_are_one_line_errors(export, args, words):
    assert_one_line_error(run("generate", export, *args), *words)
