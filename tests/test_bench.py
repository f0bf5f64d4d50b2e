"""The decode benchmark runs end to end on tiny models and reports consistent numbers.

Speed is not asserted here (shared machines make timed assertions flaky); the figures live in
`seqserve bench` / benchmarks/decode_latency.py output.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app


@pytest.mark.slow
def test_bench_tiny_run_writes_consistent_json(tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", "--families", "gpt,lstm", "--contexts", "8,16", "--steps", "3",
                                   "--rounds", "2", "--warmup", "1", "--preset", "tiny", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "torch cache / ORT" in res.output
    d = json.loads(out.read_text())
    assert [c["context"] for c in d["gpt"]["contexts"]] == [8, 16]
    for c in d["gpt"]["contexts"]:
        for variant in ("torch_cache", "torch_nocache", "ort_cache"):
            assert c[variant]["n"] >= 6 and c[variant]["median_ms"] > 0
            assert c[variant]["median_ms"] <= c[variant]["p90_ms"]
        # The benchmark also checks that the variants compute the same thing.
        assert c["max_abs_logit_diff_ort_vs_torch"] < 1e-4
    assert d["gpt"]["step_graph"]["attention_ops"] == 2      # opset 23 native Attention, one per layer
    lstm = [r for r in d["recurrent"] if r["family"] == "lstm"]
    assert len(lstm) == 1 and lstm[0]["ort"]["median_ms"] > 0


def test_bench_rejects_bad_arguments():
    res = CliRunner().invoke(app, ["bench", "--families", "transformer"])
    assert res.exit_code == 2 and "transformer" in res.output
