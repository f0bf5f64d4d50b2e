"""seqserve deploy: manifests for several replicas behind a router that keeps each sequence on one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console, handle_errors

app = typer.Typer(help="Write deployment manifests: several replicas behind a sequence-sticky router.",
                  no_args_is_help=True)


@app.command("kubernetes")
@handle_errors
def kubernetes(
    repository: Annotated[Path, typer.Option("--repository", "-r", help="Model repository the replicas serve (from `seqserve package`).")],
    out: Annotated[Path, typer.Option(help="Folder to write (replaced atomically): servers.yaml, router.yaml, haproxy.cfg.")],
    engine: Annotated[str, typer.Option(help="seqserve (the embedded server) or triton (tritonserver; a triton-gpu repository gets one GPU per replica).")] = "seqserve",
    replicas: Annotated[int, typer.Option(help="Server replicas.")] = 2,
    image: Annotated[Optional[str], typer.Option(help="Server image. Default: seqserve:gpu / seqserve-triton:gpu (docker-compose.yml's builds).")] = None,
    router: Annotated[str, typer.Option(help="The router in front: haproxy (consistent hash on x-sequence-id, HTTP and gRPC).")] = "haproxy",
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace of every object.")] = "default",
    name: Annotated[str, typer.Option(help="Object name prefix; clients connect to the Service NAME.")] = "seqserve",
    claim: Annotated[str, typer.Option(help="PersistentVolumeClaim holding the model repository (mounted read-only at /models).")] = "seqserve-models",
    slots: Annotated[Optional[int], typer.Option(help="Router server slots: the most replicas it can route to. Default: max(8, 2 x replicas).")] = None,
):
    """Kubernetes manifests: server Deployment + headless Service, and an HAProxy router hashing on x-sequence-id."""
    from seqserve.deploy import DeployOptions, deploy_kubernetes

    r = deploy_kubernetes(DeployOptions(repository=repository, out=out, engine=engine, replicas=replicas, image=image,
                                        router=router, namespace=namespace, name=name, claim=claim, slots=slots))
    p = r.plan
    gpu = ", 1 GPU each" if p.gpu else ""
    console.print(f"wrote {', '.join(r.files)} to {r.out}/", markup=False, highlight=False, soft_wrap=True)
    console.print(f"{p.replicas} x {p.engine} ({p.image}{gpu}) serving {len(p.models)} models from PVC '{p.claim}'; "
                  f"router: HAProxy on Service '{p.name}' (:8000 HTTP, :8001 gRPC), up to {r.slots} replicas",
                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"next: kubectl apply -f {r.out}/   (clients send x-sequence-id: <sequence id> on every request)",
                  markup=False, highlight=False, soft_wrap=True)
