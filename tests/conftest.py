"""Shared fixtures: tiny models trained and exported once per test session, per family.

Each is built inside the test run from the Python standard library's sources (no downloads).
Factories are lazy, so a test module that needs only `lstm` does not export `gpt`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from seqserve.models import FAMILIES

TINY_TRAIN = dict(preset="tiny", steps=30, eval_every=15, eval_batches=2, batch_size=16, seq_len=32,
                  max_corpus_bytes=300_000)


class _Lazy:
    def __init__(self, make):
        self._make, self._cache = make, {}

    def __call__(self, family: str) -> Path:
        if family not in self._cache:
            self._cache[family] = self._make(family)
        return self._cache[family]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(family) -> Path of a tiny checkpoint trained for 30 steps."""
    from seqserve.training import TrainConfig, train

    root = tmp_path_factory.mktemp("checkpoints")
    return _Lazy(lambda fam: train(TrainConfig(family=fam, **TINY_TRAIN), root / fam).path)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, checkpoint):
    """exported(family) -> Path of that checkpoint's ONNX export (full + step graphs + sidecar)."""
    from seqserve.export import export_checkpoint

    root = tmp_path_factory.mktemp("exports")
    return _Lazy(lambda fam: export_checkpoint(checkpoint(fam), root / fam).path)


# The causal-lm families: the family-parametrized modules (test_models, test_export,
# test_generation, ...) test the causal-lm contract. Families of other tasks have their own test
# module each (test_registry.TASK_TEST_MODULES).
ALL_FAMILIES = sorted(f for f, fam in FAMILIES.items() if fam.task == "causal-lm")


def pytest_configure(config):
    # The test models are tiny: one intra-op thread is faster than several, and it does not stall
    # when xdist workers or other jobs share the cores (OpenMP threads spin-wait for each other;
    # with 2 threads on 2 busy cores a 1-second training run was measured at 30+ seconds).
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def served_repo(tmp_path_factory, exported):
    """served_repo(*families, **package_options) -> Path of a model repository (`seqserve package`).

    Default: the lstm and gpt exports (models lstm, lstm_step, lstm_generate, gpt, ...); name
    other families to add them. Keyword arguments are seqserve.package.PackageOptions for every
    model of that repository (e.g. max_sequences=2, sequence_idle_seconds=1): each distinct
    combination is its own repository, packaged once per session.
    """
    from seqserve.package import PackageOptions, package_export

    root = tmp_path_factory.mktemp("served")
    cache: dict = {}

    def make(*families: str, **options) -> Path:
        families = families or ("lstm", "gpt")
        key = (tuple(families), tuple(sorted(options.items())))
        if key not in cache:
            repo = root / f"repo{len(cache)}-{'-'.join(families)}"
            for family in families:
                package_export(exported(family), repo, options=PackageOptions(**options))
            cache[key] = repo
        return cache[key]

    return make


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used a `seqserve serve` process (tests/serving.py) shows its log's tail."""
    report = yield
    if report.failed:
        from serving import server_log_sections

        report.sections.extend(server_log_sections(item))
    return report
