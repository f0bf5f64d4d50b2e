"""What a load test is asked to do: one frozen dataclass, plus the parsers the CLI uses for it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from seqserve.errors import SeqserveError

WORKLOADS = ("infer", "sequence", "generate")
PROTOCOLS = ("http", "grpc")
MODES = ("concurrency", "request_rate")
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
LATE_MS = 1.0          # an open-loop send later than this after its scheduled time counts as late
BEHIND_SHARE = 0.05    # ... and a level with more than this share of late sends is flagged


@dataclass(frozen=True)
class Target:
    """Where the server is: protocol, host and port (from --url and --protocol)."""

    protocol: str          # "http" | "grpc"
    host: str
    port: int
    https: bool = False    # http only

    @property
    def address(self) -> str:              # host:port, as perf_analyzer's -u takes it
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        scheme = "https" if self.https else self.protocol
        return f"{scheme}://{self.address}"


@dataclass(frozen=True)
class LoadTestConfig:
    target: Target
    model: str
    workload: str = "infer"                # infer | sequence | generate
    mode: str = "concurrency"              # concurrency (closed loop) | request_rate (open loop, Poisson)
    levels: tuple[float, ...] = (1,)       # concurrencies or request rates (requests/s), in order
    duration_s: float | None = 10.0        # measured window per level (None: --requests decides)
    requests: int | None = None            # measured requests per level instead of a duration
    warmup_s: float = 2.0                  # load before each window, not measured
    sequence_length: int = 20              # steps per sequence (workload sequence)
    input_length: int | None = None        # size of each variable input axis (tokens per request);
                                           # for generate: characters per synthesized prompt
    prompts: Path | None = None            # generate: prompts file; infer/sequence: perf_analyzer JSON data
    max_tokens: int = 64                   # generate: max_tokens sent with every request
    report_dir: Path | None = None         # results.json, results.csv, report.html + PNGs
    metrics_url: str | None = ""           # Prometheus /metrics; "" = same host, port 8002; None = off
    api_key: str | None = None             # Authorization: Bearer (HTTP) / metadata (gRPC)
    timeout_s: float = 30.0                # a request without an answer after this is an error
    drain_s: float = 10.0                  # after a window, wait at most this for requests in flight
    max_connections: int = 512             # open loop: connections (HTTP) / requests in flight at most
    seed: int = 0                          # inputs, prompts, arrival times

    @property
    def closed_loop(self) -> bool:
        return self.mode == "concurrency"

    @property
    def level_name(self) -> str:           # perf_analyzer's CSV column for the load level
        return "Concurrency" if self.closed_loop else "Request Rate"


def parse_target(url: str, protocol: str | None) -> Target:
    """--url http://HOST:PORT | grpc://HOST:PORT | HOST:PORT, with --protocol (when the URL has no
    scheme, or to confirm it). Default ports: 8000 (HTTP), 8001 (gRPC), as Triton."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise SeqserveError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    u = urlparse(url if "://" in url else f"//{url}")
    scheme = u.scheme or protocol or "http"
    if scheme not in ("http", "https", "grpc"):
        raise SeqserveError(f"--url {url!r}: expected http://HOST:PORT or grpc://HOST:PORT")
    proto = "grpc" if scheme == "grpc" else "http"
    if protocol is not None and u.scheme and protocol != proto:
        raise SeqserveError(f"--url {url!r} is a {proto} address but --protocol is {protocol}; "
                            f"give HOST:PORT with --protocol, or a {protocol}:// URL")
    try:
        port = u.port
    except ValueError:
        raise SeqserveError(f"--url {url!r} has an invalid port") from None
    if not u.hostname or (u.path not in ("", "/")):
        raise SeqserveError(f"--url {url!r} is not a server address; expected http://HOST:PORT or grpc://HOST:PORT")
    return Target(proto, u.hostname, port or (443 if scheme == "https" else DEFAULT_PORTS[proto]),
                  https=scheme == "https")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min)?\s*$")


