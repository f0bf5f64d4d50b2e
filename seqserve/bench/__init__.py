"""Decode latency benchmark (`seqserve bench`, benchmarks/decode_latency.py).

    decode.py   what is measured: models, exports, the torch and ORT variants, run_benchmark
    timing.py   interleaved rounds, step timers, other processes' CPU load
    report.py   ratios against the targets, rich tables, JSON
"""

from seqserve.bench.decode import ALL_FAMILIES, DEFAULT_CONTEXTS, BenchConfig, check_config, parse_list, run_benchmark
from seqserve.bench.report import ratios, render, write_json

__all__ = ["ALL_FAMILIES", "BenchConfig", "DEFAULT_CONTEXTS", "check_config", "parse_list", "ratios",
           "render", "run_benchmark", "write_json"]
