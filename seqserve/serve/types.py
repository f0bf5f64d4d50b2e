"""What travels between the protocol front ends (HTTP, gRPC) and the served models.

The front ends decode KServe v2 requests into `InferRequest` (numpy tensors by name, request
parameters) and encode `InferResponse` back; models never see JSON, protobuf or HTTP.
Errors a client caused are `ServeError(status, message)`: HTTP status and a gRPC code follow from
it, and the message says what was wrong and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from seqserve.errors import SeqserveError

# KServe v2 datatype <-> numpy. BYTES tensors are numpy object arrays of `bytes`.
DATATYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}
NUMPY_TO_DATATYPE = {np.dtype(v).name: k for k, v in DATATYPES.items() if k != "BYTES"}


def datatype_of(array: np.ndarray) -> str:
    """KServe v2 datatype name of a numpy array ("FP32", "INT64", "BYTES" for object arrays)."""
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        return "BYTES"
    return NUMPY_TO_DATATYPE[array.dtype.name]


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
    # May a small request that looks alone run inline on the loop (worker.py)? Not over gRPC:
    # grpc.aio hands RPCs to the loop one per pass, so concurrent ones look alone and inline runs
    # stopped them batching (measured at concurrency 8: 1.05 requests per execution, 0.78x
    # Triton's throughput; HTTP requests read together batch at 6.5 per execution).
    inline_ok: bool = True


@dataclass
class InferResponse:
    model: str
    version: str
    id: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)   # e.g. sequence_id; triton_final_response
