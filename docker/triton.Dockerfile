# NVIDIA Triton Inference Server with seqserve installed in its Python, for a repository written by
# `seqserve package EXPORT --repository model_repository --target triton-gpu`:
#   NAME, NAME_step      platform "onnxruntime_onnx", KIND_GPU: Triton's own onnxruntime backend
#   NAME_generate        python backend; its model.py does
#                        `from seqserve.triton.python_model import TritonPythonModel`,
#                        so seqserve (and onnxruntime-gpu) must be importable by the image's python3.
# Built by docker-compose.yml (service `triton`) from the repository root:
#   docker build -f docker/triton.Dockerfile -t seqserve-triton:gpu .
#
# Base: NGC release 25.12, i.e. Triton 2.64 by NGC's numbering (24.10 = 2.51.0, one minor a month;
# /opt/tritonserver/TRITON_VERSION in the image says): Ubuntu 24.04 with Python 3.12 (the python
# backend's stub is built for it), CUDA 13, which the onnxruntime-gpu 1.31 wheel of the generate
# model is built for. Why not an older release such as 24.10 (Triton 2.51.0, the version of the CPU
# test server): its onnxruntime backend is ONNX Runtime 1.19, and GPT exports are opset 23 (the ONNX
# Attention op), which ONNX Runtime < 1.23 refuses to load (measured: 1.22.0 rejects an opset-23
# Attention graph, 1.23.2 runs it). Triton moved its backend to ONNX Runtime 1.23 in autumn 2025;
# the first RUN below reads the version actually in the image and stops the build if it is older.
# Recurrent exports (opset 17) load on any release: MIN_BACKEND_ORT= skips the check for them.
# ONNX Runtime 1.23's opset-23 Attention kernel is CPU-only (the CUDA one came in 2026, onnxruntime
# PR #27542): `seqserve package --target triton-gpu` writes gpt graphs for this backend with the
# Attention nodes decomposed into ops the CUDA provider runs (model.onnxruntime_backend.onnx).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.12-py3
FROM ${TRITON_IMAGE}
ARG TRITON_IMAGE

# torch: a dependency of the package. The generate model imports it (seqserve.package ->
# seqserve.export -> seqserve.models) but never runs it: inference is ONNX Runtime. So the CPU wheel
# from PyTorch's own index is enough, and keeps several GB of CUDA packages out of a large image.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# For the python-backend generate model: CUDA 13 build (onnxruntime-gpu >= 1.28 on PyPI).
ARG ORT_GPU_VERSION=1.31.1
# Lowest ONNX Runtime accepted in Triton's onnxruntime backend; empty skips the check (e.g. for an
# older base image serving recurrent models only).
ARG MIN_BACKEND_ORT=1.23

# The python backend runs the image's system python3 (a venv would need EXECUTION_ENV_PATH in every
# config.pbtxt), so install there; Ubuntu 24.04 marks it externally managed.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

RUN set -eu; \
    lib=$(ls /opt/tritonserver/backends/onnxruntime/libonnxruntime.so.1.* 2>/dev/null | sort -V | tail -n 1); \
    if [ -z "$lib" ]; then \
      echo "WARNING: no libonnxruntime.so.1.* in /opt/tritonserver/backends/onnxruntime: cannot tell its ONNX Runtime version (GPT exports need >= ${MIN_BACKEND_ORT:-1.23})"; \
    else \
      ver=${lib##*libonnxruntime.so.}; echo "Triton onnxruntime backend: ONNX Runtime $ver"; \
      if [ -n "${MIN_BACKEND_ORT}" ] && [ "$(printf '%s\n%s\n' "${MIN_BACKEND_ORT}" "$ver" | sort -V | head -n 1)" != "${MIN_BACKEND_ORT}" ]; then \
        echo "ERROR: ONNX Runtime $ver in ${TRITON_IMAGE:-the base image} cannot load GPT exports (opset 23 needs >= ${MIN_BACKEND_ORT}); use a newer TRITON_IMAGE, or --build-arg MIN_BACKEND_ORT= to serve recurrent models only" >&2; \
        exit 1; \
      fi; \
    fi; \
    python3 -m pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md /src/
COPY seqserve /src/seqserve
COPY cli /src/cli
# numpy<2: Triton's python-backend stub 2.51 is built for the numpy 1 ABI (under numpy 2 every
# output tensor arrives empty, measured; seqserve's model.py refuses to load there). numpy 1.26
# is safe whichever ABI this image's stub was built for; SEQSERVE_STUB_NUMPY2_OK=1 overrides.
RUN python3 -m pip install "onnxruntime-gpu==${ORT_GPU_VERSION}" "numpy<2" /src \
 && rm -rf /src \
 && python3 -c "import seqserve.triton.python_model, onnxruntime; print('seqserve for the python backend, onnxruntime', onnxruntime.__version__)"

# HTTP, gRPC, metrics (Triton binds all interfaces inside the container).
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models"]
