"""Per-model statistics, kept once and shown two ways: Triton's statistics JSON
(`/v2/models/{m}/stats`, gRPC ModelStatistics — what perf_analyzer reads for its server-side
breakdown) and Prometheus text with Triton's metric names (`/metrics` on the metrics port).

Triton's meaning of the numbers, which we keep:
- success/fail/queue/compute_*: one count per *request*, durations summed in ns;
- inference_count: inferences performed (batch rows), execution_count: model executions (batches);
- batch_stats: per executed batch size, the compute durations of those executions.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
# time-to-first-token histogram buckets (ms), as Triton's nv_inference_first_response_histogram_ms
TTFT_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class ModelStats:
    def __init__(self, name: str, version: str):
        self.name, self.version = name, version
        self._lock = threading.Lock()
        self.phase = {p: [0, 0] for p in _PHASES}              # phase -> [count, ns]
        self.batch = defaultdict(lambda: [0, 0, 0, 0])         # batch size -> [count, in ns, infer ns, out ns]
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.failures_by_reason = defaultdict(int)             # "REJECTED" (client error) | "BACKEND"
        self.generated_tokens = 0
        self.ttft = [0] * (len(TTFT_BUCKETS_MS) + 1)            # histogram counts, last = +Inf
        self.ttft_sum_ms = 0.0
        self.pending = 0                                       # requests queued or running now
        self.active_sequences = 0                              # sequences / streams holding state now

    # -- recording (any thread) ------------------------------------------------------------------

    def execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One model execution over `batch_size` rows."""
        with self._lock:
            self.execution_count += 1
            self.inference_count += batch_size
            b = self.batch[batch_size]
            b[0] += 1
            b[1] += input_ns
            b[2] += infer_ns
            b[3] += output_ns

    def request_done(self, total_ns: int, queue_ns: int = 0, input_ns: int = 0, infer_ns: int = 0,
                     output_ns: int = 0) -> None:
        """One successful request, with its share of the phases."""
        with self._lock:
            for p, ns in (("success", total_ns), ("queue", queue_ns), ("compute_input", input_ns),
                          ("compute_infer", infer_ns), ("compute_output", output_ns)):
                self.phase[p][0] += 1
                self.phase[p][1] += ns
            self.last_inference_ms = int(time.time() * 1000)

    def request_failed(self, total_ns: int, reason: str = "REJECTED") -> None:
        with self._lock:
            self.phase["fail"][0] += 1
            self.phase["fail"][1] += total_ns
            self.failures_by_reason[reason] += 1

    def first_token(self, ms: float) -> None:
        with self._lock:
            i = next((k for k, b in enumerate(TTFT_BUCKETS_MS) if ms <= b), len(TTFT_BUCKETS_MS))
            self.ttft[i] += 1
            self.ttft_sum_ms += ms

    def tokens(self, n: int) -> None:
        with self._lock:
            self.generated_tokens += n

    def add_pending(self, n: int) -> None:
        with self._lock:
            self.pending += n

    # -- views ---------------------------------------------------------------------------------------

    def to_json(self) -> dict:
        """One entry of Triton's {"model_stats": [...]}."""
        with self._lock:
            def pair(c, ns):
                return {"count": c, "ns": ns}

            return {
                "name": self.name,
                "version": self.version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {p: pair(*self.phase[p]) for p in _PHASES},
                "response_stats": {},
                "batch_stats": [{"batch_size": bs, "compute_input": pair(c, i), "compute_infer": pair(c, f),
                                 "compute_output": pair(c, o)}
                                for bs, (c, i, f, o) in sorted(self.batch.items())],
                "memory_usage": [],
            }


# (metric name, type, help, value getter) in Triton's names; durations in microseconds.
_METRICS = (
    ("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes",
     lambda s: s.phase["success"][0]),
    ("nv_inference_count", "counter", "Number of inferences performed (does not include cached requests)",
     lambda s: s.inference_count),
    ("nv_inference_exec_count", "counter", "Number of model executions performed (does not include cached requests)",
     lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "counter", "Cumulative inference request duration in microseconds",
     lambda s: (s.phase["success"][1] + s.phase["fail"][1]) // 1000),
    ("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration in microseconds",
     lambda s: s.phase["queue"][1] // 1000),
    ("nv_inference_compute_input_duration_us", "counter", "Cumulative compute input duration in microseconds",
     lambda s: s.phase["compute_input"][1] // 1000),
    ("nv_inference_compute_infer_duration_us", "counter", "Cumulative compute inference duration in microseconds",
     lambda s: s.phase["compute_infer"][1] // 1000),
    ("nv_inference_compute_output_duration_us", "counter", "Cumulative inference compute output duration in microseconds",
     lambda s: s.phase["compute_output"][1] // 1000),
    ("nv_inference_pending_request_count", "gauge", "Instantaneous number of pending requests awaiting execution",
     lambda s: s.pending),
    ("seqserve_generated_tokens", "counter", "Tokens generated by generation models",
     lambda s: s.generated_tokens),
    ("seqserve_active_sequences", "gauge", "Sequences and generation streams holding state on the server",
     lambda s: s.active_sequences),
)


def metrics_text(stats: list[ModelStats]) -> str:
    """Prometheus text exposition format 0.0.4."""
    out = []

    def labels(s, extra=""):
        return f'model="{_esc(s.name)}",version="{_esc(s.version)}"{extra}'

    for name, kind, help_, get in _METRICS:
        out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        out += [f"{name}{{{labels(s)}}} {get(s)}" for s in stats]
    out += ["# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes",
            "# TYPE nv_inference_request_failure counter"]
    for s in stats:
        for reason in ("REJECTED", "BACKEND"):
            extra = ',reason="%s"' % reason
            out.append(f"nv_inference_request_failure{{{labels(s, extra)}}} {s.failures_by_reason.get(reason, 0)}")
    name = "nv_inference_first_response_histogram_ms"
    out += [f"# HELP {name} Duration from request to first response in milliseconds", f"# TYPE {name} histogram"]
    for s in stats:
        cum = 0
        for b, c in zip((*TTFT_BUCKETS_MS, "+Inf"), s.ttft):
            cum += c
            extra = ',le="%s"' % b
            out.append(f"{name}_bucket{{{labels(s, extra)}}} {cum}")
        out.append(f"{name}_sum{{{labels(s)}}} {s.ttft_sum_ms:.3f}")
        out.append(f"{name}_count{{{labels(s)}}} {cum}")
    return "\n".join(out) + "\n"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
