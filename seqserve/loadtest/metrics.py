"""The server's own view of a window: Triton's Prometheus counters, scraped before and after it.

seqserve and Triton expose the same names on their metrics port (default 8002):
nv_inference_request_success / _failure, nv_inference_count, nv_inference_exec_count and the
cumulative microsecond counters nv_inference_request_duration_us, nv_inference_queue_duration_us,
nv_inference_compute_{input,infer,output}_duration_us. The difference of two scrapes divided by
the requests that succeeded in between gives the average queue and compute time per request
(what perf_analyzer calls Server Queue / Server Compute Input / Infer / Output).
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from urllib.parse import urlparse

COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
            "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
            "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
            "nv_inference_compute_output_duration_us")
_LINE = re.compile(r'^(\w+)\{([^}]*)\}\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def default_metrics_url(target) -> str:
    return f"http://{target.host}:8002/metrics"


def parse(text: str, model: str) -> dict[str, float]:
    """Sum of each counter over the model's lines (all versions, all failure reasons)."""
    out = {c: 0.0 for c in COUNTERS}
    seen = False
    for line in text.splitlines():
        if not line.startswith("nv_inference_"):
            continue
        m = _LINE.match(line)
        if not m or m.group(1) not in out:
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        if labels.get("model") != model:
            continue
        try:
            out[m.group(1)] += float(m.group(3))
            seen = True
        except ValueError:
            continue
    return out if seen else {}


class Scraper:
    """scrape() -> counters of one model, or {} with `self.problem` saying why (never raises)."""

    def __init__(self, url: str | None, model: str, timeout: float = 5.0):
        self.url, self.model, self.timeout = url, model, timeout
        self.problem = "" if url else "off (--metrics-url none)"

    def scrape(self) -> dict[str, float]:
        if not self.url:
            return {}
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as r:
                text = r.read().decode(errors="replace")
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            self.problem = f"cannot read {self.url}: {reason}"
            return {}
        counters = parse(text, self.model)
        if not counters:
            self.problem = f"{self.url} has no nv_inference_* counters for model '{self.model}'"
        return counters


def breakdown(before: dict, after: dict) -> dict | None:
    """Average server-side microseconds per successful request over the window, and the counts."""
    if not before or not after:
        return None
    d = {k: after[k] - before.get(k, 0.0) for k in COUNTERS}
    ok = d["nv_inference_request_success"]
    per = (lambda k: d[k] / ok) if ok > 0 else (lambda k: None)
    return {"success": int(d["nv_inference_request_success"]), "failure": int(d["nv_inference_request_failure"]),
            "inferences": int(d["nv_inference_count"]), "executions": int(d["nv_inference_exec_count"]),
            "request_us": per("nv_inference_request_duration_us"), "queue_us": per("nv_inference_queue_duration_us"),
            "compute_input_us": per("nv_inference_compute_input_duration_us"),
            "compute_infer_us": per("nv_inference_compute_infer_duration_us"),
            "compute_output_us": per("nv_inference_compute_output_duration_us")}


def describe(url: str | None) -> str:
    return urlparse(url).netloc if url else "off"
