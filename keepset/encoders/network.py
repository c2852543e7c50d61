"""A trained keepset network's penultimate layer (``model.features``) as an image encoder.

``NetworkEncoder.from_checkpoint(path)`` loads a safetensors checkpoint; ``train_trusted_network``
trains the default encoder on a data set's trusted split (the 15 % part of
``split_indices(labels, (0.6, 0.15, 0.25), seed)``), whose labels are taken to be clean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from keepset.data import SampleSet, split_indices
from keepset.encoders.base import batches, hash_state_dict, positions_of
from keepset.models import load_checkpoint, model_for_inputs
from keepset.training import accuracy, embed, fit

TRUSTED_FRACTIONS = (0.6, 0.15, 0.25)


class NetworkEncoder:
    """Image encoder: ``encode_images(samples) -> model.features(x)`` float32 [N, d] (batched, eval mode)."""

    def __init__(self, model: nn.Module, *, name: str = "network", batch_size: int = 1024, progress: bool = True):
        if not hasattr(model, "features"):
            raise ValueError("the network needs a .features backbone (every keepset network has one)")
        self.model = model.eval()
        self.batch_size = int(batch_size)
        self.progress = progress
        self.name = name
        self.fingerprint = "net-" + hash_state_dict(model)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> "NetworkEncoder":
        model, _ = load_checkpoint(path)
        return cls(model, name=f"network:{path}", **kwargs)

    def encode_images(self, samples: SampleSet, positions=None) -> np.ndarray:
        """Penultimate-layer features float32 [len(positions), d], in chunks of 8192 (bounded memory)."""
        pos = positions_of(samples, positions)
        out = [embed(self.model, samples.get_inputs(pos[a:b]), batch_size=self.batch_size)
               for a, b in batches(len(pos), 8192, "network features", self.progress and len(pos) > 8192)]
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def default_architecture(samples: SampleSet) -> str:
    """SmallCNN for square images of side >= 16, an MLP otherwise (digits 8x8, feature vectors)."""
    shape = samples.get_inputs([0]).shape[1:]
    if len(shape) == 3 and shape[1] == shape[2] and shape[1] >= 16:
        return "cnn"
    return "mlp"


def train_trusted_network(samples: SampleSet, *, arch: str | None = None, epochs: int = 30, batch_size: int = 128,
                          lr: float = 0.05, seed: int = 0, progress: bool = True) -> tuple[nn.Module, dict]:
    """Train a keepset network on the trusted split of ``samples`` (its labels are taken as clean).

    Returns (model in eval mode, info with the architecture, the trusted positions' count and the
    accuracy on the held-out 25 % test split).
    """
    train_pos, trusted_pos, test_pos = split_indices(samples.labels, TRUSTED_FRACTIONS, seed)
    arch = arch or default_architecture(samples)
    x = samples.get_inputs(trusted_pos)
    y = samples.labels[trusted_pos]
    torch.manual_seed(seed)
    model = model_for_inputs(arch, tuple(x.shape[1:]), samples.num_classes)
    fit(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9, seed=seed, progress=progress,
        desc="trusted encoder")
    test_acc = accuracy(model, samples.get_inputs(test_pos), samples.labels[test_pos])
    return model.eval(), {"arch": arch, "trusted": int(len(trusted_pos)), "test_accuracy": test_acc}
