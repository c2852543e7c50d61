"""Small networks for CPU work. Every classifier has ``features`` (the backbone, [B, ...] -> [B, d])
and ``head`` (an ``nn.Linear`` d -> num_classes), so linear probing and the Mimic Score's default
layer (``head.weight``) mean the same thing for every architecture. The image-text probe
(``TwoTowerProbe``, kind "two_tower") is the one model without a classification head."""

from __future__ import annotations

import torch
from torch import nn

from keepset.models.two_tower import TwoTowerProbe


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] x len(hidden) -> head. Input [B, *input_shape], output logits [B, K]."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (128,)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        self.config = {"kind": "mlp", "in_features": in_features, "num_classes": num_classes,
                       "hidden": list(hidden)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """Two conv blocks (conv-ReLU-maxpool) and a hidden Linear, for 28x28 / 32x32 (or any) images.

    Input [B, C, H, W], output logits [B, K].
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int = 32, hidden: int = 128):
        super().__init__()
        side = image_size // 4
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * side * side, hidden), nn.ReLU(),
        )
        self.head = nn.Linear(hidden, num_classes)
        self.config = {"kind": "cnn", "in_channels": in_channels, "image_size": image_size,
                       "num_classes": num_classes, "width": width, "hidden": hidden}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LinearProbe(nn.Module):
    """A linear classifier on fixed features: [B, d] -> [B, K]. ``features`` is the identity."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.features = nn.Flatten()
        self.head = nn.Linear(in_features, num_classes)
        self.config = {"kind": "linear", "in_features": in_features, "num_classes": num_classes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


ARCHITECTURES = {"mlp": MLP, "cnn": SmallCNN, "linear": LinearProbe, "two_tower": TwoTowerProbe}


def build_model(config: dict) -> nn.Module:
    """Build a network from its ``config`` dict (the one stored in every checkpoint)."""
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {kind!r}; known: {sorted(ARCHITECTURES)}")
    if "hidden" in cfg and isinstance(cfg["hidden"], list):
        cfg["hidden"] = tuple(cfg["hidden"])
    return ARCHITECTURES[kind](**cfg)


def model_for_inputs(kind: str, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> nn.Module:
    """A network of ``kind`` ("mlp", "cnn", "linear") sized for samples of ``input_shape`` (no batch dim)."""
    if kind == "cnn":
        if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
            raise ValueError(f"the CNN needs square images [C, H, W], got input shape {input_shape}")
        return SmallCNN(input_shape[0], input_shape[1], num_classes, **kwargs)
    n_in = 1
    for s in input_shape:
        n_in *= int(s)
    if kind == "mlp":
        return MLP(n_in, num_classes, **kwargs)
    if kind == "linear":
        return LinearProbe(n_in, num_classes)
    if kind == "two_tower":
        raise ValueError("the two-tower probe is not a classifier; build it with TwoTowerProbe(d_img, d_txt, dim)")
    raise ValueError(f"unknown architecture {kind!r}; known: {sorted(ARCHITECTURES)}")


def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients of every parameter of ``module`` (in place) and return it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module
