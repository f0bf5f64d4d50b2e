"""seqserve's embedded server: ONNX Runtime behind the KServe v2 / Triton protocol (HTTP + gRPC)."""
