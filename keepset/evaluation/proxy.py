"""The shared benchmark setting (the same as keepset's demo):

1. split the data with ``split_indices(labels, (0.6, 0.15, 0.25), seed)`` into train / trusted / test, and
   the trusted split into the reference's part and a held-out part (``HOLDOUT``, stratified, seeded);
2. train a network on the reference's part of the trusted split (clean labels) and freeze its backbone; its
   accuracy on the held-out trusted part is what quality estimates may use (the test split is for final
   metrics only);
3. train a fresh linear head on the (noisy) train split's backbone features with plain SGD, while
   ``GradMimic`` (reference = a LinearProbe holding the trusted net's head, ``reweight=False``) records
   every step's Mimic Score and ``DynamicsObserver`` records loss / correctness / margins ..., by sample id;
4. optionally (``gradmimic=True``) train the same fresh head twice more with Grad-Mimic's Stage 1
   re-weighting, recording every step's Mimic Score: with the paper's softmax weights (the input of its Stage
   2), and with keepset's default, lfdr weights calibrated by the held-out trusted samples, which are scored at
   every step of that run and of the plain-SGD run (the input of the calibrated Stage 2).

Every method is scored from that one proxy run, so all of them see the same data, model and budget.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from keepset.data import add_label_noise, split_indices
from keepset.models import LinearProbe, model_for_inputs
from keepset.recorder import DynamicsRecorder, dense_by_epoch, per_sample
from keepset.training import GradMimic, accuracy, embed, fit
from keepset.training.dynamics_observer import DYNAMICS_FIELDS, DynamicsObserver
from keepset.training.gradmimic import HOLDOUT_FIELDS, RECORD_FIELDS
from keepset.training.step_size import probe_learning_rate

#: fraction of the trusted split held out from the reference: its accuracy there corrects quality estimates
HOLDOUT = 0.2


@dataclass
class Split:
    train: np.ndarray
    trusted: np.ndarray  # the reference's part of the trusted split
    test: np.ndarray
    holdout: np.ndarray  # the held-out part of the trusted split


@dataclass
class Reference:
    net: torch.nn.Module
    holdout_accuracy: float  # accuracy on the held-out trusted samples (what estimates may use)
    train_features: np.ndarray  # [N_train, d] backbone features of the train split
    test_features: np.ndarray
    test_accuracy: float  # final metric only
    holdout_features: np.ndarray | None = None  # [H, d] the held-out trusted samples' features
    holdout_labels: np.ndarray | None = None
    holdout_ids: np.ndarray | None = None

    def train_logits(self) -> np.ndarray:
        """The reference network's head on its frozen features of the train split: float64 [N_train, K]."""
        with torch.no_grad():
            feats = torch.as_tensor(self.train_features, dtype=torch.float32)
            return self.net.head(feats).double().numpy()


@dataclass
class ProxyRun:
    """One proxy run on (noisy) labels: recorded dynamics and Mimic Scores of every train sample."""

    ids: np.ndarray  # [N_train] sample ids of the train split (every recording is keyed by them)
    labels: np.ndarray  # [N_train] labels trained on
    corrupted: np.ndarray  # [N_train] bool
    mimic: DynamicsRecorder  # fields RECORD_FIELDS, recorded during plain SGD
    dynamics: DynamicsRecorder  # fields DYNAMICS_FIELDS
    head_test_accuracy: float
    head_lr: float  # the SGD step the head was trained with
    gradmimic: DynamicsRecorder | None = None  # RECORD_FIELDS recorded during Grad-Mimic training (softmax)
    gradmimic_test_accuracy: float | None = None
    mimic_holdout: DynamicsRecorder | None = None  # the held-out samples' scores during the plain-SGD run
    lfdr: DynamicsRecorder | None = None  # RECORD_FIELDS recorded during keepset's default (lfdr) training
    lfdr_holdout: DynamicsRecorder | None = None
    lfdr_test_accuracy: float | None = None

    def mean_mimic(self, rec: DynamicsRecorder) -> np.ndarray:
        """Each train sample's mean Mimic Score in ``rec``: float64 [N_train], in the train split's order."""
        return per_sample(rec, "mimic", "mean", ids=self.ids)

    def dynamics_values(self) -> dict[str, np.ndarray]:
        """The recorded dynamics as {field: [epochs, N_train]} (``keepset.scoring.dynamics`` reads these)."""
        return dense_by_epoch(self.dynamics, self.dynamics.fields, self.ids)


def make_split(labels, seed: int) -> Split:
    train, trusted, test = split_indices(labels, (0.6, 0.15, 0.25), seed)
    fit_part, held = split_indices(np.asarray(labels)[trusted], (1 - HOLDOUT, HOLDOUT), seed)
    return Split(train, trusted[fit_part], test, trusted[held])


