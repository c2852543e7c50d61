"""Reference features for the Stage 2 calibration study, cached on disk per (data, model, seed, setting).

The split is the benchmarks' (``split_indices(labels, (0.6, 0.15, 0.25), seed)``: train / trusted / test);
the trusted split is split again, stratified and seeded, into the part the reference trains on and a
held-out calibration part (``holdout`` of it, default 0.2) that neither the reference nor any head ever
trains on. The reference network is trained once on the first part; its frozen backbone embeds train,
calibration and test samples. Everything a head experiment needs is stored in one ``.npz`` (no pickle):

    f_train [N, d], y_train [N] (clean labels), f_cal [H, d], y_cal [H], f_test [T, d], y_test [T]
    ref_weight [K, d], ref_bias [K]   the reference's head
    ref_acc_cal, ref_acc_test         its accuracy on the calibration part and on the test split

Reference training ``setting``:
    bench  the benchmarks' reference: SGD lr 0.05, momentum 0.9, 30 epochs, batch 64 (keepset.evaluation.proxy)
    demo   the demo's reference: AdamW lr 1e-3, weight decay 1e-4, clip(30000 // n, 10, 100) epochs, batch 64
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SETTINGS = ("bench", "demo")
CACHE_DIR = Path("/tmp/keepset-calibration")


@dataclass
class Features:
    f_train: np.ndarray
    y_train: np.ndarray
    f_cal: np.ndarray
    y_cal: np.ndarray
    f_test: np.ndarray
    y_test: np.ndarray
    ref_weight: np.ndarray
    ref_bias: np.ndarray
    ref_acc_cal: float
    ref_acc_test: float
    num_classes: int


def cache_path(data: str, model: str, seed: int, holdout: float, setting: str, cache_dir: Path = CACHE_DIR) -> Path:
    safe = data.replace(":", "_").replace("/", "_")
    return Path(cache_dir) / f"{safe}-{model}-{setting}-s{seed}-h{holdout:g}.npz"


def _train(setting: str, kind: str, x, y, k: int, seed: int):
    import torch

    from keepset.models import model_for_inputs
    from keepset.training import fit

    torch.manual_seed(seed)
    net = model_for_inputs(kind, tuple(x.shape[1:]), k)
    if setting == "bench":
        fit(net, x, y, epochs=30, batch_size=64, lr=0.05, momentum=0.9, seed=seed, progress=False)
    else:
        epochs = int(np.clip(30000 // len(y), 10, 100))
        fit(net, x, y, epochs=epochs, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=1e-4, seed=seed,
            progress=False)
    return net


def load_features(data: str, model: str, seed: int, *, holdout: float = 0.2, setting: str = "bench",
                  cache_dir: Path = CACHE_DIR, log=print) -> Features:
    """The cached features of (data, model, seed), training the reference first when not cached."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown reference setting {setting!r}; choose one of {SETTINGS}")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout}")
    path = cache_path(data, model, seed, holdout, setting, cache_dir)
    if not path.exists():
        _build(path, data, model, seed, holdout, setting, log)
    with np.load(path, allow_pickle=False) as z:
        return Features(**{k: (z[k] if z[k].ndim else z[k].item()) for k in z.files})


def _build(path: Path, data, model, seed, holdout, setting, log) -> None:
    from keepset.data import load_spec, split_indices
    from keepset.io.atomic import atomic_path
    from keepset.training import accuracy, embed

    t0 = time.perf_counter()
    samples = load_spec(data)
    y_all = samples.labels
    train, trusted, test = split_indices(y_all, (0.6, 0.15, 0.25), seed)
    fit_pos, cal_pos = split_indices(y_all[trusted], (1.0 - holdout, holdout), seed)
    ref_idx, cal_idx = trusted[fit_pos], trusted[cal_pos]
    k = samples.num_classes
    net = _train(setting, model, samples.get_inputs(ref_idx), y_all[ref_idx], k, seed)
    x_cal, x_test = samples.get_inputs(cal_idx), samples.get_inputs(test)
    out = dict(
        f_train=embed(net, samples.get_inputs(train)), y_train=y_all[train].astype(np.int64),
        f_cal=embed(net, x_cal), y_cal=y_all[cal_idx].astype(np.int64),
        f_test=embed(net, x_test), y_test=y_all[test].astype(np.int64),
        ref_weight=net.head.weight.detach().cpu().numpy().astype(np.float32),
        ref_bias=net.head.bias.detach().cpu().numpy().astype(np.float32),
        ref_acc_cal=np.float64(accuracy(net, x_cal, y_all[cal_idx])),
        ref_acc_test=np.float64(accuracy(net, x_test, y_all[test])),
        num_classes=np.int64(k),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **out)
    log(f"features {path.name}: reference on {len(ref_idx)} trusted samples, {len(cal_idx)} held out; "
        f"accuracy cal {out['ref_acc_cal']:.3f} test {out['ref_acc_test']:.3f} ({time.perf_counter() - t0:.0f} s)")