def parse_duration(text: str, option: str = "--duration") -> float:
    """'10s', '500ms', '2m', '1.5' (seconds) -> seconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise SeqserveError(f"{option} {text!r}: expected a duration such as 10s, 500ms or 2m")
    value = float(m.group(1)) * {"ms": 1e-3, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0}[m.group(2)]
    return value


def parse_levels(text: str, option: str, integer: bool) -> tuple[float, ...]:
    """'1,2,4,8' -> (1, 2, 4, 8); each level > 0 (whole numbers for concurrency)."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise SeqserveError(f"{option} {text!r}: {part!r} is not a number; expected e.g. "
                                f"{'1,4,16' if integer else '50,100,200'}") from None
        if v <= 0 or (integer and v != int(v)):
            raise SeqserveError(f"{option} {text!r}: each level must be a "
                                f"{'whole number' if integer else 'number'} above 0")
        out.append(int(v) if integer or v == int(v) else v)
    if not out:
        raise SeqserveError(f"{option} {text!r}: give at least one level")
    return tuple(out)


def make_config(url: str, model: str, *, protocol: str | None = None, workload: str = "infer",
                concurrency: str | None = None, request_rate: str | None = None,
                duration: str | None = None, requests: int | None = None, warmup: str = "2s",
                **kw) -> LoadTestConfig:
    """A checked LoadTestConfig from the CLI's strings; SeqserveError (one line) for anything wrong."""
    if workload not in WORKLOADS:
        raise SeqserveError(f"--workload {workload!r}: expected one of {', '.join(WORKLOADS)}")
    if concurrency is not None and request_rate is not None:
        raise SeqserveError("give --concurrency (closed loop) or --request-rate (open loop), not both")
    if request_rate is not None:
        mode, levels = "request_rate", parse_levels(request_rate, "--request-rate", integer=False)
    else:
        mode, levels = "concurrency", parse_levels(concurrency or "1", "--concurrency", integer=True)
    if duration is not None and requests is not None:
        raise SeqserveError("give --duration or --requests, not both")
    if requests is not None and requests < 1:
        raise SeqserveError(f"--requests {requests}: expected at least 1")
    duration_s = None if requests is not None else parse_duration(duration or "10s")
    if duration_s is not None and duration_s <= 0:
        raise SeqserveError(f"--duration {duration}: expected more than 0")
    warmup_s = parse_duration(warmup, "--warmup")
    for name, minimum in (("sequence_length", 1), ("input_length", 1), ("max_tokens", 1), ("max_connections", 1)):
        v = kw.get(name)
        if v is not None and v < minimum:
            raise SeqserveError(f"--{name.replace('_', '-')} {v}: expected at least {minimum}")
    if kw.get("timeout_s") is not None and kw["timeout_s"] <= 0:
        raise SeqserveError("--timeout must be more than 0")
    prompts = kw.get("prompts")
    if prompts is not None:
        if not Path(prompts).is_file():
            raise SeqserveError(f"--prompts {prompts}: no such file")
        kw["prompts"] = Path(prompts)
    if kw.get("report_dir") is not None:
        kw["report_dir"] = Path(kw["report_dir"])
    metrics_url = kw.pop("metrics_url", None) or ""      # "": the server's host, port 8002
    if metrics_url.strip().lower() in ("none", "off"):
        metrics_url = None
    elif metrics_url and "://" not in metrics_url:
        raise SeqserveError(f"--metrics-url {metrics_url!r}: expected http://HOST:PORT/metrics, or none")
    return LoadTestConfig(target=parse_target(url, protocol), model=model, workload=workload, mode=mode,
                          levels=levels, duration_s=duration_s, requests=requests, warmup_s=warmup_s,
                          metrics_url=metrics_url,
                          **{k: v for k, v in kw.items() if v is not None})
