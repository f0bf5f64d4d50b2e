"""The interface the protocol front ends (http.py, grpc_service.py) use; implemented by models.py
and repository.py. Front ends depend on this file and types.py only.
"""

from __future__ import annotations

from typing import AsyncIterator, Protocol

from seqserve.serve.types import InferRequest, InferResponse


class ServedModel(Protocol):
    name: str
    version: str
    kind: str          # "full" | "step" | "generate"
    decoupled: bool    # True: stream() may yield many responses per request (generation)
    config: object     # tritonclient.grpc.model_config_pb2.ModelConfig, as served

    def metadata(self) -> dict:
        """KServe v2 model metadata: {"name", "versions", "platform", "inputs": [{"name",
        "datatype", "shape"}], "outputs": [...]} (shape includes -1 for the batch axis)."""

    def config_json(self) -> dict:
        """Triton's model-config JSON (what Triton returns at /v2/models/{m}/config)."""

    async def infer(self, request: InferRequest) -> InferResponse:
        """One request, one response (a generate model returns the whole text at once).
        Raises ServeError for anything the client got wrong."""

    def stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        """Responses as they are produced: one per generated piece of text for a generate model
        (the last has parameters["triton_final_response"] = True and outputs finish_reason), a
        single response for other kinds. Errors before the first response raise ServeError."""


class Repository(Protocol):
    def live(self) -> bool: ...
    def ready(self) -> bool: ...                       # every model that should load has loaded

    def get(self, name: str, version: str = "") -> ServedModel:
        """A ready model; ServeError 404 for an unknown model or version, 503 while unavailable."""

    def index(self, ready_only: bool = False) -> list[dict]:
        """[{"name", "version", "state": "READY"|"UNAVAILABLE"|"LOADING", "reason"}], as Triton."""

    async def load(self, name: str) -> None: ...     # (re)load from disk; ServeError 400/404 with why
    async def unload(self, name: str) -> None: ...

    def server_metadata(self) -> dict:
        """{"name": "seqserve", "version": ..., "extensions": [...]}"""

    def stats_json(self, name: str = "", version: str = "") -> dict:
        """Triton's statistics JSON: {"model_stats": [...]} for one model or all."""

    def metrics_text(self) -> str:
        """Prometheus exposition text with Triton's metric names."""
