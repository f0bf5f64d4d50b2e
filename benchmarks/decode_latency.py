#!/usr/bin/env python
"""Per-token decode latency at batch 1: torch eager (with / without KV cache) vs ONNX Runtime.

    python benchmarks/decode_latency.py                       # gpt @ 64,256,1024 + lstm, gru, rnn
    python benchmarks/decode_latency.py --families gpt --contexts 64,1024 --json out.json

Same benchmark as `seqserve bench`; see benchmarks/README.md and seqserve/bench.py.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from seqserve.bench import ALL_FAMILIES, DEFAULT_CONTEXTS, BenchConfig

    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(ALL_FAMILIES), help="comma-separated: gpt,lstm,gru,rnn")
    p.add_argument("--contexts", default=",".join(map(str, DEFAULT_CONTEXTS)), help="gpt context lengths")
    p.add_argument("--steps", type=int, default=d.steps, help="timed decode steps per variant and round")
    p.add_argument("--rounds", type=int, default=d.rounds, help="interleaved rounds over the variants")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps at the start of each round")
    p.add_argument("--nocache-steps", type=int, default=d.nocache_steps,
                   help="timed torch no-cache steps per round; 0 = fewer as the context grows")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="ORT intra-op threads and torch threads; 0 = one per physical core")
    p.add_argument("--rnn-context", type=int, default=d.rnn_context, help="prefill length for rnn/lstm/gru")
    p.add_argument("--preset", default=d.preset, help="model size preset (tiny, small)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", dest="json_out", default=None, help="also write the results to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    a = p.parse_args(argv)

    from rich.console import Console

    from seqserve.bench import parse_list, render, run_benchmark, write_json
    from seqserve.errors import SeqserveError

    err = Console(stderr=True)
    try:
        config = BenchConfig(
            families=parse_list(a.families, "families"), contexts=parse_list(a.contexts, "contexts", int),
            steps=a.steps, rounds=a.rounds, warmup=a.warmup, nocache_steps=a.nocache_steps, threads=a.threads,
            rnn_context=a.rnn_context, preset=a.preset, seed=a.seed)
        results = run_benchmark(config, progress=None if a.quiet else (lambda m: err.print(f"[dim]{m}[/]")))
        render(results, Console(width=max(Console().width, 120)))
        if a.json_out:
            write_json(results, a.json_out)
    except SeqserveError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
