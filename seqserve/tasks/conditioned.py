"""conditioned: one-to-many generation from a feature vector (image captioning style).

    init   features [B, F] -> the step graph's initial state, under the names of the step graph's
           state inputs (past_hidden [B, L, H], and past_cell for an LSTM): spec.links() shows
           init -> step for each, and the decoding loop starts the step state from them
    step   token ids [B, S] + state -> logits [B, S, V] + next state (as causal-lm's recurrent step)
    full   features [B, F] + token ids [B, S] -> logits [B, S, V], teacher-forced: what init once
           and then step over the same tokens compute

The chain: `init` once per sequence, then `step` on <bos> (and an optional text prefix), then on
each sampled token. spec.io: {"features": F, "bos": True} (generation starts from <bos>).
"""

from __future__ import annotations

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.tasks.causal_lm import LOGITS_NAME, TOKENS_NAME
from seqserve.tasks.spec import (BATCH, FEATURES, FULL, LOGITS, ONCE, SEQ, STATE, STEP, TOKENS, GraphSpec,
                                 StatePair, TaskSpec, TensorSpec)

NAME = "conditioned"
INIT_GRAPH, STEP_GRAPH, FULL_GRAPH = "init", "step", "full"
FEATURES_NAME = "features"


def conditioned_spec(family: str, vocab_size: int, features: int, state: list[tuple[str, str, tuple]],
                     extra: dict) -> TaskSpec:
    """state: (input name, output name, dims) per fixed-size state pair of the step graph."""
    feats = TensorSpec(FEATURES_NAME, "float32", (BATCH, features), FEATURES)
    ids = TensorSpec(TOKENS_NAME, "int64", (BATCH, SEQ), TOKENS)        # the causal-lm step's names
    logits = TensorSpec(LOGITS_NAME, "float32", (BATCH, SEQ, vocab_size), LOGITS)
    past = tuple(TensorSpec(i, "float32", tuple(d), STATE) for i, _, d in state)
    present = tuple(TensorSpec(o, "float32", tuple(d), STATE) for _, o, d in state)
    pairs = tuple(StatePair(i, o) for i, o, _ in state)
    return TaskSpec(NAME, family, {
        INIT_GRAPH: GraphSpec(INIT_GRAPH, (feats,), past, (), ONCE),
        STEP_GRAPH: GraphSpec(STEP_GRAPH, (ids, *past), (logits, *present), pairs, STEP),
        FULL_GRAPH: GraphSpec(FULL_GRAPH, (feats, ids), (logits,), (), FULL),
    }, extra, io={"features": features, "bos": True})


def run_graph(model, graph: GraphSpec, inputs: dict) -> dict:
    """One graph of a conditioned torch model, by tensor names (exporter and torch backend)."""
    if graph.runs == ONCE:
        return model.run_init(inputs)
    if graph.runs == FULL:
        return {graph.name_of(LOGITS): model(inputs[graph.name_of(TOKENS)], inputs[graph.name_of(FEATURES)])}
    return model.run_step(inputs)


def check_features(value, width: int, what: str = "features") -> np.ndarray:
    """A feature array as the init graph takes it: float32 [N, width], finite. Accepts [width]
    (one vector) too. SeqserveError saying what was expected otherwise."""
    a = np.asarray(value)
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise SeqserveError(f"{what} must be float32 numbers; got dtype {a.dtype}")
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != width or a.shape[0] < 1:
        raise SeqserveError(f"{what} must have shape [N, {width}] (or [{width}]): {width} features per "
                            f"vector; got shape {list(np.shape(value))}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise SeqserveError(f"{what} holds NaN or infinite values; every feature must be a finite number")
    return a


def load_features(path, width: int) -> np.ndarray:
    """A .npy file of feature vectors -> float32 [N, width] (check_features)."""
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SeqserveError(f"cannot read features from {path}: {e} (expected a .npy file of shape [N, {width}])") from None
    return check_features(a, width, f"features in {path}")


def examples(raw: dict, width: int) -> tuple[np.ndarray, list[str]]:
    """The held-out examples an export's sidecar carries -> (features [N, width], expected texts)."""
    ex = [e for e in raw.get("examples", []) if isinstance(e, dict) and "features" in e and "text" in e]
    if not ex:
        raise SeqserveError("this export's seqserve.json carries no examples (features and expected text)")
    return check_features([e["features"] for e in ex], width, "the sidecar's example features"), \
        [str(e["text"]) for e in ex]
