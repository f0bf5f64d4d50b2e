"""Triton Inference Server: a real tritonserver run by seqserve (launcher.py) and what runs in it."""
