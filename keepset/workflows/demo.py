"""The demo: split a labelled data set, inject label noise, run the filter workflow, and measure it.

1. split the data into train / trusted / test (stratified, seeded) and corrupt the train labels (the
   corrupted samples are known, so detection can be measured);
2. ``keepset.workflows.filter.filter_samples`` on the noisy train split with the trusted split as the clean
   data: exactly what ``keepset filter`` runs on a user's data (the trusted split is itself split into the
   reference's part and a held-out part for the quality check; the test split is never seen);
3. for comparison, the same initial model trained with plain SGD from the same seed, recording its Mimic
   Scores too (``reweight=False``);
4. final metrics on the test split only: test accuracy of both models and of the reference, mislabel
   detection (flagged vs corrupted), the quality estimate's error;
5. the run folder ``keepset filter`` writes, plus the demo's columns (``mimic_sgd_mean``) and figures.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import asdict, dataclass

import numpy as np

from keepset.data import add_label_noise, load_spec, spec_file, split_indices
from keepset.evaluation import auroc, detection_metrics, quality_error
from keepset.io import atomic_dir, check_output_dir
from keepset.recorder import DynamicsRecorder, per_sample
from keepset.training import GradMimic, accuracy, embed, fit
from keepset.training.gradmimic import RECORD_FIELDS
from keepset.workflows.filter import FilterOptions, filter_samples, write_run

SETTINGS = ("probe", "finetune")


@dataclass
class DemoConfig:
    """Every knob of the demo; the defaults are the README's figures."""

    data: str = "digits"
    noise: float = 0.4
    noise_kind: str = "symmetric"
    seed: int = 0
    out: str = "out/demo"
    setting: str = "probe"          # probe: frozen shared backbone + linear heads; finetune: shared init
    layers: str | None = None       # scored layers in the finetune setting (default "all")
    backbone: str = "mlp"           # mlp | cnn
    fractions: tuple = (0.6, 0.15, 0.25)  # train, trusted, test
    holdout: float = 0.2            # fraction of the trusted split held out from the reference (quality check)
    trusted_epochs: int = 0          # 0: chosen from the trusted split's size
    epochs: int = 20
    batch_size: int = 64
    lr: float | None = None         # None: probe 10 / mean ||h||^2 (normalised step), finetune 0.1
    method: str = "proj"
    temperature: float = 1.0
    binarize: str = "threshold"
    vote: str = "majority"
    device: str = "cpu"
    overwrite: bool = False
    progress: bool = True

    def validate(self, flags: bool = False) -> "DemoConfig":
        """Check every knob before any work (``flags``: name them by their command-line flags)."""
        from keepset.data import NOISE_KINDS

        name = (lambda f: "--" + f.replace("_", "-")) if flags else (lambda f: f)
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) \
                or not (np.isfinite(self.noise) and 0 <= self.noise < 1):
            raise ValueError(f"{name('noise')} must be in [0, 1), got {self.noise}")
        if self.noise_kind not in NOISE_KINDS:
            raise ValueError(f"{name('noise_kind')} must be one of {NOISE_KINDS}, got {self.noise_kind!r}")
        self.options(validate=False).validate(flags)
        return self

    def options(self, validate: bool = True) -> FilterOptions:
        opt = FilterOptions(setting=self.setting, layers=self.layers, backbone=self.backbone, holdout=self.holdout,
                            reference_epochs=self.trusted_epochs, epochs=self.epochs, batch_size=self.batch_size,
                            lr=self.lr, method=self.method, temperature=self.temperature, binarize=self.binarize,
                            vote=self.vote, seed=self.seed, device=self.device, progress=self.progress)
        return opt.validate() if validate else opt


