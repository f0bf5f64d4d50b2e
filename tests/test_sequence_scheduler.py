"""The sequence scheduler's invariant, deterministically: a sequence's queue is the truth, and a
submitted step is only a wake-up. A step can run before its wake-up arrives (the loop appends to
seq.queue, then submits; an iteration that found the sequence waiting may run it in between):
the late wake-up must be a no-op. (Under perf_analyzer at concurrency 8 it once crashed every
following iteration with IndexError.)"""

from __future__ import annotations

import asyncio

import numpy as np

from seqserve.serve.repository import ModelRepository
from seqserve.serve.sequences import _Sequence, _Step


def test_a_wake_up_for_a_step_that_already_ran_is_a_no_op(served_repo):
    repo = ModelRepository(served_repo("lstm"))
    repo.load_all(["lstm_step"])
    model = repo.get("lstm_step")
    try:
        loop = asyncio.new_event_loop()
        seq = _Sequence(7)
        step = _Step(seq, np.array([[5]], np.int64), False, loop, loop.create_future(), 0)
        seq.queue.append(step)
        worker = model.worker
        with worker._run_lock:                     # the worker thread stays out meanwhile
            worker.waiting.append(seq)             # found waiting: the step runs now...
            worker.iteration([])
            assert not seq.queue and seq.state is not None
            worker.iteration([step])               # ...and its late wake-up does nothing
            assert list(worker.waiting) == []
        loop.run_until_complete(asyncio.sleep(0))  # deliver the reply
        assert step.fut.result().shape == (1, 1, 98)
        loop.close()
    finally:
        repo.close()
