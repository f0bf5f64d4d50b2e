"""Kubernetes manifests for several replicas behind a sequence-sticky router, as plain dicts.

servers.yaml: a Deployment of `seqserve serve` (or tritonserver) replicas and the headless
Service the router resolves them through; router.yaml: the HAProxy ConfigMap (haproxy.cfg, the
same file deploy writes beside it), its Deployment and the Service clients use.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqserve.deploy.haproxy import GRPC_PORT, HEALTH_PORT, HTTP_PORT, METRICS_PORT

HAPROXY_IMAGE = "haproxy:2.6"
MODELS_MOUNT = "/models"
CONFIG_MOUNT = "/usr/local/etc/haproxy"
DRAIN_SECONDS = 30


@dataclass(frozen=True)
class Plan:
    name: str                 # prefix of every object: NAME (router Service), NAME-replicas, NAME-router
    namespace: str
    engine: str               # seqserve | triton
    replicas: int
    image: str
    gpu: bool                 # request one nvidia.com/gpu per replica (triton with a triton-gpu repository)
    claim: str                # the PersistentVolumeClaim holding the model repository
    models: tuple[str, ...]   # what the repository serves (an annotation, for people reading the cluster)

    @property
    def replicas_service(self) -> str:
        return f"{self.name}-replicas"

    @property
    def service_host(self) -> str:
        return f"{self.replicas_service}.{self.namespace}.svc.cluster.local"


def _meta(plan: Plan, name: str, component: str, **extra) -> dict:
    return {"name": name, "namespace": plan.namespace, "labels": _labels(plan, component), **extra}


def _labels(plan: Plan, component: str) -> dict:
    return {"app.kubernetes.io/name": plan.name, "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "seqserve-deploy"}


def _port(name: str, port: int, protocol: str | None = None) -> dict:
    p = {"name": name, "port": port, "targetPort": name}
    if protocol:
        p["appProtocol"] = protocol
    return p


def _server_command(plan: Plan) -> list[str]:
    if plan.engine == "triton":
        return ["tritonserver", f"--model-repository={MODELS_MOUNT}", f"--http-port={HTTP_PORT}",
                f"--grpc-port={GRPC_PORT}", f"--metrics-port={METRICS_PORT}",
                f"--exit-timeout-secs={DRAIN_SECONDS}"]
    cmd = ["seqserve", "serve", "--repository", MODELS_MOUNT, "--host", "0.0.0.0",
           "--drain-seconds", str(DRAIN_SECONDS)]
    return cmd + (["--device", "cuda"] if plan.gpu else [])


def _probe(path: str, period: int, failures: int) -> dict:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
            "timeoutSeconds": 3, "failureThreshold": failures}


def server_objects(plan: Plan) -> list[dict]:
    """The replicas: a Deployment and its headless Service (one DNS record per ready pod)."""
    resources = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
    if plan.gpu:
        resources["limits"]["nvidia.com/gpu"] = 1
    volumes = [{"name": "models", "persistentVolumeClaim": {"claimName": plan.claim, "readOnly": True}}]
    mounts = [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}]
    if plan.engine == "triton":   # the python backend passes tensors through /dev/shm
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    container = {
        "name": plan.engine,
        "image": plan.image,
        "command": _server_command(plan),
        "ports": [{"name": "http", "containerPort": HTTP_PORT}, {"name": "grpc", "containerPort": GRPC_PORT},
                  {"name": "metrics", "containerPort": METRICS_PORT}],
        "readinessProbe": _probe("/v2/health/ready", 5, 2),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        # loading the models can take a while: liveness starts counting once it is live
        "startupProbe": _probe("/v2/health/live", 5, 60),
        "resources": resources,
        "volumeMounts": mounts,
    }
    selector = _labels(plan, "server")
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(plan, f"{plan.name}-server", "server",
                          annotations={"seqserve.io/models": ",".join(plan.models),
                                       "seqserve.io/engine": plan.engine}),
        "spec": {
            "replicas": plan.replicas,
            "selector": {"matchLabels": selector},
            # one replica at a time: each one replaced moves only its ~1/N of the sequences
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": selector,
                             "annotations": {"prometheus.io/scrape": "true",
                                             "prometheus.io/port": str(METRICS_PORT),
                                             "prometheus.io/path": "/metrics"}},
                "spec": {"containers": [container], "volumes": volumes,
                         # SIGTERM drains for DRAIN_SECONDS, then the server ends what is left
                         "terminationGracePeriodSeconds": DRAIN_SECONDS + 15},
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(plan, plan.replicas_service, "server"),
        "spec": {"clusterIP": "None", "selector": selector,
                 "ports": [_port("http", HTTP_PORT), _port("grpc", GRPC_PORT, "kubernetes.io/h2c"),
                           _port("metrics", METRICS_PORT)]},
    }
    return [deployment, service]


def router_objects(plan: Plan, haproxy_cfg: str) -> list[dict]:
    """HAProxy in front: its ConfigMap (haproxy.cfg verbatim), Deployment and Service."""
    selector = _labels(plan, "router")
    container = {
        "name": "haproxy",
        "image": HAPROXY_IMAGE,
        "args": ["-f", f"{CONFIG_MOUNT}/haproxy.cfg"],
        "ports": [{"name": "http", "containerPort": HTTP_PORT}, {"name": "grpc", "containerPort": GRPC_PORT},
                  {"name": "health", "containerPort": HEALTH_PORT}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}],
    }
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": _meta(plan, f"{plan.name}-router", "router"),
        "data": {"haproxy.cfg": haproxy_cfg},
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(plan, f"{plan.name}-router", "router"),
        "spec": {
            # one router: each HAProxy fills its server slots from DNS in the order the answers
            # come, so two routers could place a replica on different slots of the ring
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {"containers": [container],
                         "volumes": [{"name": "config", "configMap": {"name": f"{plan.name}-router"}}]},
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(plan, plan.name, "router"),
        "spec": {"selector": selector,
                 "ports": [_port("http", HTTP_PORT), _port("grpc", GRPC_PORT, "kubernetes.io/h2c")]},
    }
    return [config_map, deployment, service]
