"""Latency benchmarking of any KServe v2 / Triton endpoint (`seqserve loadtest`).

    cfg = make_config("http://127.0.0.1:8000", "lstm", concurrency="1,4,16", duration="10s")
    results = run_loadtest(cfg)                 # one JSON-ready dict, a summary per level
    write_reports(results, Path("report"))      # results.json, results.csv, report.html + PNGs

Modules: config (what to run), discovery (model metadata/config, fit checks), workloads (inputs,
encoded once), http_client / grpc_client (lanes), ticker (exact send times), runner (closed and
open loop), results + stats (what counts, percentiles, histograms), metrics (the server's
/metrics), report + plots (json, csv, table, html), compare (two reports), live (progress).
"""

from seqserve.loadtest.config import LoadTestConfig, make_config
from seqserve.loadtest.report import load_results, write_reports
from seqserve.loadtest.session import run_loadtest

__all__ = ["LoadTestConfig", "make_config", "run_loadtest", "write_reports", "load_results"]
