"""seqserve serve."""

from __future__ import annotations

import math
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console


class Engine(str, Enum):
    seqserve = "seqserve"
    triton = "triton"


def command(
    repository: Annotated[Path, typer.Option(help="Model repository from `seqserve package`.")] = Path("model_repository"),
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server (set --api-key).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP (KServe v2) port; 0 = any free port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port; 0 = any free port, -1 = off.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus /metrics port; 0 = any, -1 = off.")] = 8002,
    model: Annotated[Optional[list[str]], typer.Option(help="Serve only this model (repeatable).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (ONNX Runtime CUDA provider, caches kept on the GPU).")] = "cpu",
    intra_op_threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads per model; 0 = one per core.")] = 0,
    inter_op_threads: Annotated[int, typer.Option(help="ONNX Runtime inter-op threads per model.")] = 1,
    ort_spinning: Annotated[Optional[bool], typer.Option(
        "--ort-spinning/--no-ort-spinning",
        help="Let ONNX Runtime's idle pool threads spin (session.intra_op.allow_spinning); default: ORT's (spin).")] = None,
    api_key: Annotated[Optional[str], typer.Option(
        help="Require `Authorization: Bearer KEY` (default: $SEQSERVE_API_KEY; health checks stay open).")] = None,
    max_request_bytes: Annotated[int, typer.Option(help="Largest request body accepted (413 above).")] = 64 << 20,
    drain_seconds: Annotated[float, typer.Option(help="On SIGTERM/Ctrl-C, wait this long for in-flight work.")] = 30.0,
    engine: Annotated[Engine, typer.Option(
        help="seqserve: the embedded server. triton: a real tritonserver 2.51 (python-backend models) from "
             "the optional `triton` extra of seqserve or `python -m seqserve.triton.launcher fetch`.")] = Engine.seqserve,
    python_env: Annotated[Optional[Path], typer.Option(
        help="--engine triton: the environment (prefix with bin/python3) python-backend models run in "
             "(default: this one, or its numpy-1 overlay).")] = None,
    triton_log: Annotated[Optional[Path], typer.Option(
        help="--engine triton: keep tritonserver's log in this file (default: a temporary one).")] = None,
    triton_arg: Annotated[Optional[list[str]], typer.Option(
        help="--engine triton: one more tritonserver flag, e.g. --triton-arg=--log-verbose=1 (repeatable).")] = None,
):
    """Serve every model of a repository over HTTP and gRPC, speaking Triton's KServe v2 protocol."""
    if engine is Engine.triton:
        return serve_triton(repository=repository, host=host, http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port, model=model, device=device, api_key=api_key,
                            drain_seconds=drain_seconds, python_env=python_env, triton_log=triton_log,
                            triton_arg=triton_arg, ignored={
                                "--intra-op-threads": intra_op_threads != 0, "--inter-op-threads": inter_op_threads != 1,
                                "--ort-spinning": ort_spinning is not None,
                                "--max-request-bytes": max_request_bytes != 64 << 20})
    from seqserve.runtime import RuntimeOptions
    from seqserve.serve.server import ServerConfig, run_server

    config = ServerConfig(
        repository=repository, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        api_key=api_key or os.environ.get("SEQSERVE_API_KEY") or None, max_request_bytes=max_request_bytes,
        drain_seconds=drain_seconds, models=tuple(model or ()),
        runtime=RuntimeOptions(device=device, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads,
                               allow_spinning=ort_spinning))
    console.print(f"loading models from {repository} …", markup=False, highlight=False)
    run_server(config, on_loaded=print_models, on_ready=print_endpoints)
    console.print("server stopped", style="dim")


