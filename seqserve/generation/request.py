"""The generate request: the one description of its optional fields.

Read by the Triton config writer (the NAME_generate model's optional inputs), the codec (the
parameter rule: a field sent as a request parameter gets its input's type and range), the served
generation model (SamplingParams from inputs or parameters) and the clients (how to send each).
"""

from __future__ import annotations

from dataclasses import dataclass

TEXT_INPUT, TEXT_OUTPUT, FINISH_REASON = "text_input", "text_output", "finish_reason"


@dataclass(frozen=True)
class Field:
    name: str
    datatype: str           # KServe datatype of the optional input (seqserve/dtypes.py)
    dims: tuple[int, ...]   # config dims: (1,) one value, (-1,) a list


FIELDS = (
    Field("max_tokens", "INT32", (1,)), Field("temperature", "FP32", (1,)), Field("top_k", "INT32", (1,)),
    Field("top_p", "FP32", (1,)), Field("seed", "UINT64", (1,)), Field("stop", "BYTES", (-1,)),
    Field("beams", "INT32", (1,)),      # > 1: beam search, the best hypothesis as one final response
    Field("length_penalty", "FP32", (1,)),   # with beams: rank by sum(log p) / length ** length_penalty
)
BEAM_FIELDS = ("beams", "length_penalty")   # BeamParams', not SamplingParams'
BY_NAME = {f.name: f for f in FIELDS}

# The numeric sampling fields and the Python type SamplingParams takes (beams: BeamParams).
SAMPLING_NUMBERS = {f.name: float if f.datatype.startswith("FP") else int
                    for f in FIELDS if f.datatype != "BYTES" and f.name not in BEAM_FIELDS}
