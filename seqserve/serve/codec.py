"""KServe v2 / Triton tensors on the wire <-> `InferRequest` / `InferResponse`.

Three wire forms: the HTTP JSON body with Triton's binary tensor data appended after it
(Inference-Header-Content-Length), gRPC `ModelInferRequest`/`ModelInferResponse`, and Triton's
generate extension (a JSON object keyed by input name). Requests come from the network, so every
inconsistency is a `ServeError(400)` saying what was wrong and what was expected; nothing else may
escape a decode function. Encoding trusts the model except for requested outputs it lacks.

Speed: binary tensors are `np.frombuffer` views of the request body (read-only, zero-copy);
numeric JSON data goes through one `np.array` call plus vectorised range checks; the response
JSON is serialised once.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from seqserve.dtypes import KSERVE_OF_TRITON
from seqserve.package.triton_config import GENERATE_OPTIONAL
from seqserve.serve.types import (DATATYPES, InferRequest, InferResponse, RequestedOutput,
                                  ServeError, datatype_of)

_DTYPES = DATATYPES
_DATATYPE_LIST = ", ".join(_DTYPES)
_LEN = struct.Struct("<I")

# Request parameters Triton gives a meaning to; custom ones must be plain scalars (gRPC can carry
# nothing else, and HTTP should not accept what gRPC cannot).
_BOOL_PARAMS = frozenset({"sequence_start", "sequence_end", "binary_data_output",
                          "triton_enable_empty_final_response", "greedy"})
_UINT_PARAMS = frozenset({"priority", "timeout"})
# Generation parameters may come as request parameters as well as inputs: one rule for both.
_GENERATE_SPECS = {name: mc.ModelInput(name=name, data_type=data_type, dims=dims)
                   for name, data_type, dims in GENERATE_OPTIONAL}

# gRPC typed contents: the field that carries each datatype (FP16 has none: raw contents only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}

_FIELD_DTYPES = {"bool_contents": np.bool_, "int_contents": np.int32, "int64_contents": np.int64,
                 "uint_contents": np.uint32, "uint64_contents": np.uint64,
                 "fp32_contents": np.float32, "fp64_contents": np.float64}

# ModelConfig data types -> KServe datatypes (TYPE_BF16 has no numpy dtype here).
_CONFIG_DATATYPES = {mc.DataType.Value(t): k for t, k in KSERVE_OF_TRITON.items()}

_INFER_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
_TENSOR_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})


def bad(message: str) -> ServeError:
    return ServeError(400, message)


def _jtype(value) -> str:
    """JSON type name of a decoded JSON value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_json(data, what: str):
    """Parse JSON bytes; every failure is a 400 that says where."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise bad(f"{what} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno} "
                  f"(char {e.pos})") from None
    except UnicodeDecodeError as e:
        raise bad(f"{what} is not UTF-8 JSON text: {e.reason} at byte {e.start}") from None
    except RecursionError:
        raise bad(f"{what} nests arrays/objects too deeply to parse") from None
    except (ValueError, TypeError) as e:   # e.g. bytes in an encoding json.loads rejects
        raise bad(f"{what} is not valid JSON: {e}") from None


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(obj) -> bytes:
    """Compact JSON bytes; numpy scalars/arrays (from models' parameters) become plain JSON."""
    return json.dumps(obj, separators=(",", ":"), default=_json_default).encode()


def check_parameters(params, where: str) -> dict:
    """Validate request parameters (already decoded to Python values); returns them."""
    if not isinstance(params, dict):
        raise bad(f"{where} must be an object of name: value, got a JSON {_jtype(params)}")
    for key, value in params.items():
        if key == "sequence_id":
            if not (isinstance(value, str) or (_is_int(value) and 0 <= value < 1 << 64)):
                raise bad(f"parameter sequence_id must be a non-negative integer or a string, "
                          f"got {value!r}")
        elif key in _BOOL_PARAMS:
            if not isinstance(value, bool):
                raise bad(f"parameter {key} must be true or false, got {value!r}")
        elif key in _UINT_PARAMS:
            if not (_is_int(value) and 0 <= value < 1 << 64):
                raise bad(f"parameter {key} must be a non-negative integer, got {value!r}")
        elif not isinstance(value, (str, int, float)):   # bool is an int
            raise bad(f"parameter {key!r} must be a string, number or boolean, "
                      f"got a JSON {_jtype(value)}")
        elif key in _GENERATE_SPECS:
            # A generation parameter: the same type and range as the generate model's input of
            # that name (seed: UINT64, max_tokens/top_k: INT32, temperature/top_p: FP32, stop).
            _generate_value(_GENERATE_SPECS[key], value, batched=False, what="parameter")
    return params


# numpy refuses any array, even an empty one, whose non-zero dims times its item size pass
# 2**63 - 1 bytes ("array is too big"); shapes are checked against this before anything is
# allocated. Real requests are bounded far below by --max-request-bytes.
_MAX_NOMINAL_BYTES = 2**62


def _shape(shape, name: str, datatype: str) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad(f"input {name!r}: \"shape\" must be an array of non-negative integers, "
                  f"got {shape!r}")
    return _check_size(name, tuple(shape), datatype)


def _check_size(name: str, shape: tuple[int, ...], datatype: str) -> tuple[int, ...]:
    """The one shape check every wire form runs before allocating (JSON, binary, gRPC)."""
    size = _DTYPES[datatype].itemsize       # BYTES: an object array holds 8-byte pointers
    for d in shape:
        size *= max(d, 1)
        if size > _MAX_NOMINAL_BYTES:
            raise bad(f"input {name!r}: shape {_shape_text(shape)} is too large for {datatype} "
                      "(its non-zero dimensions alone make more than 2**62 bytes); expected a "
                      "shape whose tensor fits the request")
    return shape


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# ---- tensors from bytes / JSON values ------------------------------------------------------

def _parse_bytes_tensor(name: str, chunk, count: int) -> np.ndarray:
    """Triton's BYTES serialisation: per element a 4-byte little-endian length, then the bytes."""
    view = memoryview(chunk)
    size = len(view)
    if count * 4 > size:   # before allocating `count` slots: shape may be absurd
        raise bad(f"input {name!r}: {count} BYTES elements need at least {count * 4} bytes "
                  f"(a 4-byte length each) but the data has {size}")
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > size:
            raise bad(f"input {name!r}: the length prefix of BYTES element {i} runs past the "
                      f"end of the {size}-byte data")
        (length,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + length > size:
            raise bad(f"input {name!r}: BYTES element {i} says it has {length} bytes but only "
                      f"{size - pos} remain in the {size}-byte data")
        out[i] = bytes(view[pos:pos + length])
        pos += length
    if pos != size:
        raise bad(f"input {name!r}: {count} BYTES elements end at byte {pos} but the data has "
                  f"{size} bytes; expected exactly prod(shape) length-prefixed elements")
    return out


def tensor_from_bytes(name: str, datatype: str, shape: tuple, chunk) -> np.ndarray:
    """A tensor from its raw little-endian bytes (HTTP binary data, gRPC raw contents)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _parse_bytes_tensor(name, chunk, count).reshape(shape)
    dtype = _DTYPES[datatype]
    need = count * dtype.itemsize
    if len(chunk) != need:
        raise bad(f"input {name!r}: got {len(chunk)} bytes of data but shape "
                  f"{_shape_text(shape)} of {datatype} needs {need} ({count} x "
                  f"{dtype.itemsize} bytes)")
    array = np.frombuffer(chunk, dtype=dtype)
    if not array.flags.aligned:   # the chunk may start at any offset in the body
        array = array.copy()
    if datatype == "BOOL" and count and array.view(np.uint8).max() > 1:
        raise bad(f"input {name!r}: BOOL data must be bytes 0 or 1")
    return array.reshape(shape)


def _cast_numbers(name: str, datatype: str, src: np.ndarray) -> np.ndarray:
    """Cast numbers numpy parsed from JSON/protobuf to `datatype`, refusing any that do not fit
    (numpy itself would truncate 1.5 to 1, wrap 300 into uint8 or turn "7" into 7)."""
    dtype = _DTYPES[datatype]
    if src.size == 0:
        return src.astype(dtype)
    kind = src.dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            raise bad(f"input {name!r}: BOOL data must be true/false values, got {src.dtype} "
                      f"values such as {src.flat[0]!r}")
        return src
    if dtype.kind in "iu":
        if kind not in "iu":
            return _python_ints(name, datatype, src)
        info = np.iinfo(dtype)
        low, high = src.min(), src.max()
        if low < info.min or high > info.max:
            value = low if low < info.min else high
            raise bad(f"input {name!r}: value {int(value)} does not fit {datatype} "
                      f"({info.min}..{info.max})")
        return src.astype(dtype, copy=False)
    if kind not in "iuf":
        raise bad(f"input {name!r}: {datatype} data must be numbers, got values such as "
                  f"{src.flat[0]!r}")
    with np.errstate(over="ignore"):
        out = src.astype(dtype, copy=False)
    if dtype.itemsize < 8:
        overflow = np.isinf(out) & np.isfinite(src)
        if overflow.any():
            raise bad(f"input {name!r}: value {src[overflow].flat[0]!r} is too large for "
                      f"{datatype}")
    return out


def _python_ints(name: str, datatype: str, src: np.ndarray) -> np.ndarray:
    """Slow path for integer data numpy did not parse as integers: [0, 2**64 - 1] (no integer
    dtype holds both ends; the caller re-parses it as objects), floats, strings, nulls. Check
    the values one by one, as Python objects."""
    values = src.reshape(-1).tolist()
    for value in values:
        if not _is_int(value):
            what = "non-integer numbers" if isinstance(value, float) else "non-numbers"
            raise bad(f"input {name!r}: {datatype} data must be integers, got {what} such as "
                      f"{value!r}")
    info = np.iinfo(_DTYPES[datatype])
    for value in values:
        if not info.min <= value <= info.max:
            raise bad(f"input {name!r}: value {value} does not fit {datatype} "
                      f"({info.min}..{info.max})")
    return np.array(values, dtype=_DTYPES[datatype])


def _flatten(data: list) -> list:
    out, stack = [], [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _tensor_from_json(name: str, datatype: str, shape: tuple, data) -> np.ndarray:
    count = math.prod(shape)
    if not isinstance(data, list):
        raise bad(f"input {name!r}: \"data\" must be an array (flat or nested) of {count} "
                  f"values, got a JSON {_jtype(data)}")
    if datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count:
            raise bad(f"input {name!r}: \"data\" has {len(flat)} values but shape "
                      f"{_shape_text(shape)} needs {count}")
        out = np.empty(count, dtype=object)
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise bad(f"input {name!r}: BYTES data in JSON must be strings, got a JSON "
                          f"{_jtype(item)} at element {i}")
            out[i] = item.encode("utf-8", "surrogatepass")
        return out.reshape(shape)
    try:
        src = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise bad(f"input {name!r}: \"data\" is not a regular array of numbers "
                  f"({str(e).splitlines()[0]})") from None
    if src.dtype.kind == "f" and _DTYPES[datatype].kind in "iu":
        src = np.array(data, dtype=object)   # keep big integers exact (see _python_ints)
    if src.size != count:
        raise bad(f"input {name!r}: \"data\" has {src.size} values but shape "
                  f"{_shape_text(shape)} needs {count}")
    return _cast_numbers(name, datatype, src.reshape(-1)).reshape(shape)


# ---- HTTP -----------------------------------------------------------------------------------

def _http_outputs(doc) -> list[RequestedOutput] | None:
    if doc is None:
        return None
    if not isinstance(doc, list):
        raise bad(f"\"outputs\" must be an array of {{\"name\": ...}} objects, got a JSON "
                  f"{_jtype(doc)}")
    outputs, seen = [], set()
    for i, item in enumerate(doc):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise bad(f"outputs[{i}] must be an object with a string \"name\", got {item!r}")
        name = item["name"]
        if name in seen:
            raise bad(f"output {name!r} is requested twice")
        seen.add(name)
        if item.keys() - _OUTPUT_KEYS:
            raise bad(f"output {name!r} has unknown keys {sorted(item.keys() - _OUTPUT_KEYS)}; "
                      f"expected {sorted(_OUTPUT_KEYS)}")
        params = item.get("parameters", {})
        if not isinstance(params, dict):
            raise bad(f"output {name!r}: \"parameters\" must be an object, got a JSON "
                      f"{_jtype(params)}")
        _refuse_unsupported({k: v for k, v in params.items() if k != "classification"}, f"output {name!r}")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise bad(f"output {name!r}: parameter binary_data must be true or false, "
                      f"got {binary!r}")
        outputs.append(RequestedOutput(name, binary, _class_count(name, params.get("classification"))))
    return outputs or None


def _class_count(name: str, value) -> int | None:
    """Triton's classification extension: an output's `classification` parameter, the number of
    top classes to return as "score:index:label" strings (None: the raw tensor)."""
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise bad(f"output {name!r}: parameter classification must be a whole number >= 1 (the number "
                  f"of top classes to return), got {value!r}")
    return int(value)


def _refuse_unsupported(params, what: str) -> None:
    if "shared_memory_region" in params:
        raise bad(f"{what}: shared memory is not supported by this server; send the data in "
                  f"the request (JSON or binary) instead")
    if "classification" in params:
        raise bad(f"{what}: the classification extension is not supported; request the raw "
                  f"output instead")


def decode_http_infer(model: str, version: str, body: bytes,
                      header_length: int | None = None) -> InferRequest:
    """Decode a KServe v2 HTTP infer body (JSON, optionally followed by binary tensor data)."""
    binary = None
    if header_length is None:
        header = body
    else:
        if not _is_int(header_length) or header_length < 0:
            raise bad(f"Inference-Header-Content-Length must be a non-negative integer, "
                      f"got {header_length!r}")
        if header_length > len(body):
            raise bad(f"Inference-Header-Content-Length is {header_length} but the body has only "
                      f"{len(body)} bytes; expected the byte length of the JSON part")
        view = memoryview(body)
        header, binary = bytes(view[:header_length]), view[header_length:]
    doc = load_json(header, "request JSON")
    if not isinstance(doc, dict):
        raise bad(f"request body must be a JSON object {{\"inputs\": [...]}}, got a JSON "
                  f"{_jtype(doc)}")
    if doc.keys() - _INFER_KEYS:
        raise bad(f"request has unknown keys {sorted(doc.keys() - _INFER_KEYS)}; expected "
                  f"{sorted(_INFER_KEYS)}")
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise bad(f"request \"id\" must be a string, got a JSON {_jtype(request_id)}")
    params = check_parameters(doc.get("parameters", {}), "request \"parameters\"")
    tensors = doc.get("inputs")
    if not isinstance(tensors, list):
        raise bad("request must have \"inputs\": an array of {\"name\", \"shape\", "
                  "\"datatype\", \"data\"} objects" if tensors is None else
                  f"\"inputs\" must be an array, got a JSON {_jtype(tensors)}")
    inputs: dict[str, np.ndarray] = {}
    offset, available = 0, (len(binary) if binary is not None else 0)
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str) \
                or not tensor["name"]:
            raise bad(f"inputs[{i}] must be an object with a non-empty string \"name\"")
        name = tensor["name"]
        if name in inputs:
            raise bad(f"input {name!r} is given twice")
        if tensor.keys() - _TENSOR_KEYS:
            raise bad(f"input {name!r} has unknown keys {sorted(tensor.keys() - _TENSOR_KEYS)}; "
                      f"expected {sorted(_TENSOR_KEYS)}")
        datatype = tensor.get("datatype")
        if datatype not in _DTYPES:
            raise bad(f"input {name!r} has datatype {datatype!r}; expected one of "
                      f"{_DATATYPE_LIST}")
        shape = _shape(tensor.get("shape"), name, datatype)
        tparams = tensor.get("parameters", {})
        if not isinstance(tparams, dict):
            raise bad(f"input {name!r}: \"parameters\" must be an object, got a JSON "
                      f"{_jtype(tparams)}")
        _refuse_unsupported(tparams, f"input {name!r}")
        size = tparams.get("binary_data_size")
        if size is None:
            if "data" not in tensor:
                raise bad(f"input {name!r} has no \"data\" and no binary_data_size parameter")
            inputs[name] = _tensor_from_json(name, datatype, shape, tensor["data"])
            continue
        if not _is_int(size) or size < 0:
            raise bad(f"input {name!r}: binary_data_size must be a non-negative integer, "
                      f"got {size!r}")
        if "data" in tensor:
            raise bad(f"input {name!r} has both \"data\" and binary_data_size; expected one")
        if binary is None:
            raise bad(f"input {name!r} has binary_data_size but the request has no "
                      f"Inference-Header-Content-Length header giving the JSON length")
        if offset + size > available:
            raise bad(f"binary data of input {name!r} ({size} bytes from offset {offset}) runs "
                      f"past the {available} bytes that follow the JSON header")
        inputs[name] = tensor_from_bytes(name, datatype, shape, binary[offset:offset + size])
        offset += size
    if offset != available:
        raise bad(f"{available} bytes follow the JSON header but the inputs' binary_data_size "
                  f"values add up to {offset}")
    return InferRequest(model=model, version=version, id=request_id, inputs=inputs,
                        outputs=_http_outputs(doc.get("outputs")), parameters=params)


def _selected(response: InferResponse, request: InferRequest):
    """(name, array, RequestedOutput | None) for each output to send, in request order."""
    if request.outputs is None:
        return [(name, array, None) for name, array in response.outputs.items()]
    out = []
    for requested in request.outputs:
        array = response.outputs.get(requested.name)
        if array is None:
            raise bad(f"model {response.model!r} has no output {requested.name!r}; its outputs "
                      f"are {sorted(response.outputs)}")
        out.append((requested.name, array, requested))
    return out


_DATATYPE_OF = {dtype: name for name, dtype in _DTYPES.items() if name != "BYTES"}


def _datatype(name: str, array: np.ndarray) -> str:
    datatype = _DATATYPE_OF.get(array.dtype)   # dtype.name, used by datatype_of, is slow
    if datatype is not None:
        return datatype
    try:
        return datatype_of(array)
    except KeyError:
        raise ServeError(500, f"output {name!r} has numpy dtype {array.dtype}, which has no "
                              f"KServe datatype") from None


def _as_bytes(item) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8", "surrogatepass")
    return str(item).encode()


def serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = _as_bytes(item)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _raw(array: np.ndarray, datatype: str):
    """Bytes-like raw data of an output (a uint8 view where numpy allows: no copy)."""
    if datatype == "BYTES":
        return serialize_bytes(array)
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return array.reshape(-1).view(np.uint8)


def _json_data(name: str, array: np.ndarray, datatype: str) -> list:
    flat = array.reshape(-1)
    if datatype != "BYTES":
        return flat.tolist()
    try:
        return [item.decode() if isinstance(item, bytes) else str(item) for item in flat]
    except UnicodeDecodeError:
        raise bad(f"output {name!r} holds bytes that are not UTF-8, which JSON cannot carry; "
                  f"request it with parameters {{\"binary_data\": true}}") from None


def encode_http_infer(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the body is all JSON)."""
    default_binary = request.parameters.get("binary_data_output") is True
    outputs, chunks = [], []
    for name, array, requested in _selected(response, request):
        array = np.asarray(array)
        datatype = _datatype(name, array)
        binary = default_binary if requested is None or requested.binary is None \
            else requested.binary
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = _raw(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(name, array, datatype)
        outputs.append(entry)
    doc = {"model_name": response.model, "model_version": response.version or request.version}
    if response.id or request.id:
        doc["id"] = response.id or request.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = dumps(doc)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


# ---- gRPC -----------------------------------------------------------------------------------

def grpc_parameters(params) -> dict:
    """InferParameter map -> Python values."""
    out = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is None:
            raise bad(f"parameter {key!r} has no value set")
        out[key] = getattr(param, which)
    return out


def set_grpc_parameter(param, key: str, value) -> None:
    if isinstance(value, (bool, np.bool_)):
        param.bool_param = bool(value)
    elif isinstance(value, (int, np.integer)):
        value = int(value)
        if value >= 1 << 63:
            param.uint64_param = value
        else:
            param.int64_param = value
    elif isinstance(value, (float, np.floating)):
        param.double_param = float(value)
    elif isinstance(value, bytes):
        param.string_param = value.decode("utf-8", "replace")
    else:
        param.string_param = str(value)


def _tensor_from_contents(name: str, datatype: str, shape: tuple, contents) -> np.ndarray:
    count = math.prod(shape)
    fields = contents.ListFields()
    expected = _CONTENTS_FIELD.get(datatype)
    where = f"contents.{expected}" if expected else "raw_input_contents (it has no typed field)"
    if not fields:
        if count == 0:
            return np.empty(shape, dtype=_DTYPES[datatype])
        raise bad(f"input {name!r} has no data: expected raw_input_contents or {where}")
    got = [field.name for field, _ in fields]
    if got != [expected]:
        raise bad(f"input {name!r} is {datatype}: expected its values in {where}, got "
                  f"contents.{', contents.'.join(got)}")
    values = fields[0][1]
    if len(values) != count:
        raise bad(f"input {name!r}: {expected} has {len(values)} values but shape "
                  f"{_shape_text(shape)} needs {count}")
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    # Each field's own dtype: protobuf already holds the values in it (np.array's own guess
    # would turn [2**64 - 1, 0] into floats).
    return _cast_numbers(name, datatype, np.array(values, dtype=_FIELD_DTYPES[expected])
                         ).reshape(shape)


def decode_grpc_infer(request: pb.ModelInferRequest) -> InferRequest:
    """Decode a gRPC ModelInferRequest (raw_input_contents or typed contents)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise bad(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
                  f"expected one per input in input order (or none, with typed contents)")
    params = check_parameters(grpc_parameters(request.parameters), "request parameters")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise bad(f"inputs[{i}] has no name")
        if name in inputs:
            raise bad(f"input {name!r} is given twice")
        if tensor.datatype not in _DTYPES:
            raise bad(f"input {name!r} has datatype {tensor.datatype!r}; expected one of "
                      f"{_DATATYPE_LIST}")
        if any(d < 0 for d in tensor.shape):
            raise bad(f"input {name!r}: shape {list(tensor.shape)} has a negative dimension")
        shape = _check_size(name, tuple(tensor.shape), tensor.datatype)
        _refuse_unsupported(tensor.parameters, f"input {name!r}")
        if raw:
            if tensor.contents.ListFields():
                raise bad(f"input {name!r} has both raw_input_contents and contents; "
                          f"expected one")
            inputs[name] = tensor_from_bytes(name, tensor.datatype, shape, raw[i])
        else:
            inputs[name] = _tensor_from_contents(name, tensor.datatype, shape, tensor.contents)
    outputs, seen = [], set()
    for item in request.outputs:
        if not item.name or item.name in seen:
            raise bad(f"requested output {item.name!r} is empty or repeated")
        seen.add(item.name)
        _refuse_unsupported({k: v for k, v in item.parameters.items() if k != "classification"},
                            f"output {item.name!r}")
        count = None
        if "classification" in item.parameters:
            p = item.parameters["classification"]
            count = _class_count(item.name, getattr(p, p.WhichOneof("parameter_choice") or "int64_param"))
        outputs.append(RequestedOutput(item.name, classification=count))
    return InferRequest(model=request.model_name, version=request.model_version, id=request.id,
                        inputs=inputs, outputs=outputs or None, parameters=params, inline_ok=False)


def encode_grpc_infer(response: InferResponse, request: InferRequest) -> pb.ModelInferResponse:
    """ModelInferResponse with every output in raw_output_contents (what tritonclient reads)."""
    message = pb.ModelInferResponse(model_name=response.model,
                                    model_version=response.version or request.version,
                                    id=response.id or request.id)
    for key, value in response.parameters.items():
        set_grpc_parameter(message.parameters[key], key, value)
    for name, array, _ in _selected(response, request):
        array = np.asarray(array)
        datatype = _datatype(name, array)
        tensor = message.outputs.add()
        tensor.name, tensor.datatype = name, datatype
        tensor.shape.extend(array.shape)
        raw = _raw(array, datatype)
        message.raw_output_contents.append(raw if isinstance(raw, bytes) else raw.tobytes())
    return message


# ---- generate extension ---------------------------------------------------------------------

def _generate_value(spec, value, batched: bool, what: str = "input") -> np.ndarray:
    """A JSON value for the model input `spec` (a ModelInput), checked for type and range."""
    name = spec.name
    datatype = _CONFIG_DATATYPES.get(spec.data_type)
    if datatype is None:
        raise bad(f"input {name!r} has type {mc.DataType.Name(spec.data_type)}, which the "
                  f"generate endpoint cannot fill from JSON")
    dims = list(spec.dims)
    if isinstance(value, list):
        values, shape = value, [len(value)]
    else:
        values, shape = [value], [1] * max(len(dims), 1)
    if dims and (len(dims) != len(shape) or any(d not in (-1, s) for d, s in zip(dims, shape))):
        raise bad(f"{name!r}: got {_jtype(value)} of shape {shape} but the model input has "
                  f"dims {dims}")
    dtype = _DTYPES[datatype]
    if datatype == "BYTES":
        ok, expected = all(isinstance(v, str) for v in values), "a string"
        values = [v.encode("utf-8", "surrogatepass") for v in values] if ok else values
    elif datatype == "BOOL":
        ok, expected = all(isinstance(v, bool) for v in values), "true or false"
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        ok = all(_is_int(v) and info.min <= v <= info.max for v in values)
        expected = f"an integer in {info.min}..{info.max}"
    else:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        expected = "a number"
        if ok:
            with np.errstate(over="ignore"):
                converted = np.array(values, dtype=dtype)
            ok = bool(np.isfinite(converted).all() or not np.isfinite(values).all())
            expected = f"a number that fits {datatype}"
    if not ok:
        many = " (or an array of them)" if not dims or dims[-1] == -1 else ""
        label = f"parameter {name!r}" if what == "parameter" else repr(name)
        raise bad(f"{label} must be {expected}{many}, got {value!r}")
    array = np.empty(len(values), dtype=object) if datatype == "BYTES" else None
    if array is not None:
        array[:] = values
    else:
        array = np.array(values, dtype=dtype)
    array = array.reshape(shape)
    return array[None] if batched else array


def decode_generate(config, body: bytes) -> InferRequest:
    """Triton's generate request: {input name: JSON value, "parameters": {...}, "id": str}.
    `config` is the model's ModelConfig protobuf; model/version are the caller's to set."""
    doc = load_json(body, "generate request")
    if not isinstance(doc, dict):
        raise bad(f"generate request must be a JSON object {{\"text_input\": ...}}, got a JSON "
                  f"{_jtype(doc)}")
    specs = {spec.name: spec for spec in config.input}
    batched = config.max_batch_size > 0
    request = InferRequest(model=config.name)
    for key, value in doc.items():
        if key == "id":
            if not isinstance(value, str):
                raise bad(f"\"id\" must be a string, got a JSON {_jtype(value)}")
            request.id = value
        elif key == "parameters":
            request.parameters = check_parameters(value, "\"parameters\"")
        elif key in specs:
            request.inputs[key] = _generate_value(specs[key], value, batched)
        else:
            raise bad(f"generate request has unknown key {key!r}; model {config.name!r} accepts "
                      f"{sorted(specs) + ['id', 'parameters']}")
    missing = [name for name, spec in specs.items()
               if not spec.optional and name not in request.inputs]
    if missing:
        raise bad(f"generate request is missing {missing}; model {config.name!r} requires "
                  f"{[n for n, s in specs.items() if not s.optional]}")
    return request


def _plain(array) -> object:
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind in "SU":
        items = [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
                 for item in array.reshape(-1)]
    else:
        items = array.reshape(-1).tolist()
    return items[0] if len(items) == 1 else items


def encode_generate(response: InferResponse, request: InferRequest | None = None) -> dict:
    """Generate response: each output flattened (one element -> scalar/string, else a list).
    Name, version and id fall back to the request's when the response leaves them empty."""
    fallback = request or InferRequest(model="")
    doc = {"model_name": response.model or fallback.model,
           "model_version": response.version or fallback.version}
    if response.id or fallback.id:
        doc["id"] = response.id or fallback.id
    for name, array in response.outputs.items():
        doc[name] = _plain(array)
    return doc
