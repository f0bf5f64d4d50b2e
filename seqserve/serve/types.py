"""What travels between the protocol front ends (HTTP, gRPC) and the served models.

The front ends decode KServe v2 requests into `InferRequest` (numpy tensors by name, request
parameters) and encode `InferResponse` back; models never see JSON, protobuf or HTTP.
Errors a client caused are `ServeError(status, message)`: HTTP status and a gRPC code follow from
it, and the message says what was wrong and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from seqserve.dtypes import NUMPY, kserve_datatype
from seqserve.errors import SeqserveError

# KServe v2 datatype <-> numpy: seqserve/dtypes.py (BYTES tensors are numpy object arrays of bytes).
DATATYPES = NUMPY
datatype_of = kserve_datatype


class ServeError(SeqserveError):
    """A request the client got wrong (4xx), or a state the server is in (503).

    status: HTTP status — 400 bad request, 404 unknown model/version/sequence, 413 too large,
    429 too many sequences, 401 missing/wrong API key, 503 not ready / shutting down.
    """

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None   # HTTP only: send as binary tensor data (None: request default)
    classification: int | None = None   # Triton's classification extension: top-K "score:index:label"


@dataclass
class InferRequest:
    model: str
    version: str = ""                       # "" = the model's latest/only version
    id: str = ""
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None   # None = all outputs
    # Request parameters, decoded to Python values: sequence_id (int or str), sequence_start /
    # sequence_end (bool), binary_data_output (bool), generation parameters, ...
    parameters: dict = field(default_factory=dict)
    # May a small request that looks alone run inline on the loop (worker.py)? Over gRPC only
    # when the servicer has seen no concurrency lately (grpc_service.py): grpc.aio hands RPCs to
    # the loop one per pass, so concurrent ones look alone and inline runs stopped them batching
    # (measured at concurrency 8: 1.05 requests per execution, 0.78x Triton's throughput; HTTP
    # requests read together batch at 6.5 per execution).
    inline_ok: bool = True


@dataclass
class InferResponse:
    model: str
    version: str
    id: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)   # e.g. sequence_id; triton_final_response
