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


# ---- readable output (issue 13 target 5): no 80-column cut when redirected, usage lines --------

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WIDE_TABLE = """
from rich.table import Table
from seqserve.bench.output import console
tab = Table(title="wide")
for k in range(8):
    tab.add_column(f"column number {k}")
tab.add_row(*(f"value {k:02d}" for k in range(8)))
console().print(tab)
"""


def test_redirected_console_keeps_a_wide_table_on_one_line():
    out = subprocess.run([sys.executable, "-c", WIDE_TABLE], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "TERM": "dumb"}, check=True).stdout
    header = [line for line in out.splitlines() if "column number 0" in line]
    assert len(header) == 1 and len(header[0]) > 80
    assert all(f"column number {k}" in header[0] for k in range(8))
    assert all(f"value {k:02d}" in out for k in range(8))


@pytest.mark.parametrize("script", ["decode_latency.py", "int8_decode.py", "kv_cache.py", "serve_overhead.py",
                                    "continuous_batching.py", "triton_vs_embedded.py", "replicas.py"])
def test_benchmark_help_names_the_script(script):
    res = subprocess.run([sys.executable, f"benchmarks/{script}", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    usage = next(line for line in res.stdout.splitlines() if "usage:" in line.lower())
    assert f"{script} [" in usage and "bench [" not in usage, usage
    assert "--json" in res.stdout


@pytest.mark.slow
def test_decode_benchmark_redirected_keeps_its_table_and_plots(tmp_path):
    png = tmp_path / "latency.png"
    res = subprocess.run([sys.executable, "benchmarks/decode_latency.py", "--families", "gpt", "--contexts", "8,16",
                          "--preset", "tiny", "--steps", "2", "--rounds", "1", "--warmup", "1", "--no-int8",
                          "--plot", str(png)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    header = [line for line in res.stdout.splitlines() if "torch no-cache" in line and "context" in line]
    assert header and len(header[0]) > 80, res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "━" not in res.stderr          # no progress bar in redirected output
