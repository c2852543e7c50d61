"""The training stage: online methods (one ``loss(model, x, y, ids)`` verb each, for any PyTorch loop),
``GradMimic`` among them, keepset's thin ``fit`` loop over them, and the dynamics observer."""

from keepset.training.agra import AGRA
from keepset.training.dynamics_observer import DYNAMICS_FIELDS, DynamicsObserver
from keepset.training.gradmatch import BatchGradMatch, GradMatch, orthogonal_mp
from keepset.training.gradmimic import GradMimic
from keepset.training.influence import FewShotInfluence
from keepset.training.layer_weighted import LayerWeightedLoss
from keepset.training.loop import OPTIMIZERS, FitResult, accuracy, embed, fit, predict_logits
from keepset.training.online import BatchOutput, MeanLoss, OnlineMethod, WeightedLoss
from keepset.training.online_baselines import GrandWeight, RhoLoss, irreducible_losses
from keepset.training.parity import mimic_weights, opt_weights
from keepset.training.references import perturbed_reference, reference_on_split

__all__ = ["GradMimic", "fit", "FitResult", "OPTIMIZERS", "accuracy", "embed", "predict_logits",
           "OnlineMethod", "MeanLoss", "WeightedLoss", "BatchOutput", "RhoLoss", "GrandWeight",
           "irreducible_losses", "DynamicsObserver", "DYNAMICS_FIELDS", "LayerWeightedLoss", "AGRA", "GradMatch",
           "BatchGradMatch", "orthogonal_mp", "FewShotInfluence", "mimic_weights", "opt_weights",
           "perturbed_reference", "reference_on_split"]
