"""Training language models of every registered family."""

from seqserve.training.trainer import TrainConfig, TrainResult, evaluate, resume_config, train

__all__ = ["TrainConfig", "TrainResult", "evaluate", "resume_config", "train"]
