"""Label-noise injection that records which samples were corrupted."""

from __future__ import annotations

import numpy as np

from keepset._checks import check_labels, infer_num_classes

NOISE_KINDS = ("symmetric", "asymmetric")


def flip_permutation(num_classes: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(num_classes)`` with no fixed point (class c -> perm[c] != c).

    Built as a random cyclic order, so every class maps to a different one.
    """
    if num_classes < 2:
        raise ValueError("asymmetric noise needs at least 2 classes")
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_classes)
    perm = np.empty(num_classes, dtype=np.int64)
    perm[order] = np.roll(order, -1)
    return perm


def add_label_noise(labels, rate: float, kind: str = "symmetric", num_classes: int | None = None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt labels and say which ones were corrupted.

    Parameters
    ----------
    labels : int array [N]
    rate : float in [0, 1]
        symmetric: exactly ``int(rate * N)`` samples move to a uniformly drawn *different* class.
        asymmetric: each sample flips to ``perm[label]`` (a seeded permutation without fixed points)
        independently with probability ``rate``.
    kind : "symmetric" or "asymmetric"
    num_classes : int, default ``labels.max() + 1``
        Inferred only when every class 0..max(labels) occurs (and max(labels) < N); otherwise pass it:
        noise draws new labels from 0..num_classes-1, so a wrongly inferred count would silently move
        samples into classes that do not exist (a label 10^9 would mean 10^9 classes).
    seed : int

    Returns
    -------
    noisy_labels : int64 [N]
    corrupted : bool [N], True where ``noisy_labels != labels``
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {NOISE_KINDS}")
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"noise rate must be a number in [0, 1], got {rate!r}") from None
    if not np.isfinite(rate) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1] (the fraction of labels to corrupt), got {rate}")
    y = check_labels(labels)
    if y.size == 0:
        raise ValueError("labels is empty: there are no samples to add label noise to")
    if num_classes is None:
        num_classes = infer_num_classes(y, dense=True, fix="pass num_classes (the number of classes)")
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
    num_classes = int(num_classes)
    y = check_labels(y, num_classes, hint=f"num_classes is {num_classes}: pass the true number of classes")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got num_classes={num_classes}")
    rng = np.random.default_rng(seed)
    n = len(y)
    noisy = y.copy()
    if kind == "symmetric":
        chosen = rng.choice(n, size=int(rate * n), replace=False)
        # a uniform draw among the num_classes - 1 other classes
        offset = rng.integers(1, num_classes, size=len(chosen))
        noisy[chosen] = (y[chosen] + offset) % num_classes
    else:
        perm = flip_permutation(num_classes, seed)
        flip = rng.random(n) < rate
        noisy[flip] = perm[y[flip]]
    return noisy, noisy != y
