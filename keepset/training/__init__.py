"""Stage 3 of the data flow: one training loop with hooks, and the hooks that record dynamics."""

from keepset.training.gradmimic import GradMimicHook
from keepset.training.loop import OPTIMIZERS, BatchState, FitResult, accuracy, embed, fit, predict_logits
from keepset.training.recorder import DynamicsRecorder

__all__ = ["fit", "BatchState", "FitResult", "OPTIMIZERS", "accuracy", "embed", "predict_logits",
           "GradMimicHook", "DynamicsRecorder"]