def serve_triton(*, repository: Path, host: str, http_port: int, grpc_port: int, metrics_port: int,
                 model: Optional[list[str]], device: str, api_key: Optional[str], drain_seconds: float,
                 python_env: Optional[Path], triton_log: Optional[Path], triton_arg: Optional[list[str]],
                 ignored: dict[str, bool]) -> None:
    """`seqserve serve --engine triton`: tritonserver in the foreground (seqserve.triton.launcher.serve)."""
    from seqserve.errors import SeqserveError
    from seqserve.triton.launcher import TRITONSERVER_VERSION, TritonConfig, serve

    if api_key or os.environ.get("SEQSERVE_API_KEY"):
        raise SeqserveError("--engine triton has no API-key check: drop --api-key / unset SEQSERVE_API_KEY, "
                            "or put an authenticating proxy in front of tritonserver")
    if device != "cpu":
        console.print(f"[yellow]note:[/] --device {device} is not used by --engine triton: a python-backend model "
                      "picks its own device (instance_group kind, onnxruntime providers in its model.py); Triton's "
                      "native onnxruntime backend on a GPU needs NVIDIA's tritonserver container", highlight=False)
    for flag in (f for f, changed in ignored.items() if changed):
        console.print(f"[yellow]note:[/] {flag} is not used by --engine triton", highlight=False)
    config = TritonConfig(
        repository=repository, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        models=tuple(model or ()), python_env=python_env, log_file=triton_log,
        exit_timeout_s=max(1, math.ceil(drain_seconds)), extra_args=tuple(triton_arg or ()))
    console.print(f"starting tritonserver {TRITONSERVER_VERSION} on {repository} …", markup=False, highlight=False)

    def on_ready(server) -> None:
        print_table([(m.name, m.version, m.backend, m.state, m.summary) for m in server.models()], "backend")
        if triton_log:
            console.print(f"       tritonserver log: {triton_log}", style="dim", highlight=False)
        print_endpoints(server)

    rc = serve(config, on_ready=on_ready)
    # as the embedded server, a stop that outlasts --drain-seconds (or a second Ctrl-C) still exits 0
    if rc < 0:
        console.print("[yellow]note:[/] tritonserver was killed (second Ctrl-C/SIGTERM)", highlight=False)
    elif rc != 0:
        console.print(f"[yellow]note:[/] tritonserver did not finish within {config.exit_timeout_s} s and stopped "
                      f"anyway (exit code {rc}): requests in flight, or clients keeping HTTP connections open",
                      highlight=False)
    console.print("server stopped", style="dim")


def print_models(repo) -> None:
    rows = []
    for row in repo.index():
        try:
            kind = repo.get(row["name"], row["version"]).kind if row["state"] == "READY" else ""
        except Exception:
            kind = ""
        rows.append((row["name"], row["version"], kind, row["state"], row["reason"]))
    print_table(rows, "kind")


def print_table(rows, kind_column: str) -> None:
    """One row per model: (name, version, kind, state, reason); rows not READY in red."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title="models", title_justify="left")
    for col in ("model", "version", kind_column, "state"):
        t.add_column(col)
    for name, version, kind, state, reason in rows:   # Text: a reason like "[ONNXRuntimeError]" is no markup
        t.add_row(*(Text(str(c)) for c in (name, version, kind, state + (f": {reason}" if reason else ""))),
                  style=None if state == "READY" else "red")
    console.print(t)


def print_endpoints(server) -> None:
    host, p = server.config.host, server.ports
    console.print(f"[bold green]ready[/]  HTTP http://{host}:{p['http']}", highlight=False)
    if "grpc" in p:
        console.print(f"       gRPC {host}:{p['grpc']}", highlight=False)
    if "metrics" in p:
        console.print(f"       metrics http://{host}:{p['metrics']}/metrics", highlight=False)
    console.print("       Ctrl-C or SIGTERM drains in-flight requests, then stops", style="dim")
    # One machine-readable line for scripts and tests that start the server with port 0.
    print(f"SEQSERVE_READY http={p['http']} grpc={p.get('grpc', -1)} metrics={p.get('metrics', -1)}", flush=True)
