"""The serving half of `seqserve quickstart`: start the embedded server on the packaged repository,
show a streamed generation and a stateful sequence against it with real clients, print how to
query it, and keep serving until Ctrl-C (or --serve-seconds)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

from cli.common import console, err_console


def _free_or_any(port: int) -> int:
    """`port` if it can be bound on 127.0.0.1, else 0 (the server picks a free one)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            return 0


def serve_with_demo(repository: Path, families: list[str], prompt: str, ports: tuple[int, int, int],
                    serve_seconds: float) -> None:
    import typer
    from rich.rule import Rule

    from cli.serve import print_endpoints, print_models
    from seqserve.serve.server import ServerConfig, run_server

    http, grpc, metrics = (_free_or_any(p) for p in ports)
    config = ServerConfig(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                          models=tuple(f"{f}{k}" for f in families for k in ("", "_step", "_generate")))
    failed = []

    def on_ready(server):
        loop = asyncio.get_running_loop()
        print_endpoints(server)

        def demo():
            try:
                _demo(server, repository, families, prompt)
                until = f"for {serve_seconds:g} s" if serve_seconds > 0 else "until Ctrl-C"
                console.print(f"serving {repository}/ {until}", style="bold", markup=False, highlight=False)
                if serve_seconds > 0:
                    time.sleep(serve_seconds)
                    loop.call_soon_threadsafe(server.request_stop)
            except Exception as e:     # show it, then stop: the quickstart must not pretend it worked
                failed.append(e)
                err_console.print(f"[bold red]error:[/] the serving demo failed: {e}", highlight=False)
                loop.call_soon_threadsafe(server.request_stop)

        threading.Thread(target=demo, name="quickstart-demo", daemon=True).start()

    console.print(Rule("serve"))
    run_server(config, on_loaded=print_models, on_ready=on_ready)
    if failed:
        raise typer.Exit(2)
    console.print("server stopped", style="dim")


def _demo(server, repository: Path, families: list[str], prompt: str) -> None:
    from rich.rule import Rule

    from seqserve.generation import SamplingParams
    from seqserve.serve.client import RemoteGenerator

    http, grpc = server.ports["http"], server.ports.get("grpc")
    for fam in families:
        console.print(Rule(f"{fam}: streamed generation over HTTP (server-sent events)", style="dim"))
        gen = RemoteGenerator(f"http://127.0.0.1:{http}", f"{fam}_generate")
        console.print(prompt, style="dim", end="", highlight=False, markup=False)
        for piece, finish in gen.stream(prompt, SamplingParams(max_tokens=120, temperature=0.7, top_k=20, seed=0)):
            console.print(piece, end="", highlight=False, markup=False)
        console.print()
        if grpc:
            _sequence_demo(repository, fam, grpc)
    console.print(Rule("query it yourself"))
    f = families[0]
    console.print(f"""\
curl -s -X POST http://127.0.0.1:{http}/v2/models/{f}_generate/generate \\
     -d '{{"text_input": "def ", "max_tokens": 60, "temperature": 0}}'
curl -sN -X POST http://127.0.0.1:{http}/v2/models/{f}_generate/generate_stream \\
     -d '{{"text_input": "import ", "max_tokens": 60, "temperature": 0.8, "top_k": 20}}'
curl -s -X POST http://127.0.0.1:{http}/v2/models/{f}/infer \\
     -d '{{"inputs": [{{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [10, 11, 12]}}]}}'
curl -s http://127.0.0.1:{server.ports.get('metrics', 8002)}/metrics | grep nv_inference_count

python - <<'EOF'
import numpy as np, tritonclient.http as httpclient
c = httpclient.InferenceServerClient("127.0.0.1:{http}")
x = httpclient.InferInput("input_ids", [1, 1], "INT64"); x.set_data_from_numpy(np.array([[10]]))
r = c.infer("{f}_step", [x], sequence_id=7, sequence_start=True,    # the server keeps the state
            headers={{"x-sequence-id": "7"}})                          # a proxy routes on this
print(r.as_numpy("logits").shape)
EOF
seqserve generate --url http://127.0.0.1:{http} --model {f} --prompt "def " --greedy""",
                  highlight=False, markup=False, soft_wrap=True)


def _sequence_demo(repository: Path, fam: str, grpc_port: int) -> None:
    """Feed a text one character per request into NAME_step under one sequence_id (gRPC), then
    check the last logits against one full-sequence request: the server carried the state."""
    import numpy as np
    import tritonclient.grpc as g
    from rich.table import Table

    from seqserve.package import list_versions, load_version
    from seqserve.serve.routing import routing_headers

    folder = repository / f"{fam}_step"
    tok = load_version(folder / str(list_versions(folder)[-1])).info.tokenizer
    text = "for i in range("
    ids = tok.encode(text)
    client = g.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        t = Table(title=f"{fam}_step: stateful sequence 42 over gRPC, one character per request",
                  title_justify="left")
        for col in ("request", "fed", "flags", "most likely next"):
            t.add_column(col)
        last = None
        for i, tid in enumerate(ids):
            x = g.InferInput("input_ids", [1, 1], "INT64")
            x.set_data_from_numpy(np.array([[tid]], np.int64))
            end = i == len(ids) - 1
            r = client.infer(f"{fam}_step", [x], sequence_id=42, sequence_start=i == 0, sequence_end=end,
                             headers=routing_headers(42))   # the routing key: a proxy keeps the sequence on one replica
            last = r.as_numpy("logits")[0, -1]
            flags = "start" if i == 0 else ("end" if end else "")
            t.add_row(str(i + 1), repr(text[i]), flags, repr(tok.decode([int(last.argmax())])))
        x = g.InferInput("input_ids", [1, len(ids)], "INT64")
        x.set_data_from_numpy(np.array([ids], np.int64))
        full = client.infer(fam, [x]).as_numpy("logits")[0, -1]
    finally:
        client.close()
    console.print(t)
    console.print(f"last logits vs one full-sequence request to '{fam}': max |diff| = "
                  f"{float(np.abs(full - last).max()):.2e} — the server held the state between requests",
                  highlight=False, soft_wrap=True)
