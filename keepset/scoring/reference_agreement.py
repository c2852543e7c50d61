"""The reference model asked directly: does it agree with each sample's given label?

Grad-Mimic's reference is a model trained on trusted, clean data. The simplest use of that same
information is to read its prediction on every training sample: a label it disagrees with is
suspect, and the fraction of labels it agrees with, corrected for the reference's own error rate,
estimates the dataset's quality. keepset uses it as a baseline beside the Mimic Score (the only
baseline that sees the trusted data, as Grad-Mimic does) and as an independent check of Stage 2's
quality estimate, which over-flags on nearly clean data.

``reference_label_loss``       logits [N, K], labels [N] -> float [N]: cross-entropy of the given label
``reference_disagrees``        logits [N, K], labels [N] -> bool [N]: argmax differs from the label
``quality_from_agreement``     agreement rate, reference accuracy, K -> estimated fraction of clean labels

The correction assumes a wrong label and a wrong reference prediction are each spread evenly over the
other K - 1 classes and independent of each other (the symmetric-noise model): then
``P(agree) = q * a + (1 - q) * (1 - a) / (K - 1)`` with ``q`` the clean fraction and ``a`` the
reference's accuracy on clean data, and ``q = (P(agree) - c) / (a - c)`` with ``c = (1 - a) / (K - 1)``.
``a`` must be measured on clean data the reference did not train on (a held-out part of the trusted set).
"""

from __future__ import annotations

import math

import numpy as np

from keepset._checks import check_labels


def _check_logits(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be 2-D [N, K], got shape {z.shape}")
    y = check_labels(labels, z.shape[1])
    if len(y) != len(z):
        raise ValueError(f"logits have {len(z)} rows but labels has {len(y)} entries; pass one label per row")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"logits have {int((~np.isfinite(z)).sum())} non-finite values (NaN or inf); "
                         "check the reference model's outputs")
    return z, y


def reference_label_loss(logits, labels) -> np.ndarray:
    """Cross-entropy of each given label under the reference: logits [N, K], labels [N] -> float64 [N].

    Higher = the reference finds the label less likely (more suspect).
    """
    z, y = _check_logits(logits, labels)
    zmax = z.max(axis=1, keepdims=True)
    log_norm = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    return log_norm - z[np.arange(len(y)), y]


def reference_disagrees(logits, labels) -> np.ndarray:
    """True where the reference's top class differs from the given label: logits [N, K], labels [N] -> bool [N].

    Ties in the logits count as the first tied class (``argmax``).
    """
    z, y = _check_logits(logits, labels)
    return z.argmax(axis=1) != y


def quality_from_agreement(agreement: float, reference_accuracy: float, num_classes: int) -> float:
    """Estimated fraction of correct labels from the reference's agreement rate, clipped to [0, 1].

    agreement: fraction of training labels equal to the reference's prediction.
    reference_accuracy: the reference's accuracy on held-out clean data (not its training data).
    num_classes: K >= 2. The reference must beat chance, ``reference_accuracy > 1 / K``.
    """
    for name, v in (("agreement", agreement), ("reference_accuracy", reference_accuracy)):
        if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v) and 0.0 <= v <= 1.0):
            raise ValueError(f"{name} must be a fraction in [0, 1], got {v!r}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    chance = (1.0 - reference_accuracy) / (num_classes - 1)
    if reference_accuracy <= chance:
        raise ValueError(f"reference_accuracy {reference_accuracy:g} is at or below chance (1/{num_classes}); "
                         "its agreement says nothing about the labels: train a better reference")
    return float(np.clip((agreement - chance) / (reference_accuracy - chance), 0.0, 1.0))
