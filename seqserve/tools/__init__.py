"""External tools fetched on demand into a user cache, never installed into the environment.

    perf_analyzer.py   Triton's load generator (perf_analyzer 2.51.0 from the tritonclient wheel),
                       run with its CSV report parsed into rows
"""

from seqserve.tools.perf_analyzer import (
    PERF_ANALYZER_VERSION,
    PackageDownloadError,
    PerfAnalyzer,
    PerfResult,
    cache_root,
    ensure_perf_analyzer,
)

__all__ = ["PERF_ANALYZER_VERSION", "PackageDownloadError", "PerfAnalyzer", "PerfResult", "cache_root",
           "ensure_perf_analyzer"]
