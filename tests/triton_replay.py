"""Replay sequences against a triton-gpu repository's graphs exactly as Triton would feed them
(seqserve.triton.onnxruntime_backend.SequenceModel: implicit state from the state dims with -1 -> 1
and the initial_state's zero bytes, carried output -> input, controls from the request's flags,
batching as max_batch_size allows), and compare every response with the in-process reference:
the export's step graph run with seqserve's own DecodeState, one sequence at a time.

Used by tests/test_triton_gpu.py; importable from a scratch script to replay configs written by
another version of the package writer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqserve.generation.cache import DecodeState
from seqserve.package import load_version, read_config
from seqserve.runtime import RuntimeOptions
from seqserve.runtime.ort import OrtBackend
from seqserve.triton.onnxruntime_backend import SequenceModel

TOLERANCE = 1e-4

# corrid -> token chunk lengths: a prompt then steps; interleaved round by round. Sequence 4 reuses
# id 1 after sequence 1 ended (START must reset the state Triton keeps for that id).
PLAN = {1: [3, 1, 1], 2: [1, 1, 2, 1], 3: [5, 1, 1, 1], 5: [1, 1, 1, 1, 1]}
REUSE = (1, [2, 1, 1])


def _client_inputs(cfg, ids: np.ndarray, past: int) -> dict:
    """What a client sends for config inputs: input_ids, and attention_mask/position_ids if the
    config asks the client for them (the old triton-gpu contract)."""
    out = {}
    for io in cfg.input:
        if io.name == "input_ids":
            out[io.name] = ids
        elif io.name == "attention_mask":
            out[io.name] = np.ones((1, past + ids.shape[1]), np.int64)
        elif io.name == "position_ids":
            out[io.name] = np.arange(past, past + ids.shape[1], dtype=np.int64)[None]
        else:
            raise AssertionError(f"the replay does not know what to send for config input {io.name}")
    return out


def replay_step_model(model_dir: str | Path, seed: int = 0, strict: bool = True) -> dict:
    """Replay PLAN (and the id reuse) on model_dir (a NAME_step model). Returns {"max_diff",
    "executions", "requests", "max_rows"}; raises BackendError where Triton would fail."""
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    triton = SequenceModel.from_folder(model_dir, 1, strict=strict)
    served = load_version(model_dir / "1")
    ref_backend = OrtBackend(served.info, "step", RuntimeOptions(intra_op_threads=1))
    spec = ref_backend.spec
    vocab = served.info.tokenizer.vocab_size
    rng = np.random.default_rng(seed)

    plans = [(cid, list(chunks)) for cid, chunks in PLAN.items()]
    ref_state: dict[int, DecodeState] = {}
    past: dict[int, int] = {}
    worst, requests, max_rows = 0.0, 0, 0
    reused = False
    while plans:
        # one round: the next chunk of every active sequence, batched as the oldest strategy would
        # (requests of equal shape, at most max_batch_size rows per execution)
        round_ = []
        for cid, chunks in plans:
            n = chunks.pop(0)
            start = cid not in past
            end = not chunks
            round_.append((cid, rng.integers(0, vocab, (1, n), dtype=np.int64), start, end))
        plans = [(c, ch) for c, ch in plans if ch]
        groups: dict[int, list] = {}
        for item in round_:
            groups.setdefault(item[1].shape[1], []).append(item)
        for items in groups.values():
            for i in range(0, len(items), max(cfg.max_batch_size, 1)):
                batch = items[i:i + max(cfg.max_batch_size, 1)]
                requests_ = [(_client_inputs(cfg, ids, past.get(cid, 0)), cid, start, end)
                             for cid, ids, start, end in batch]
                outs = triton.execute(requests_)
                max_rows = max(max_rows, len(batch))
                for (cid, ids, start, end), out in zip(batch, outs):
                    requests += 1
                    st = DecodeState.empty(spec, 1, ref_backend) if start else ref_state[cid]
                    feeds = st.feeds(ids)
                    ref = ref_backend.run(feeds)
                    ref_state[cid] = st.advance(feeds, ref)
                    worst = max(worst, float(np.max(np.abs(out["logits"] - ref["logits"]))))
                    past[cid] = (0 if start else past[cid]) + ids.shape[1]
                    if end:
                        del ref_state[cid], past[cid]
        if not reused and 1 not in past and all(c != REUSE[0] for c, _ in plans):
            plans.append((REUSE[0], list(REUSE[1])))
            reused = True
    return {"max_diff": worst, "executions": triton.executions, "requests": requests, "max_rows": max_rows}


def replay_full_model(model_dir: str | Path, seed: int = 0, strict: bool = True) -> dict:
    """Three requests of equal length batched in one execution (dynamic batching), and one alone,
    against the export's full graph run in-process."""
    model_dir = Path(model_dir)
    triton = SequenceModel.from_folder(model_dir, 1, strict=strict)
    served = load_version(model_dir / "1")
    ref_backend = OrtBackend(served.info, "full", RuntimeOptions(intra_op_threads=1))
    vocab = served.info.tokenizer.vocab_size
    rng = np.random.default_rng(seed)
    worst = 0.0
    for rows, n in ((3, 6), (1, 2)):
        reqs = [({"input_ids": rng.integers(0, vocab, (1, n), dtype=np.int64)}, i, False, False) for i in range(rows)]
        outs = triton.execute(reqs)
        for (inp, *_), out in zip(reqs, outs):
            ref = ref_backend.run({"input_ids": inp["input_ids"]})
            worst = max(worst, float(np.max(np.abs(out["logits"] - ref["logits"]))))
    return {"max_diff": worst, "executions": triton.executions}