def run_demo(cfg: DemoConfig, log=print) -> dict:
    """Run the demo and write its run folder ``cfg.out`` (whole, atomically). Returns the summary dict."""
    t0 = time.perf_counter()
    opt = cfg.validate().options()
    check_output_dir(cfg.out, cfg.overwrite)  # fail before any work, leaving existing outputs untouched
    samples = load_spec(cfg.data)
    k = samples.num_classes
    train, trusted, test = split_indices(samples.labels, cfg.fractions, cfg.seed)
    noisy, corrupted = add_label_noise(samples.labels[train], cfg.noise, cfg.noise_kind, k, cfg.seed)
    clean = samples.subset(train)
    train_set = dataclasses.replace(clean, labels=noisy, true_labels=clean.labels, corrupted=corrupted)
    log(f"data {cfg.data}: {len(samples)} samples, {k} classes -> train {len(train)} "
        f"({int(corrupted.sum())} labels corrupted, {cfg.noise_kind} {cfg.noise}), trusted {len(trusted)}, "
        f"test {len(test)}")
    test_set = samples.subset(test)
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        result = filter_samples(train_set, samples.subset(trusted), options=opt,
                                dynamics_dir=tmp / "dynamics" / "gradmimic", log=log)
        # plain SGD from the same initial weights and seed, recording its Mimic Scores for comparison
        sgd_model = copy.deepcopy(result.model_init)
        sgd_rec = DynamicsRecorder(tmp / "dynamics" / "sgd", RECORD_FIELDS)
        fit(sgd_model, result.train_inputs, train_set.labels, ids=train_set.ids, method=GradMimic(
            result.reference, layers=None if opt.setting == "probe" else (opt.layers or "all"), method=opt.method,
            temperature=opt.temperature, reweight=False, record_to=sgd_rec), epochs=opt.epochs,
            batch_size=opt.batch_size, lr=result.lr, momentum=0.9, seed=opt.seed, progress=opt.progress,
            desc="SGD model", device=opt.device)
        sgd_model.cpu()
        # final metrics: the test split is read here and nowhere before
        x_test = test_set.get_inputs()
        eval_x = embed(result.reference_net, x_test) if opt.setting == "probe" else x_test
        acc = {"sgd": accuracy(sgd_model, eval_x, test_set.labels),
               "gradmimic": accuracy(result.model, eval_x, test_set.labels),
               "reference": accuracy(result.reference_net, x_test, test_set.labels)}
        det = detection_metrics(corrupted, ~result.keep)
        det["auroc"] = auroc(corrupted, -result.columns["mimic_mean"].astype(np.float64))
        quality = dict(result.quality)
        quality["true"] = float(1.0 - corrupted.mean())
        quality["error"] = quality_error(quality["estimated"], quality["true"])
        extra = {"noise": {"kind": cfg.noise_kind, "rate": cfg.noise, "seed": cfg.seed}, "accuracy": acc,
                 "detection": det, "quality": quality, "n_test": int(len(test)),
                 "stage2": {"binarize": opt.binarize, "vote": opt.vote, "method": opt.method,
                            "temperature": opt.temperature},
                 "setting_detail": (f"linear probing of a frozen {opt.backbone} backbone trained on the trusted split"
                                    if opt.setting == "probe" else
                                    f"{opt.backbone} fine-tuned from one shared initialisation (reference: trained "
                                    "on the trusted split)")}
        sgd_mean = per_sample(sgd_rec, "mimic", "mean", ids=train_set.ids).astype(np.float32)
        data_file = spec_file(cfg.data)
        summary = write_run(tmp, result, train_set, data_spec=cfg.data, params=asdict(cfg), t0=t0,
                            extra_columns={"mimic_sgd_mean": sgd_mean}, extra_summary=extra, method="keepset-demo",
                            inputs={"data": data_file} if data_file else None)
    return summary


def format_summary(s: dict) -> str:
    """A short plain-text table of the demo's figures."""
    a, d, q = s["accuracy"], s["detection"], s["quality"]
    check = ("no held-out trusted samples" if q.get("reference_check") is None else
             f"reference agrees with {q['reference_agreement']:.3f} of the labels -> quality "
             f"{q['reference_check']:.3f} (corrected for its held-out error)")
    rows = [
        ("data", f"{s['data']} ({s['noise']['kind']} noise {s['noise']['rate']}, seed {s['noise']['seed']})"),
        ("test accuracy", f"SGD {a['sgd']:.3f} | Grad-Mimic {a['gradmimic']:.3f} | reference {a['reference']:.3f}"),
        ("mislabel detection", f"precision {d['precision']:.3f} recall {d['recall']:.3f} "
                               f"F1 {d['f1']:.3f} AUROC {d['auroc']:.3f}"),
        ("dataset quality", f"estimated {q['estimated']:.3f} | true {q['true']:.3f} | error {q['error']:.3f}"),
        ("quality check", check),
        ("kept", f"{s['kept']} of {s['n']} training samples"),
        ("time", f"{s['seconds']} s"),
    ]
    rows += [("warning", w) for w in s.get("warnings", [])]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