def train_network(kind: str, x, y, num_classes: int, *, epochs: int, batch_size: int, lr: float, seed: int,
                  desc: str = "train", device="cpu") -> torch.nn.Module:
    """A fresh ``kind`` network ("mlp" / "cnn") trained on (x, y) with SGD (momentum 0.9), seeded; on the CPU after."""
    torch.manual_seed(seed)
    net = model_for_inputs(kind, tuple(x.shape[1:]), num_classes)
    fit(net, x, y, epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9, seed=seed, progress=False, desc=desc,
        device=device)
    return net.cpu()


def train_reference(samples, split: Split, kind: str, *, epochs: int, batch_size: int, lr: float,
                    seed: int, device="cpu") -> Reference:
    """Train the reference network on the trusted split's clean labels; embed train and test."""
    x_tr, y_tr = samples.get_inputs(split.trusted), samples.labels[split.trusted]
    net = train_network(kind, x_tr, y_tr, samples.num_classes, epochs=epochs, batch_size=batch_size, lr=lr,
                        seed=seed, desc="reference", device=device)
    x_held = samples.get_inputs(split.holdout)
    held = accuracy(net, x_held, samples.labels[split.holdout])
    x_test = samples.get_inputs(split.test)
    return Reference(net, held, embed(net, samples.get_inputs(split.train)), embed(net, x_test),
                     accuracy(net, x_test, samples.labels[split.test]), embed(net, x_held),
                     samples.labels[split.holdout], np.asarray(samples.ids)[split.holdout])


def noisy_labels(samples, split: Split, kind: str, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy train labels and the corrupted mask (rate 0: the clean labels)."""
    y = samples.labels[split.train]
    if rate == 0:
        return y.copy(), np.zeros(len(y), dtype=bool)
    return add_label_noise(y, rate, kind, samples.num_classes, seed)


def proxy_run(ref: Reference, labels, corrupted, test_labels, num_classes: int, *, epochs: int,
              batch_size: int, lr: float | None, seed: int, gradmimic: bool = False, ids=None,
              device="cpu") -> ProxyRun:
    """Train a fresh linear head on the train features with plain SGD, recording Mimic Scores and dynamics;
    with ``gradmimic`` also the same head with Grad-Mimic re-weighting, recording Mimic Scores.

    ``lr`` None: ``probe_learning_rate`` of the train features (10 / mean ||h||^2, as the demo).
    """
    feats = ref.train_features
    if lr is None:
        lr = probe_learning_rate(feats)
    n, d = feats.shape
    reference = LinearProbe(d, num_classes)
    with torch.no_grad():
        reference.head.weight.copy_(ref.net.head.weight)
        reference.head.bias.copy_(ref.net.head.bias)
    torch.manual_seed(seed + 1)
    head0 = LinearProbe(d, num_classes)
    head = copy.deepcopy(head0)
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids)
    held = None
    if ref.holdout_features is not None:
        held = (ref.holdout_features, ref.holdout_labels,
                ref.holdout_ids if ref.holdout_ids is not None else np.arange(len(ref.holdout_labels)) + 10**9)
    mimic = DynamicsRecorder(None, RECORD_FIELDS)
    mimic_held = DynamicsRecorder(None, HOLDOUT_FIELDS) if held else None
    obs = DynamicsObserver(DynamicsRecorder(None, DYNAMICS_FIELDS))
    fit(head, feats, labels, ids=ids, observers=[obs], method=GradMimic(
        reference, reweight=False, record_to=mimic, holdout=held, holdout_record_to=mimic_held),
        epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9, seed=seed, progress=False, desc="proxy",
        device=device)
    head.cpu()
    acc = accuracy(head, ref.test_features, test_labels)
    out = ProxyRun(ids, np.asarray(labels), np.asarray(corrupted), mimic, obs.recorder, acc, float(lr))
    out.mimic_holdout = mimic_held
    if gradmimic:
        out.gradmimic = DynamicsRecorder(None, RECORD_FIELDS)
        fit(head0, feats, labels, ids=ids, method=GradMimic(reference, reweight=True, record_to=out.gradmimic),
            epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9, seed=seed, progress=False,
            desc="proxy (Grad-Mimic)", device=device)
        head0.cpu()
        out.gradmimic_test_accuracy = accuracy(head0, ref.test_features, test_labels)
        if held:
            torch.manual_seed(seed + 1)
            head1 = LinearProbe(d, num_classes)  # the same initial head again
            out.lfdr = DynamicsRecorder(None, RECORD_FIELDS)
            out.lfdr_holdout = DynamicsRecorder(None, HOLDOUT_FIELDS)
            fit(head1, feats, labels, ids=ids, method=GradMimic(
                reference, weighting="lfdr", holdout=held, record_to=out.lfdr, holdout_record_to=out.lfdr_holdout),
                epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9, seed=seed, progress=False,
                desc="proxy (Grad-Mimic, lfdr)", device=device)
            head1.cpu()
            out.lfdr_test_accuracy = accuracy(head1, ref.test_features, test_labels)
    return out
