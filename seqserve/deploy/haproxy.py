"""The router's haproxy.cfg: consistent hashing on `x-sequence-id` for HTTP and gRPC (HTTP/2).

ONE file serves both places it runs, byte for byte: the Kubernetes ConfigMap and a local HAProxy
(tests/test_replicas.py, benchmarks/replicas.py). Where the replicas are is the only difference,
chosen inside the file by HAProxy's own conditional blocks:

- the environment names them (`SEQSERVE_REPLICA_<i>_HTTP` / `_GRPC` = host:port, slot i from 0;
  `local_env()` writes them): one `server` line per slot that is set;
- otherwise (Kubernetes) `server-template` fills the slots from the DNS records of the servers'
  headless Service; a slot without a ready pod stays empty (`init-addr none`).

The router's own listeners are `SEQSERVE_ROUTER_HTTP|GRPC|HEALTH` (default :8000, :8001, :8404).
A request without the header is balanced round-robin (HAProxy's rule for an absent `hdr()`); a
replica that fails its readiness check leaves the ring, and with none left the router answers
503. Health: the HTTP servers are checked on GET /v2/health/ready; a local gRPC server tracks its
replica's HTTP server, a templated one is checked on the same pod's HTTP port.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqserve.serve.routing import HEADER

HTTP_PORT, GRPC_PORT, METRICS_PORT, HEALTH_PORT = 8000, 8001, 8002, 8404
ENV_HTTP, ENV_GRPC = "SEQSERVE_REPLICA_{i}_HTTP", "SEQSERVE_REPLICA_{i}_GRPC"


@dataclass(frozen=True)
class RouterSettings:
    service_host: str                 # the servers' headless Service, resolvable from the router
    slots: int                        # server slots per backend: the most replicas it can route to
    check_interval_ms: int = 1000     # readiness check period; a replica leaves after `fall` failures
    fall: int = 2
    rise: int = 2
    server_timeout_s: int = 300       # longest silence inside a response (a generation stream)
    resolver: str = "kube"


def render(s: RouterSettings) -> str:
    """haproxy.cfg as text."""
    check = f"check inter {s.check_interval_ms} fall {s.fall} rise {s.rise}"
    hash_rules = (f"    balance hdr({HEADER})\n"
                  "    hash-type consistent\n")
    local_http = "".join(
        f'.if defined({ENV_HTTP.format(i=i)})\n'
        f'    server replica{i} "${{{ENV_HTTP.format(i=i)}}}" {check}\n'
        f'.endif\n' for i in range(s.slots))
    local_grpc = "".join(
        f'.if defined({ENV_GRPC.format(i=i)})\n'
        f'    server replica{i} "${{{ENV_GRPC.format(i=i)}}}" proto h2 track seqserve_http/replica{i}\n'
        f'.endif\n' for i in range(s.slots))
    dns = f"resolvers {s.resolver} init-addr none"
    return f"""\
# Written by `seqserve deploy kubernetes`; the ConfigMap holds this same file.
# Sticky sequences: every request of a sequence carries `{HEADER}` (seqserve's clients send it;
# with tritonclient pass headers={{"{HEADER}": str(sequence_id)}}), and each backend hashes it
# onto a consistent ring of replicas, so a sequence's steps reach the replica that holds its
# state. Adding or removing a replica moves ~1/N of the keys; those sequences get the server's
# unknown-sequence error and must start again, under a new sequence id.
# Replicas: SEQSERVE_REPLICA_<i>_HTTP / _GRPC (host:port) when set, else DNS ({s.service_host}).

global
    log stdout format raw local0 notice
    maxconn 4096

defaults
    mode http
    log global
    option dontlognull
    timeout connect 2s
    timeout client {s.server_timeout_s}s
    timeout server {s.server_timeout_s}s
    timeout http-request 30s
    # a connection refused by a replica that just died: try once more, elsewhere
    retries 1
    option redispatch 1

resolvers {s.resolver}
    parse-resolv-conf
    hold valid 5s
    hold obsolete 10s

frontend router_health
    bind "${{SEQSERVE_ROUTER_HEALTH-:{HEALTH_PORT}}}"
    monitor-uri /healthz

frontend http
    bind "${{SEQSERVE_ROUTER_HTTP-:{HTTP_PORT}}}"
    default_backend seqserve_http

frontend grpc
    bind "${{SEQSERVE_ROUTER_GRPC-:{GRPC_PORT}}}" proto h2
    default_backend seqserve_grpc

backend seqserve_http
{hash_rules}    option httpchk GET /v2/health/ready
    http-check expect status 200
{local_http}.if !defined({ENV_HTTP.format(i=0)})
    server-template replica 1-{s.slots} {s.service_host}:{HTTP_PORT} {check} {dns}
.endif

backend seqserve_grpc
{hash_rules}    option httpchk GET /v2/health/ready
    http-check expect status 200
{local_grpc}.if !defined({ENV_GRPC.format(i=0)})
    server-template replica 1-{s.slots} {s.service_host}:{GRPC_PORT} proto h2 {check} port {HTTP_PORT} check-proto h1 {dns}
.endif
"""


def local_env(replicas: list[tuple[str, int, int]], http: str, grpc: str, health: str) -> dict[str, str]:
    """The environment that points the file at replicas running here: [(host, http_port,
    grpc_port)] and the router's own listen addresses ("127.0.0.1:PORT")."""
    env = {"SEQSERVE_ROUTER_HTTP": http, "SEQSERVE_ROUTER_GRPC": grpc, "SEQSERVE_ROUTER_HEALTH": health}
    for i, (host, http_port, grpc_port) in enumerate(replicas):
        env[ENV_HTTP.format(i=i)] = f"{host}:{http_port}"
        env[ENV_GRPC.format(i=i)] = f"{host}:{grpc_port}"
    return env
