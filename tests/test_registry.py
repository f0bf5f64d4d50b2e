"""The family registry: presets, errors, and that every registered family is covered by tests.

Each family-parametrized test module keeps a table of per-family expectations (FAMILY_FACTS); a
family registered in seqserve.models.FAMILIES without an entry there fails this module, so a
new family cannot slip in untested.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from seqserve.errors import SeqserveError
from seqserve.models import FAMILIES, build_model, config_from_dict, get_family, make_config
from conftest import ALL_FAMILIES

FAMILY_TEST_MODULES = ("test_models", "test_export", "test_generation")
# task -> the modules whose FAMILY_FACTS must name every family of that task
TASK_TEST_MODULES = {"causal-lm": FAMILY_TEST_MODULES, "conditioned": ("test_conditioned",),
                     "classify": ("test_task_labelled",), "tag": ("test_task_labelled",),
                     "seq2seq": ("test_seq2seq", "test_seq2seq_transformer", "test_seq2seq_task")}


def _load_test_module(name: str):
    if name in sys.modules and hasattr(sys.modules[name], "FAMILY_FACTS"):
        return sys.modules[name]
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_registry_check_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("module", FAMILY_TEST_MODULES)
def test_every_registered_family_has_tests(module):
    facts = _load_test_module(module).FAMILY_FACTS
    missing, stale = set(ALL_FAMILIES) - set(facts), set(facts) - set(ALL_FAMILIES)   # causal-lm ones
    assert not missing, f"{module}.py has no FAMILY_FACTS entry for registered families {sorted(missing)}"
    assert not stale, f"{module}.py has FAMILY_FACTS for unregistered families {sorted(stale)}"


def test_parametrized_family_list_is_the_registry():
    assert ALL_FAMILIES == sorted(f for f, fam in FAMILIES.items() if fam.task == "causal-lm")
    assert {"rnn", "lstm", "gru", "gpt"} <= set(ALL_FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_of_every_task_has_tests(family):
    task = FAMILIES[family].task
    assert task in TASK_TEST_MODULES, (f"family {family} has task {task!r}, which no test module covers: add "
                                       f"its modules to test_registry.TASK_TEST_MODULES")
    # a task's families may split over its modules (seq2seq: RNN and Transformer): one must name it
    modules = TASK_TEST_MODULES[task]
    assert any(family in _load_test_module(m).FAMILY_FACTS for m in modules), \
        f"none of {', '.join(f'{m}.py' for m in modules)} has a FAMILY_FACTS entry for the {task} family {family}"


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_presets_build_a_model_whose_spec_names_the_family(family, preset):
    fam = get_family(family)
    assert fam.name == family
    cfg = make_config(family, preset, vocab_size=40)
    assert isinstance(cfg, fam.config_cls)
    for k, v in fam.fixed.items():
        assert getattr(cfg, k) == v
    model = build_model(family, cfg)
    assert model.spec().family == family
    logits = model(torch.randint(0, 40, (2, 5)))
    assert logits.shape == (2, 5, 40)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_small_preset_is_bigger_than_tiny(family):
    sizes = [sum(p.numel() for p in build_model(family, make_config(family, pr, 40)).parameters())
             for pr in ("tiny", "small")]
    assert sizes[0] < sizes[1]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_config_round_trips_through_a_dict(family):
    from dataclasses import asdict

    cfg = make_config(family, "tiny", 40)
    assert config_from_dict(family, {**asdict(cfg), "unknown_field": 1}) == cfg


def test_unknown_family_names_the_expected_ones():
    with pytest.raises(SeqserveError) as e:
        get_family("transformer-xl")
    msg = str(e.value)
    assert "transformer-xl" in msg
    for name in FAMILIES:
        assert name in msg
    with pytest.raises(SeqserveError, match="transformer-xl"):
        make_config("transformer-xl", "tiny", 40)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_unknown_preset_names_the_expected_ones(family):
    with pytest.raises(SeqserveError) as e:
        make_config(family, "huge", 40)
    msg = str(e.value)
    assert "huge" in msg and family in msg
    for preset in FAMILIES[family].presets:
        assert preset in msg


@pytest.mark.parametrize("family, override", [("lstm", {"num_layers": 5}), ("gru", {"num_layers": 0}),
                                              ("gpt", {"n_heads": 3}), ("gpt", {"positional": "rope"}),
                                              ("rnn", {"nonlinearity": "sigmoid"}), ("lstm", {"bogus": 1})])
def test_bad_overrides_are_seqserve_errors(family, override):
    with pytest.raises(SeqserveError, match=f"bad {family} config"):
        make_config(family, "tiny", 40, **override)


def test_family_pins_cannot_be_overridden():
    # The family decides the cell; an override for it is ignored rather than building another family.
    assert make_config("gru", "tiny", 40, cell="lstm").cell == "gru"
