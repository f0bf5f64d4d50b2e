"""Several `seqserve serve` replicas behind a real HAProxy, configured by the haproxy.cfg that
`seqserve deploy kubernetes` writes (run as written; the environment names the replicas).

- 256 interleaved sequences (lstm_step over HTTP, gpt_step over gRPC) through the router: every
  output equals its serial reference (in-process ONNX Runtime), both replicas carry sequences;
- seqserve's own clients (loadtest sequence and generate workloads over HTTP and gRPC, the
  Python client's streams) send the routing key: through the router they never hit a replica
  that does not hold their sequence;
- a request without the header still works; a replica killed (SIGKILL, by pid) mid-run: its
  sequences get the unknown-sequence error, never another state or wrong logits, the others
  finish correctly, restarted sequences and streamed generation run on the survivor; with no
  replica left the router answers 503.
"""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
import tritonclient.http as th
import tritonclient.http.aio as tha
from serving import start_server
from test_serve import local_greedy, local_logits
from tritonclient.utils import InferenceServerException

from seqserve.deploy import DeployOptions, deploy_kubernetes
from seqserve.deploy.local import find_haproxy, start_router
from seqserve.serve.routing import routing_headers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_haproxy() is None, reason="haproxy is not installed (Debian: apt-get install -y "
                                                      "haproxy; .ci/run installs it where it can)"),
]

VOCAB = 98
UNKNOWN = "is not active"          # the server's unknown-sequence error (seqserve/serve/sequences.py)


@pytest.fixture(scope="module")
def deployed(served_repo, tmp_path_factory):
    """(repository, haproxy.cfg) — lstm and gpt with room for every test sequence on one replica."""
    repo = served_repo("lstm", "gpt", max_sequences=256)
    out = deploy_kubernetes(DeployOptions(repository=repo, out=tmp_path_factory.mktemp("deploy") / "k8s")).out
    return repo, out / "haproxy.cfg"


class Cluster:
    def __init__(self, repo, cfg, logs, n: int = 2):
        self.replicas, self.router = [], None
        try:
            self.replicas = [start_server(repo, logs) for _ in range(n)]
            self.router = start_router(cfg, [(s.host, s.http_port, s.grpc_port) for s in self.replicas],
                                       logs / f"haproxy-{os.getpid()}-{id(self)}.log")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
        for s in self.replicas:
            if s.alive():
                s.stop()
            else:
                s.proc.wait(10)

    def steps_served(self, model: str) -> list[int]:
        return [s.json("GET", f"/v2/models/{model}/stats")["model_stats"][0]["inference_count"]
                for s in self.replicas]


@pytest.fixture(scope="module")
def cluster(deployed, tmp_path_factory):
    c = Cluster(*deployed, tmp_path_factory.mktemp("replica-logs"))
    yield c
    c.stop()


def _plans(seed: int, n: int, first_id: int, steps=(4, 8), width=3) -> dict[int, list[list[int]]]:
    rng = np.random.default_rng(seed)
    return {first_id + i: [rng.integers(3, VOCAB, int(rng.integers(1, width + 1))).tolist()
                           for _ in range(int(rng.integers(*steps)))] for i in range(n)}


async def _step(client, model, sid, chunk, start, end):
    """One step through the router, with the routing key; logits [S, V]."""
    module = tha if isinstance(client, tha.InferenceServerClient) else tga
    x = module.InferInput("input_ids", [1, len(chunk)], "INT64")
    x.set_data_from_numpy(np.array([chunk], np.int64))
    r = await client.infer(model, [x], sequence_id=sid, sequence_start=start, sequence_end=end,
                           headers=routing_headers(sid))
    return r.as_numpy("logits")[0]


