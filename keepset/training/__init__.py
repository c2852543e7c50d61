"""The training stage: online methods (one ``loss(model, x, y, ids)`` verb each, for any PyTorch loop),
``GradMimic`` among them, keepset's thin ``fit`` loop over them, and the dynamics observer."""

from keepset.training.dynamics_observer import DYNAMICS_FIELDS, DynamicsObserver
from keepset.training.gradmimic import GradMimic
from keepset.training.loop import OPTIMIZERS, FitResult, accuracy, embed, fit, predict_logits
from keepset.training.online import BatchOutput, MeanLoss, OnlineMethod, WeightedLoss
from keepset.training.online_baselines import GrandWeight, RhoLoss, irreducible_losses

__all__ = ["GradMimic", "fit", "FitResult", "OPTIMIZERS", "accuracy", "embed", "predict_logits",
           "OnlineMethod", "MeanLoss", "WeightedLoss", "BatchOutput", "RhoLoss", "GrandWeight",
           "irreducible_losses", "DynamicsObserver", "DYNAMICS_FIELDS"]
