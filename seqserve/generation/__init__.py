"""Text generation: one decoding loop over any backend (torch, ONNX Runtime, later a server)."""

from seqserve.generation.cache import DecodeState
from seqserve.generation.loop import (Chain, Completion, TokenEvent, decode_step, generate, generate_text, prefill,
                                      start_values)
from seqserve.generation.sampling import SamplingParams, filtered_probs, sample_next

__all__ = ["Chain", "Completion", "DecodeState", "SamplingParams", "TokenEvent", "decode_step", "filtered_probs",
           "generate", "generate_text", "prefill", "sample_next", "start_values"]
