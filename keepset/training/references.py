"""Reference variants of the published Grad-Mimic experiments (github.com/zihengh1/Grad-Mimic, ``run.py``).

- ``perturbed_reference``: the published ``--sigma`` robustness check. ``run.py`` ``main`` loads the reference
  and, when ``sigma > 0``, adds ``torch.normal(0, sigma, size=layer.shape)`` to the mimic layer only
  (``--mimic_layer``, default ``heads.head.weight``): sigma is an absolute standard deviation, not relative to
  the weights' scale, and the other parameters are untouched.
- ``reference_on_split``: the published ``--using_testset_to_build_ref`` (a reference trained by plain gradient
  descent on a split other than the one being weighted). Here: the trusted samples are split in two,
  stratified and seeded, and a copy of the model's initial weights is trained on one half (the other half
  stays free, e.g. as the clean samples of ``FewShotInfluence`` or ``AGRA``).

Both return a new module; the input module is not modified.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from keepset.models.mimic import last_linear_name


def _parameter_names(module: nn.Module, layers) -> list[str]:
    params = dict(module.named_parameters())
    if layers is None:
        return [f"{last_linear_name(module)}.weight"]
    if isinstance(layers, str):
        if layers == "all":
            return list(params)
        layers = [layers]
    out: list[str] = []
    for item in layers:
        hits = [item] if item in params else [n for n in params if n.startswith(item + ".")]
        if not hits:
            raise ValueError(f"layer {item!r} names no parameter or module of the reference; parameters are: "
                             f"{', '.join(params)}")
        out += [h for h in hits if h not in out]
    return out


def perturbed_reference(reference: nn.Module, sigma: float, seed: int = 0, *,
                        layers: str | Sequence[str] | None = None) -> nn.Module:
    """A copy of ``reference`` with independent Gaussian noise ``N(0, sigma^2)`` added to every entry of the
    parameters ``layers`` (None: the final Linear's weight, the published default mimic layer; "all": every
    parameter; or parameter names / module prefixes). ``sigma`` >= 0 is absolute, as in the published code.
    The noise is drawn on the CPU from ``seed`` (the same bytes on any device)."""
    if not isinstance(reference, nn.Module):
        raise ValueError(f"reference must be an nn.Module, got {type(reference).__name__}")
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma must be a number >= 0 (the noise's standard deviation), got {sigma!r}") from None
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0 (the noise's standard deviation), got {sigma}")
    names = _parameter_names(reference, layers)
    out = copy.deepcopy(reference)
    params = dict(out.named_parameters())
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for n in names:
            p = params[n]
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64) * sigma
            p.add_(noise.to(device=p.device, dtype=p.dtype))
    return out


def reference_on_split(initial: nn.Module, x, y, *, part: int = 0, fraction: float = 0.5, seed: int = 0,
                       epochs: int = 10, batch_size: int = 64, lr: float = 0.1, momentum: float = 0.9,
                       optimizer: str = "sgd", weight_decay: float = 0.0, device=None) -> nn.Module:
    """A reference trained on one half of the trusted samples.

    initial : the model's initial weights (the reference starts from a copy, so it shares the weight space);
    x : [N, ...] trusted inputs (features for a linear probe); y : [N] their clean labels;
    part : 0 trains on the first part of ``keepset.data.split_indices(y, (fraction, 1 - fraction), seed)``
    (stratified by label, ``fraction`` of the samples), 1 on the second; the rest of the arguments go to
    ``keepset.fit`` (plain mean-loss training, seeded batch order). Returns the trained copy, on the CPU.
    """
    from keepset.data import split_indices
    from keepset.training.loop import fit

    if not isinstance(initial, nn.Module):
        raise ValueError(f"initial must be an nn.Module (the model's initial weights), got {type(initial).__name__}")
    if part not in (0, 1):
        raise ValueError(f"part must be 0 or 1 (which half of the trusted samples to train on), got {part!r}")
    if not (isinstance(fraction, (int, float)) and 0 < float(fraction) < 1):
        raise ValueError(f"fraction must be in (0, 1) (the first part's share of the trusted samples), "
                         f"got {fraction!r}")
    y = np.asarray(y.cpu() if torch.is_tensor(y) else y)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    positions = split_indices(y, (float(fraction), 1.0 - float(fraction)), seed)[part]
    ref = copy.deepcopy(initial)
    xs = x[torch.as_tensor(positions)] if torch.is_tensor(x) else np.asarray(x)[positions]
    fit(ref, xs, y[positions], epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
        weight_decay=weight_decay, seed=seed, progress=False, desc="reference", device=device)
    return ref.cpu()
