"""The routing key: the header that carries a sequence's id, so a proxy keeps it on one replica.

KServe v2 carries `sequence_id` in the request body, where no proxy looks. seqserve's clients
also send it as `x-sequence-id` (an HTTP header; gRPC metadata, streams included) on every
request of a sequence, and a fresh key per generation stream. A consistent-hash proxy in front of
several replicas (HAProxy `balance hdr(x-sequence-id)` + `hash-type consistent`, Istio
`consistentHash.httpHeaderName`) then sends every step of a sequence to the replica that holds its
state. tritonserver ignores the header, so the same clients work against Triton.

Servers never read it: a sequence's state is found by the body's `sequence_id` alone. A missing
header is only not sticky (the proxy balances it like any request); a wrong or malformed one can
send a step to a replica that does not hold the sequence, which answers the unknown-sequence
error — it can never reach another sequence's state.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

HEADER = "x-sequence-id"          # lower case: HTTP/2 and gRPC metadata keys must be


def routing_key(sequence_id) -> str:
    """The header value for a sequence id (int or str). Characters that may not appear in a
    header value (controls, non-ASCII, spaces) are percent-encoded: one id, one key."""
    return quote(str(sequence_id), safe="-_.~:/@!$&'()*+,;=")


def routing_headers(sequence_id) -> dict[str, str]:
    """{x-sequence-id: key}: for tritonclient's `headers=` (HTTP) or gRPC metadata."""
    return {HEADER: routing_key(sequence_id)}


def new_routing_key() -> str:
    """A fresh key for a request that is a whole sequence by itself (a generation stream)."""
    return uuid.uuid4().hex
