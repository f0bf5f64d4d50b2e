"""Text generation: one decoding loop over any backend (torch, ONNX Runtime, later a server)."""

from seqserve.generation.cache import DecodeState
from seqserve.generation.loop import Completion, TokenEvent, decode_step, generate, generate_text, prefill
from seqserve.generation.sampling import SamplingParams, filtered_probs, sample_next

__all__ = ["Completion", "DecodeState", "SamplingParams", "TokenEvent", "decode_step", "filtered_probs",
           "generate", "generate_text", "prefill", "sample_next"]
