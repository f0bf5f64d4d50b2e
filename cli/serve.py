"""seqserve serve."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console


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
    api_key: Annotated[Optional[str], typer.Option(
        help="Require `Authorization: Bearer KEY` (default: $SEQSERVE_API_KEY; health checks stay open).")] = None,
    max_request_bytes: Annotated[int, typer.Option(help="Largest request body accepted (413 above).")] = 64 << 20,
    drain_seconds: Annotated[float, typer.Option(help="On SIGTERM/Ctrl-C, wait this long for in-flight work.")] = 30.0,
):
    """Serve every model of a repository over HTTP and gRPC, speaking Triton's KServe v2 protocol."""
    from seqserve.runtime import RuntimeOptions
    from seqserve.serve.server import ServerConfig, run_server

    config = ServerConfig(
        repository=repository, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        api_key=api_key or os.environ.get("SEQSERVE_API_KEY") or None, max_request_bytes=max_request_bytes,
        drain_seconds=drain_seconds, models=tuple(model or ()),
        runtime=RuntimeOptions(device=device, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads))
    console.print(f"loading models from {repository} …", markup=False, highlight=False)
    run_server(config, on_loaded=print_models, on_ready=print_endpoints)
    console.print("server stopped", style="dim")


def print_models(repo) -> None:
    from rich.table import Table

    t = Table(title="models", title_justify="left")
    for col in ("model", "version", "kind", "state"):
        t.add_column(col)
    for row in repo.index():
        try:
            kind = repo.get(row["name"], row["version"]).kind if row["state"] == "READY" else ""
        except Exception:
            kind = ""
        state = row["state"] + (f": {row['reason']}" if row["reason"] else "")
        t.add_row(row["name"], row["version"], kind, state, style=None if row["state"] == "READY" else "red")
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
