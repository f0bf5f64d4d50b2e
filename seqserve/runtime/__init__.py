"""Backends that run one step of a family's graph by tensor names.

The Backend protocol (what the decoding loop and the validator need):
    spec: GraphSpec                         # the graph this backend runs
    run(feeds: dict[str, array]) -> dict    # outputs by name; logits always a numpy array,
                                            # state outputs may stay backend-native (device)
    to_host(value) -> np.ndarray / from_host(np.ndarray) -> value
"""

from seqserve.runtime.ort import OrtBackend, RuntimeOptions, create_session


def make_backend(export_info, backend: str = "ort", graph: str = "step",
                 options: RuntimeOptions = RuntimeOptions()):
    from seqserve.errors import SeqserveError

    if backend == "ort":
        return ort_backend(export_info, graph, options)
    if backend == "torch":
        from seqserve.runtime.torch_backend import TorchBackend

        return TorchBackend.from_export(export_info, graph, options.device)
    raise SeqserveError(f"unknown backend {backend!r}; expected ort or torch")


def ort_backend(export_info, graph: str = "step", options: RuntimeOptions = RuntimeOptions()):
    """OrtBackend, or StaticOrtBackend for a graph whose KV cache is updated in place."""
    if any(p.in_place for p in export_info.graph(graph).state):
        from seqserve.runtime.static_ort import StaticOrtBackend

        return StaticOrtBackend(export_info, graph, options)
    return OrtBackend(export_info, graph, options)


def make_chain(export_info, backend: str = "ort", options: RuntimeOptions = RuntimeOptions()):
    """-> (the step graph's backend, the generation Chain: a backend per `once` graph of the task,
    in chain order, and whether sequences start from <bos>). causal-lm: no once graphs."""
    from seqserve.generation.loop import Chain

    spec = export_info.spec
    step = make_backend(export_info, backend, spec.step.name, options)
    once = tuple(make_backend(export_info, backend, g.name, options) for g in spec.once)
    return step, Chain(once, bool(spec.io.get("bos")))


__all__ = ["OrtBackend", "RuntimeOptions", "create_session", "make_backend", "make_chain", "ort_backend"]
