"""`seqserve deploy kubernetes`: the manifests validate against the Kubernetes schemas
(kubernetes-validate, offline), the router's ConfigMap holds exactly the haproxy.cfg written
beside it, HAProxy itself accepts that file (both branches: DNS slots and local replicas), engine
rules, atomic writes, one-line errors. The routing-key header of every client: tests/test_replicas.py
(through a real proxy) and the unit checks at the end here.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from helpers import assert_one_line_error, run

from seqserve.deploy import FILES, DeployOptions, deploy_kubernetes
from seqserve.deploy.haproxy import local_env
from seqserve.deploy.local import find_haproxy
from seqserve.errors import SeqserveError


@pytest.fixture(scope="module")
def repo(served_repo):
    return served_repo("lstm")


def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _validate(path):
    import kubernetes_validate

    for doc in _docs(path):
        kubernetes_validate.validate(doc, "1.30.0", strict=True)   # raises ValidationError


@pytest.mark.parametrize("engine", ["seqserve", "triton"])
def test_manifests_validate_against_the_kubernetes_schemas(repo, served_repo, tmp_path, engine):
    source = served_repo("lstm", target="triton-gpu") if engine == "triton" else repo
    res = run("deploy", "kubernetes", "--repository", source, "--out", tmp_path / "k8s", "--engine", engine,
              "--replicas", "3", "--namespace", "inference")
    assert res.exit_code == 0, res.output
    out = tmp_path / "k8s"
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    for name in ("servers.yaml", "router.yaml"):
        _validate(out / name)
    # the command line a user runs validates the same files
    cli = subprocess.run([os.path.join(os.path.dirname(os.sys.executable), "kubernetes-validate"), "--strict",
                          "-k", "1.30.0", str(out / "servers.yaml"), str(out / "router.yaml")],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stdout + cli.stderr

    server, service = _docs(out / "servers.yaml")
    assert (server["kind"], service["kind"]) == ("Deployment", "Service")
    assert server["spec"]["replicas"] == 3 and service["spec"]["clusterIP"] == "None"
    pod = server["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "seqserve-models", "readOnly": True}
    assert {"mountPath": "/models", "name": "models", "readOnly": True} in c["volumeMounts"]
    assert c["resources"]["requests"]["cpu"]
    if engine == "triton":
        assert c["command"][0] == "tritonserver" and c["resources"]["limits"]["nvidia.com/gpu"] == 1
    else:
        assert c["command"][:2] == ["seqserve", "serve"] and "nvidia.com/gpu" not in c["resources"]["limits"]
    assert all(d["metadata"]["namespace"] == "inference" for d in _docs(out / "servers.yaml") + _docs(out / "router.yaml"))


def test_the_config_map_holds_the_file_the_router_runs(repo, tmp_path):
    r = deploy_kubernetes(DeployOptions(repository=repo, out=tmp_path / "k8s", replicas=2))
    cfg = (r.out / "haproxy.cfg").read_text()
    config_map, router, service = _docs(r.out / "router.yaml")
    assert config_map["kind"] == "ConfigMap" and config_map["data"]["haproxy.cfg"] == cfg
    assert router["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == config_map["metadata"]["name"]
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001}
    for line in ("balance hdr(x-sequence-id)", "hash-type consistent", "option httpchk GET /v2/health/ready",
                 'bind "${SEQSERVE_ROUTER_GRPC-:8001}" proto h2',
                 "server-template replica 1-8 seqserve-replicas.default.svc.cluster.local:8000"):
        assert line in cfg, line
    assert cfg.count("balance hdr(x-sequence-id)") == 2        # HTTP and gRPC backends
    assert json.loads((r.out / "seqserve-deploy.json").read_text())["replicas"] == 2


@pytest.mark.skipif(find_haproxy() is None, reason="haproxy is not installed (apt-get install -y haproxy; "
                                                    ".ci/run installs it where it can)")
def test_haproxy_accepts_the_file_in_both_branches(repo, tmp_path):
    r = deploy_kubernetes(DeployOptions(repository=repo, out=tmp_path / "k8s"))
    cfg = str(r.out / "haproxy.cfg")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQSERVE_")}
    kube = subprocess.run([find_haproxy(), "-c", "-f", cfg], env=env, capture_output=True, text=True)
    assert kube.returncode == 0, kube.stdout + kube.stderr
    local = {**env, **local_env([("127.0.0.1", 9000, 9001), ("127.0.0.1", 9010, 9011)],
                                "127.0.0.1:9100", "127.0.0.1:9101", "127.0.0.1:9102")}
    res = subprocess.run([find_haproxy(), "-c", "-f", cfg], env=local, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rewrites_atomically_and_never_a_foreign_folder(repo, tmp_path):
    out = tmp_path / "k8s"
    deploy_kubernetes(DeployOptions(repository=repo, out=out, replicas=2))
    deploy_kubernetes(DeployOptions(repository=repo, out=out, replicas=4))
    assert _docs(out / "servers.yaml")[0]["spec"]["replicas"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]      # no hidden leftovers
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SeqserveError):
        deploy_kubernetes(DeployOptions(repository=repo, out=foreign))
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("args, words", [
    (["--engine", "kserve"], ["--engine", "seqserve, triton"]),
    (["--router", "envoy"], ["--router", "haproxy"]),
    (["--replicas", "0"], ["--replicas"]),
    (["--replicas", "9", "--slots", "4"], ["--slots"]),
    (["--namespace", "Bad_Name"], ["--namespace"]),
    (["--engine", "triton"], ["tritonserver cannot run", "--target triton-gpu"]),
])
def test_bad_options_are_one_line_errors(repo, tmp_path, args, words):
    res = run("deploy", "kubernetes", "--repository", repo, "--out", tmp_path / "k8s", *args)
    assert_one_line_error(res, *words)
    assert not (tmp_path / "k8s").exists()


def test_a_missing_or_empty_repository_is_one_line_error(tmp_path):
    assert_one_line_error(run("deploy", "kubernetes", "--repository", tmp_path / "nope", "--out", tmp_path / "o"),
                          "no such folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("deploy", "kubernetes", "--repository", tmp_path / "empty", "--out", tmp_path / "o"),
                          "holds no models")


def test_deploy_help():
    assert run("deploy", "--help").exit_code == 0
    res = run("deploy", "kubernetes", "--help")
    assert res.exit_code == 0 and "--replicas" in res.output


# ---- the routing key every client sends --------------------------------------------------------

def test_encoders_carry_the_routing_key():
    import numpy as np

    from seqserve.loadtest.config import parse_target
    from seqserve.loadtest.grpc_client import GrpcEncoder, key_of
    from seqserve.loadtest.http_client import HttpEncoder
    from seqserve.serve.routing import routing_key

    ids = {"input_ids": np.array([[1, 2]], np.int64)}
    http = HttpEncoder(parse_target("http://127.0.0.1:8000", None), "lstm_step")
    assert b"\r\nx-sequence-id: 77\r\n" in http.infer(ids, {"sequence_id": 77, "sequence_start": True})
    assert b"x-sequence-id" not in http.infer(ids)
    routed = http.route(http.generate({"text_input": "a"}), 5)
    assert routed.startswith(b"POST /v2/models/lstm_step/generate_stream HTTP/1.1\r\nx-sequence-id: 5\r\n")
    grpc = GrpcEncoder("lstm_step")
    assert key_of(grpc.infer(ids, {"sequence_id": 77})) == "77" and key_of(grpc.infer(ids)) is None
    assert key_of(grpc.route(grpc.generate(ids), "k")) == "k"
    assert routing_key("a b\r\nc") == "a%20b%0D%0Ac"          # never a header injection