async def _interleaved(address_http, address_grpc, plans: dict[str, dict], seed: int) -> dict:
    """Every sequence of every model at once, each step after a random pause: {(model, sid): logits}."""
    rng = np.random.default_rng(seed)
    clients = {"lstm_step": tha.InferenceServerClient(address_http, conn_limit=256),
               "gpt_step": tga.InferenceServerClient(address_grpc)}

    async def one(model, sid, chunks):
        got = []
        for k, chunk in enumerate(chunks):
            await asyncio.sleep(float(rng.uniform(0, 0.01)))
            got.append(await _step(clients[model], model, sid, chunk, k == 0, k == len(chunks) - 1))
        return (model, sid), np.concatenate(got)

    jobs = [(m, sid, c) for m, p in plans.items() for sid, c in p.items()]
    rng.shuffle(jobs)
    try:
        return dict(await asyncio.gather(*(one(*j) for j in jobs)))
    finally:
        for c in clients.values():
            await c.close()


def _reference(exported, model: str, chunks) -> np.ndarray:
    return local_logits(exported(model.removesuffix("_step")), np.array([[t for c in chunks for t in c]]))[0]


def test_256_interleaved_sequences_through_the_router_match_their_serial_reference(cluster, exported):
    plans = {"lstm_step": _plans(1, 128, 1), "gpt_step": _plans(2, 128, 1_000)}
    before = {m: cluster.steps_served(m) for m in plans}
    results = asyncio.run(_interleaved(cluster.router.http_address, cluster.router.grpc_address, plans, 3))
    for model, p in plans.items():
        for sid, chunks in p.items():
            np.testing.assert_allclose(results[model, sid], _reference(exported, model, chunks), atol=1e-4, rtol=0,
                                       err_msg=f"{model} sequence {sid}")
        served = [a - b for a, b in zip(cluster.steps_served(model), before[model])]
        assert sum(served) == sum(len(c) for c in p.values())          # requests (steps)
        assert min(served) > 0.2 * sum(served), served        # the ring spreads sequences over both replicas


@pytest.mark.parametrize("workload, protocol", [("sequence", "http"), ("sequence", "grpc"),
                                                ("generate", "http"), ("generate", "grpc")])
def test_loadtest_workloads_send_the_routing_key(cluster, workload, protocol):
    """Through the router a step without the key would land on the other replica half the time
    (HAProxy balances requests without it round-robin) and fail as an unknown sequence."""
    from seqserve.loadtest import run_loadtest
    from seqserve.loadtest.config import LoadTestConfig, parse_target

    r = cluster.router
    model = "lstm_step" if workload == "sequence" else "lstm_generate"
    url = f"http://{r.http_address}" if protocol == "http" else f"grpc://{r.grpc_address}"
    before = cluster.steps_served(model)
    cfg = LoadTestConfig(target=parse_target(url, None), model=model, workload=workload, levels=(8,),
                         duration_s=1.5, warmup_s=0.3, sequence_length=6, max_tokens=8, metrics_url=None)
    res = run_loadtest(cfg)
    level = res["levels"][0]
    assert level["errors"] == 0 and level["requests"] > 20, level
    assert min(a - b for a, b in zip(cluster.steps_served(model), before)) > 0     # both replicas used


def test_requests_without_the_header_still_work(cluster):
    c = th.InferenceServerClient(cluster.router.http_address)
    x = th.InferInput("input_ids", [1, 3], "INT64")
    x.set_data_from_numpy(np.array([[10, 11, 12]], np.int64))
    assert c.infer("lstm", [x]).as_numpy("logits").shape == (1, 3, VOCAB)
    # a one-request sequence needs no stickiness; a malformed key is only a routing hint
    r = c.infer("lstm_step", [x], sequence_id=99_001, sequence_start=True, sequence_end=True)
    r2 = c.infer("lstm_step", [x], sequence_id=99_002, sequence_start=True, sequence_end=True,
                 headers={"x-sequence-id": "%%not-an-id\t"})
    np.testing.assert_array_equal(r.as_numpy("logits"), r2.as_numpy("logits"))
    c.close()


def _is_unknown(e: InferenceServerException) -> bool:
    return UNKNOWN in str(e)


