"""The Grad-Mimic training and Stage 2 flags that ``keepset filter`` and ``keepset demo`` share: one spelling,
one help text and one mapping onto ``keepset.workflows.filter.FilterOptions``."""

from __future__ import annotations

#: FilterOptions fields set from these flags (argparse dests of the same names)
FIELDS = ("setting", "layers", "backbone", "holdout", "epochs", "batch_size", "lr", "method", "temperature",
          "weighting", "holdout_per_step", "binarize", "vote")


def add_training_flags(p) -> None:
    """Add the flags of ``FIELDS`` to parser ``p``."""
    p.add_argument("--setting", choices=("probe", "finetune"), default="probe",
                   help="probe: linear heads on the reference's frozen backbone (the paper's); "
                        "finetune: whole networks from one shared initialisation")
    p.add_argument("--layers", default=None,
                   help="scored layers, finetune setting only: a name, a module prefix or 'all' (default: all)")
    p.add_argument("--backbone", choices=("mlp", "cnn"), default="mlp",
                   help="the reference network trained on the trusted samples")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="fraction of the trusted samples held out: never trained on, they calibrate Stage 1 and 2 "
                        "and check the reference, in [0, 1)")
    p.add_argument("--epochs", type=int, default=20, help="epochs of Grad-Mimic training")
    p.add_argument("--batch-size", type=int, default=64, help="samples per training batch")
    p.add_argument("--lr", type=float, default=None,
                   help="SGD step of the model (default: probe 10 / mean squared feature norm, finetune 0.1)")
    p.add_argument("--method", choices=("proj", "cos"), default="proj", help="the Mimic Score")
    p.add_argument("--weighting", choices=("auto", "lfdr", "softmax"), default="auto",
                   help="Stage 1 weights: lfdr (calibrated by the held-out samples: uniform on clean data), softmax "
                        "(the paper's softmax(score / tau)); auto: lfdr when samples are held out")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature tau (> 0; softmax weighting)")
    p.add_argument("--holdout-per-step", type=int, default=32, help="held-out samples scored at every step")
    p.add_argument("--binarize", choices=("calibrated", "threshold", "kmeans", "gmm"), default="calibrated",
                   help="Stage 2 rule: calibrated (conformal p-values against the held-out samples; keeps clean data), "
                        "or the paper's per-step threshold 1/B, 2-means or GMM with a vote")
    p.add_argument("--vote", choices=("majority", "weighted"), default="majority",
                   help="the paper's rules: vote over a sample's visits")


def training_options(args) -> dict:
    """{FilterOptions field: value} from the parsed flags."""
    return {f: getattr(args, f) for f in FIELDS}
