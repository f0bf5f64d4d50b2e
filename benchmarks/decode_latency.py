#!/usr/bin/env python
"""Per-token decode latency at batch 1: torch eager (with / without KV cache) vs ONNX Runtime.

    python benchmarks/decode_latency.py                       # gpt @ 64,256,1024 + lstm, gru, rnn
    python benchmarks/decode_latency.py --families gpt --contexts 64,1024 --json out.json

The same command as `seqserve bench` (all its options; --help lists them). What is measured is in
seqserve/bench/decode.py; benchmarks/README.md says how to read the output.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runnable from a plain checkout

import typer  # noqa: E402

from cli.bench import command  # noqa: E402
from cli.common import handle_errors  # noqa: E402

if __name__ == "__main__":
    # One command, not the CLI's group: --help's usage line reads "decode_latency.py [OPTIONS]".
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(handle_errors(command))
    app(prog_name="decode_latency.py")