def test_a_killed_replica_loses_only_its_sequences(deployed, exported, tmp_path):
    """Replica 0 is killed after 3 of 8 steps: exactly its sequences (known from its step count)
    get the unknown-sequence error from the survivor; the rest finish with correct logits;
    the lost ones restarted under new ids finish correctly; streams run; then no replica: 503."""
    cluster = Cluster(*deployed, tmp_path)
    try:
        _killed_replica(cluster, exported)
    finally:
        cluster.stop()


def _killed_replica(cluster: Cluster, exported) -> None:
    from seqserve.generation import SamplingParams
    from seqserve.serve.client import RemoteGenerator

    r = cluster.router
    plans = {"lstm_step": _plans(4, 48, 1, steps=(8, 9), width=1), "gpt_step": _plans(5, 48, 1_000, steps=(8, 9), width=1)}
    clients = {"lstm_step": th.InferenceServerClient(r.http_address), "gpt_step": tg.InferenceServerClient(r.grpc_address)}

    def step(model, sid, k, chunks):
        mod = th if model == "lstm_step" else tg
        x = mod.InferInput("input_ids", [1, 1], "INT64")
        x.set_data_from_numpy(np.array([chunks[k]], np.int64))
        return clients[model].infer(model, [x], sequence_id=sid, sequence_start=k == 0, sequence_end=k == len(chunks) - 1,
                                    headers=routing_headers(sid)).as_numpy("logits")[0]

    got = {(m, sid): [] for m, p in plans.items() for sid in p}
    lost: dict = {}
    for k in range(8):
        if k == 3:   # kill replica 0 between two steps of every sequence
            on_zero = {m: cluster.steps_served(m)[0] // 3 for m in plans}   # 3 requests per sequence so far
            os.kill(cluster.replicas[0].pid, signal.SIGKILL)
            cluster.replicas[0].proc.wait(10)
        for model, p in plans.items():
            for sid, chunks in p.items():
                if (model, sid) in lost:
                    continue
                try:
                    got[model, sid].append(step(model, sid, k, chunks))
                except InferenceServerException as e:
                    assert k >= 3 and _is_unknown(e), f"{model} {sid} step {k}: {e}"
                    lost[model, sid] = str(e)
    for model, p in plans.items():
        mine = [sid for (m, sid) in lost if m == model]
        assert len(mine) == on_zero[model] and 0 < len(mine) < len(p), (model, len(mine), on_zero)
        for sid, chunks in p.items():
            if (model, sid) not in lost:
                np.testing.assert_allclose(np.concatenate(got[model, sid]), _reference(exported, model, chunks),
                                           atol=1e-4, rtol=0, err_msg=f"{model} sequence {sid}")
            else:   # what came back before the kill was right too
                np.testing.assert_allclose(np.concatenate(got[model, sid]), _reference(exported, model, chunks[:3]),
                                           atol=1e-4, rtol=0)
    # the lost sequences start again under new ids, on the survivor
    for (model, sid) in list(lost):
        chunks = plans[model][sid]
        out = np.concatenate([step(model, sid + 500_000, k, chunks) for k in range(len(chunks))])
        np.testing.assert_allclose(out, _reference(exported, model, chunks), atol=1e-4, rtol=0)
    # streamed generation through the router keeps working (several streams: several routing keys)
    want, _ = local_greedy(exported("lstm"), "def ", 16)
    for url in (f"http://{r.http_address}", f"grpc://{r.grpc_address}"):
        gen = RemoteGenerator(url, "lstm_generate")
        for _ in range(4):
            text = "".join(piece for piece, _ in gen.stream("def ", SamplingParams(max_tokens=16, greedy=True)))
            assert text == want, url
    for c in clients.values():
        c.close()
    # no replica left: the router answers 503 (gRPC: UNAVAILABLE)
    cluster.replicas[1].stop()
    import http.client
    conn = http.client.HTTPConnection(r.host, r.http_port, timeout=10)
    conn.request("GET", "/v2/health/ready")
    assert conn.getresponse().status == 503
    conn.close()
    g = tg.InferenceServerClient(r.grpc_address)
    with pytest.raises(InferenceServerException, match="UNAVAILABLE|503"):
        g.is_server_ready()
    g.close()
