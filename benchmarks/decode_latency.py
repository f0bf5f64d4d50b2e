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

from cli.main import app  # noqa: E402

if __name__ == "__main__":
    app(args=["bench", *sys.argv[1:]], prog_name="decode_latency.py")
