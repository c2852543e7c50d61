"""``keepset score --method dynamics``: train a network on the data once with ``DynamicsObserver`` and
return every training-dynamics score column (loss, el2n, grand, forgetting, aum, entropy, margin,
least_confidence; see ``keepset.scoring.dynamics``)."""

from __future__ import annotations

import numpy as np

from keepset._argtypes import positive_float, positive_int
from keepset.data import SampleSet


def add_arguments(parser) -> None:
    g = parser.add_argument_group("dynamics")
    g.add_argument("--dyn-model", choices=("mlp", "cnn", "linear"), default="mlp",
                   help="dynamics: network trained to record the dynamics")
    g.add_argument("--dyn-epochs", type=positive_int, default=10, help="dynamics: training epochs")
    g.add_argument("--dyn-lr", type=positive_float, default=0.05, help="dynamics: SGD learning rate (momentum 0.9)")
    g.add_argument("--early-epochs", type=positive_int, default=2,
                   help="dynamics: EL2N / GraNd averaged over the first epochs")


def preflight(method: str, options: dict) -> dict:
    """Checks before any work (``keepset score`` calls it first)."""
    early, epochs = options.get("early_epochs", 2), options.get("dyn_epochs", 10)
    if early > epochs:
        raise ValueError(f"--early-epochs {early} exceeds --dyn-epochs {epochs}: EL2N / GraNd average the first "
                         "epochs of the training run; lower --early-epochs or raise --dyn-epochs")
    return {}


def score_dynamics(samples: SampleSet, *, dyn_model: str = "mlp", dyn_epochs: int = 10, dyn_lr: float = 0.05,
                   early_epochs: int = 2, batch_size: int = 64, seed: int = 0, progress: bool = True,
                   device: str = "cpu", **_) -> dict[str, np.ndarray]:
    """Train ``dyn_model`` on all of ``samples`` (their labels) and return {column: float64 [N]}."""
    import torch

    from keepset.models import model_for_inputs
    from keepset.scoring.dynamics import dynamics_scores
    from keepset.recorder import dense_by_epoch
    from keepset.training import fit
    from keepset.training.dynamics_observer import DynamicsObserver

    x = samples.get_inputs()
    torch.manual_seed(seed)
    net = model_for_inputs(dyn_model, tuple(x.shape[1:]), samples.num_classes)
    obs = DynamicsObserver()
    fit(net, x, samples.labels, ids=samples.ids, observers=[obs], epochs=dyn_epochs, batch_size=min(batch_size, 256),
        lr=dyn_lr, momentum=0.9, seed=seed, progress=progress, desc="dynamics", device=device)
    return dynamics_scores(dense_by_epoch(obs.recorder, obs.fields, samples.ids), early_epochs)
