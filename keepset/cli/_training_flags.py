"""The Grad-Mimic training and Stage 2 flags that ``keepset filter`` and ``keepset demo`` share: one spelling,
one help text and one mapping onto ``keepset.workflows.filter.FilterOptions``.

Flags whose default depends on the data (``keepset filter`` on an image-text pool trains a two-tower probe with
its own epochs, batch and step) parse to None when not given; ``training_options`` fills the labelled data's
defaults from ``FilterOptions`` and ``pair_training_options`` the pool's from ``PairFilterOptions``.
"""

from __future__ import annotations

#: FilterOptions fields set from these flags (argparse dests of the same names)
FIELDS = ("setting", "layers", "backbone", "holdout", "epochs", "batch_size", "lr", "method", "temperature",
          "weighting", "holdout_per_step", "binarize", "vote")
#: of those, the ones a pool of image-text pairs does not read (flag spellings)
LABELLED_ONLY = {"setting": "--setting", "backbone": "--backbone", "weighting": "--weighting",
                 "holdout_per_step": "--holdout-per-step"}


def add_training_flags(p, pairs: bool = False) -> None:
    """Add the flags of ``FIELDS`` to parser ``p``; ``pairs``: the help also names an image-text pool's defaults."""
    def both(labelled: str, pool: str) -> str:
        return f"(default: {labelled}; pairs {pool})" if pairs else f"(default: {labelled})"

    only = "labelled data only. " if pairs else ""
    p.add_argument("--setting", choices=("probe", "finetune"), default=None,
                   help=f"{only}probe: linear heads on the reference's frozen backbone (the paper's); "
                        "finetune: whole networks from one shared initialisation (default: probe)")
    p.add_argument("--layers", default=None,
                   help="scored layers, finetune setting: a name, a module prefix or 'all' (default: all)"
                        + ("; pairs: a comma-separated list (default: both projections' weights)" if pairs else ""))
    p.add_argument("--backbone", choices=("mlp", "cnn"), default=None,
                   help=f"{only}the reference network trained on the trusted samples (default: mlp)")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="fraction of the trusted samples held out: never trained on, they calibrate Stage 1 and 2 "
                        "and check the reference, in [0, 1)")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs of Grad-Mimic training {both('20', '5')}")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"samples per training batch {both('64', '256, the contrastive batch')}")
    p.add_argument("--lr", type=float, default=None,
                   help="step of the model (default: probe SGD 10 / mean squared feature norm, finetune SGD 0.1"
                        + ("; pairs AdamW 1e-3)" if pairs else ")"))
    p.add_argument("--method", choices=("proj", "cos"), default="proj", help="the Mimic Score")
    p.add_argument("--weighting", choices=("auto", "lfdr", "softmax"), default=None,
                   help=f"{only}Stage 1 weights: lfdr (calibrated by the held-out samples: uniform on clean data), "
                        "softmax (the paper's softmax(score / tau)); auto: lfdr when samples are held out "
                        "(default: auto)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature tau (> 0; softmax weighting)")
    p.add_argument("--holdout-per-step", type=int, default=None,
                   help=f"{only}held-out samples scored at every step (default: 32)")
    p.add_argument("--binarize", choices=("calibrated", "threshold", "kmeans", "gmm"), default=None,
                   help="Stage 2 rule: calibrated (conformal p-values against the held-out samples; keeps clean "
                        "data), or the paper's per-step threshold 1/B, 2-means or GMM with a vote "
                        + both("calibrated", "threshold"))
    p.add_argument("--vote", choices=("majority", "weighted"), default="majority",
                   help="the paper's rules: vote over a sample's visits")


def _filled(args, fields, defaults) -> dict:
    return {f: getattr(defaults, f) if getattr(args, f, None) is None else getattr(args, f) for f in fields}


def training_options(args) -> dict:
    """{FilterOptions field: value} from the parsed flags, FilterOptions' defaults where a flag was not given."""
    from keepset.workflows.filter import FilterOptions

    return _filled(args, FIELDS, FilterOptions())


def pair_training_options(args) -> dict:
    """{PairFilterOptions field: value} from the shared flags a pool reads, its defaults where not given."""
    from keepset.workflows.filter_pairs import PairFilterOptions

    d = PairFilterOptions()
    out = _filled(args, [f for f in FIELDS if f not in LABELLED_ONLY and f != "layers"], d)
    layers = args.layers
    if layers and "," in layers:
        layers = [x.strip() for x in layers.split(",") if x.strip()]
    out["layers"] = layers
    return out
