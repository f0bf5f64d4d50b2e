"""`seqserve deploy kubernetes`: several replicas behind a router that keeps each sequence on one.

    result = deploy_kubernetes(DeployOptions(repository="model_repository", out="deploy/k8s"))

writes OUT/servers.yaml, OUT/router.yaml, OUT/haproxy.cfg (the file the router's ConfigMap holds,
and the one a local HAProxy runs: seqserve/deploy/haproxy.py) and OUT/seqserve-deploy.json (what
was asked), all in one atomic step. Everything that can be refused is checked first.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from seqserve.deploy import haproxy
from seqserve.deploy.kubernetes import Plan, router_objects, server_objects
from seqserve.errors import SeqserveError

ENGINES = ("seqserve", "triton")
ROUTERS = ("haproxy",)
MARKER = "seqserve-deploy.json"
FILES = ("servers.yaml", "router.yaml", "haproxy.cfg", MARKER)
DEFAULT_IMAGES = {"seqserve": "seqserve:gpu", "triton": "seqserve-triton:gpu"}   # docker-compose.yml's builds
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class DeployOptions:
    repository: Path              # the model repository the replicas serve (read here for its models)
    out: Path                     # the folder to write; replaced atomically
    engine: str = "seqserve"      # seqserve | triton (tritonserver; needs a triton-* repository)
    replicas: int = 2
    image: str | None = None      # default: DEFAULT_IMAGES[engine]
    router: str = "haproxy"
    namespace: str = "default"
    name: str = "seqserve"        # object name prefix; the router's Service is NAME
    claim: str = "seqserve-models"   # PersistentVolumeClaim holding the repository (mounted read-only)
    slots: int | None = None      # router server slots (most replicas it routes to); default max(8, 2 x replicas)


@dataclass
class DeployResult:
    out: Path
    files: list[str] = field(default_factory=list)
    plan: Plan | None = None
    slots: int = 0


def deploy_kubernetes(o: DeployOptions) -> DeployResult:
    from seqserve.io import atomic_dir

    plan, slots = _plan(o)
    cfg = haproxy.render(haproxy.RouterSettings(plan.service_host, slots))
    texts = {
        "servers.yaml": _yaml(server_objects(plan)),
        "router.yaml": _yaml(router_objects(plan, cfg)),
        "haproxy.cfg": cfg,
        MARKER: json.dumps({"command": "seqserve deploy kubernetes", "slots": slots,
                            **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(o).items()}},
                           indent=2) + "\n",
    }
    with atomic_dir(o.out, MARKER) as tmp:
        for name, text in texts.items():
            (tmp / name).write_text(text)
    return DeployResult(Path(o.out), list(texts), plan, slots)


def _plan(o: DeployOptions) -> tuple[Plan, int]:
    if o.engine not in ENGINES:
        raise SeqserveError(f"--engine {o.engine!r}: expected one of {', '.join(ENGINES)}")
    if o.router not in ROUTERS:
        raise SeqserveError(f"--router {o.router!r}: expected {' or '.join(ROUTERS)}")
    if o.replicas < 1:
        raise SeqserveError(f"--replicas must be at least 1, got {o.replicas}")
    slots = o.slots if o.slots is not None else max(8, 2 * o.replicas)
    if slots < o.replicas:
        raise SeqserveError(f"--slots {slots} is fewer than --replicas {o.replicas}: the router could not reach them all")
    for what, value in (("--name", o.name), ("--namespace", o.namespace)):
        if not _DNS_LABEL.match(value) or len(value) > 40:
            raise SeqserveError(f"{what} {value!r} is not a Kubernetes name (lower-case letters, digits and '-', "
                                "at most 40 characters)")
    targets = _repository_targets(Path(o.repository))
    if o.engine == "triton":
        wrong = sorted(m for m, t in targets.items() if t == "seqserve")
        if wrong:
            raise SeqserveError(f"model '{wrong[0]}' in {o.repository} was packaged for seqserve's own server, which "
                                "tritonserver cannot run; package with --target triton-gpu (or triton-python), "
                                "or deploy with --engine seqserve")
    gpu = o.engine == "triton" and "triton-gpu" in targets.values()
    image = o.image or DEFAULT_IMAGES[o.engine]
    return Plan(o.name, o.namespace, o.engine, o.replicas, image, gpu, o.claim, tuple(sorted(targets))), slots


def _repository_targets(repo: Path) -> dict[str, str]:
    """{model: package target} of every model folder (one with a config.pbtxt)."""
    from seqserve.package import read_config, target_of

    if not repo.is_dir():
        raise SeqserveError(f"--repository {repo}: no such folder (write one with `seqserve package`)")
    out = {}
    for d in sorted(p for p in repo.iterdir() if (p / "config.pbtxt").is_file()):
        out[d.name] = target_of(read_config(d))
    if not out:
        raise SeqserveError(f"--repository {repo} holds no models (no <model>/config.pbtxt); "
                            "write one with `seqserve package`")
    return out


def _yaml(objects: list[dict]) -> str:
    import yaml

    class Literal(str):
        pass

    dumper = type("Dumper", (yaml.SafeDumper,), {})
    # multi-line strings (the haproxy.cfg in the ConfigMap) as readable literal blocks
    dumper.add_representer(Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|"))

    def literal(obj):
        if isinstance(obj, dict):
            return {k: literal(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [literal(v) for v in obj]
        return Literal(obj) if isinstance(obj, str) and "\n" in obj else obj

    return "".join("---\n" + yaml.dump(literal(obj), Dumper=dumper, sort_keys=False, width=120)
                   for obj in objects)
