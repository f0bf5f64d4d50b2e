# seqserve's embedded server (`seqserve serve`) on a GPU: ONNX Runtime's CUDA execution provider,
# decode caches kept on the device. Built by docker-compose.yml (service `seqserve`) from the
# repository root:  docker build -f docker/seqserve.Dockerfile -t seqserve:gpu .
#
# Base: CUDA 13 runtime + cuDNN 9 on Ubuntu 24.04 (Python 3.12), what the onnxruntime-gpu 1.31 wheel
# from PyPI is built against (its CUDA provider needs libcudart/libcublasLt 13, cuFFT, cuRAND, cuDNN 9).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

# torch: a dependency of the package. `seqserve serve` imports it (loading a model version goes
# through seqserve.package -> seqserve.export -> seqserve.models) but never runs it: inference is
# ONNX Runtime. So the CPU wheel from PyTorch's own index is enough, and keeps several GB of CUDA
# packages out of the image (PyPI's default Linux wheel would bring them).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# CUDA 13 build (onnxruntime-gpu >= 1.28 on PyPI); >= 1.23 is needed for the GPT graphs' opset 23.
ARG ORT_GPU_VERSION=1.31.1

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# Only what the package needs to install (.dockerignore keeps the rest out of the build context).
COPY pyproject.toml README.md /src/
COPY seqserve /src/seqserve
COPY cli /src/cli
RUN pip install "onnxruntime-gpu==${ORT_GPU_VERSION}" /src \
 && rm -rf /src \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin seqserve

USER 10001
WORKDIR /tmp
# HTTP (KServe v2), gRPC, Prometheus metrics: the same ports as Triton inside the container.
EXPOSE 8000 8001 8002
# The repository is mounted read-only at /models. Inside the container the server must listen on
# 0.0.0.0 to be reachable through the published ports; docker-compose.yml publishes them on the
# host's 127.0.0.1 only. Set SEQSERVE_API_KEY to require a bearer token (health checks stay open).
# SIGTERM (docker stop) drains in-flight requests and streams before exiting.
CMD ["seqserve", "serve", "--repository", "/models", "--host", "0.0.0.0", "--device", "cuda"]
