"""The one dtype table: numpy <-> KServe v2 datatype <-> Triton config type <-> ONNX element type.

Every module that translates a tensor type between two of these worlds (the spec's numpy names,
the wire's KServe names, config.pbtxt's TYPE_ names, ONNX graphs' element types) reads the maps
below; none keeps a table of its own. No onnx or tritonclient import: the serving path stays light.
"""

from __future__ import annotations

import numpy as np

# numpy name, KServe datatype, Triton config type, ONNX TensorProto element type
_TABLE = (
    ("bool", "BOOL", "TYPE_BOOL", 9),
    ("uint8", "UINT8", "TYPE_UINT8", 2),
    ("uint16", "UINT16", "TYPE_UINT16", 4),
    ("uint32", "UINT32", "TYPE_UINT32", 12),
    ("uint64", "UINT64", "TYPE_UINT64", 13),
    ("int8", "INT8", "TYPE_INT8", 3),
    ("int16", "INT16", "TYPE_INT16", 5),
    ("int32", "INT32", "TYPE_INT32", 6),
    ("int64", "INT64", "TYPE_INT64", 7),
    ("float16", "FP16", "TYPE_FP16", 10),
    ("float32", "FP32", "TYPE_FP32", 1),
    ("float64", "FP64", "TYPE_FP64", 11),
    ("object", "BYTES", "TYPE_STRING", 8),       # numpy object arrays of bytes
)

NUMPY = {row[1]: np.dtype(row[0]) for row in _TABLE}               # "FP32" -> dtype('float32')
KSERVE_OF_NUMPY = {row[0]: row[1] for row in _TABLE}                # "float32" -> "FP32"
KSERVE_OF_NUMPY["bytes"] = "BYTES"
KSERVE_OF_TRITON = {row[2]: row[1] for row in _TABLE}               # "TYPE_FP32" -> "FP32"
TRITON_OF_KSERVE = {row[1]: row[2] for row in _TABLE}               # "FP32" -> "TYPE_FP32"
TRITON_OF_NUMPY = {row[0]: row[2] for row in _TABLE}                # "float32" -> "TYPE_FP32"
TRITON_OF_NUMPY["bytes"] = "TYPE_STRING"
TRITON_OF_ONNX = {row[3]: row[2] for row in _TABLE}                 # 1 -> "TYPE_FP32"
NUMPY_OF_TRITON = {row[2]: np.dtype(row[0]) for row in _TABLE}      # "TYPE_FP32" -> dtype('float32')
NUMPY_OF_ONNX = {row[3]: row[0] for row in _TABLE}                  # 1 -> "float32"
ONNX_OF_NUMPY = {row[0]: row[3] for row in _TABLE}                  # "float32" -> 1


def kserve_datatype(array: np.ndarray) -> str:
    """KServe v2 datatype name of a numpy array ("FP32", "INT64", "BYTES" for object/str arrays)."""
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        return "BYTES"
    return KSERVE_OF_NUMPY[array.dtype.name]
