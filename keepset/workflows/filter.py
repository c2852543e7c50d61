"""``keepset filter``: Grad-Mimic on a user's own labelled data, labels as given (no injected noise).

1. The trusted samples (a separate clean data set, ids naming clean samples inside the data, or none when
   a reference checkpoint is given) are split, stratified and seeded, into the part the reference trains
   on and a held-out part (``holdout``), which no model ever trains on.
2. The reference network trains on its part (or is loaded); its backbone is frozen and shared (linear
   probing, the paper's setting): the model is a fresh linear head on the backbone's features, the
   reference is the trained head, so ``theta_ref - theta`` lives in one weight space.
3. The head trains on the data's labels with Grad-Mimic re-weighting (``keepset.GradMimic``), recording
   every sample's Mimic Score at every step by id; Stage 2 turns the recording into one keep decision per id.
4. Quality: Stage 2's estimate (the fraction kept) and an independent check, the reference's agreement
   with the labels corrected for its error rate on the held-out trusted samples.

``filter_samples`` computes (the Python API); ``run_filter`` validates everything, then writes a run
folder (``scores.parquet``, ``keep.npy``, ``summary.json``, ``manifest.json``, ``dynamics/``, the two
checkpoints) into a temporary folder that replaces ``--out`` whole at the end.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from keepset.data import SampleSet, load_spec, split_indices
from keepset.io import atomic_dir, check_output_dir, read_keep_list, write_keep_list, write_manifest
from keepset.io import write_score_table, write_text_atomic
from keepset.io.atomic import json_default
from keepset.models import LinearProbe, load_checkpoint, model_for_inputs, save_checkpoint
from keepset.recorder import DynamicsRecorder, per_sample
from keepset.scoring.reference_agreement import quality_from_agreement, reference_label_loss
from keepset.selection.binarize import BINARIZE_METHODS
from keepset.selection.calibrated import clean_fraction
from keepset.selection.stage2 import VOTES, calibrated_stage2, estimate_quality, stage2_filter
from keepset.training import GradMimic, accuracy, fit, predict_logits
from keepset.training.gradmimic import HOLDOUT_FIELDS, RECORD_FIELDS
from keepset.training.step_size import probe_learning_rate

#: Stage 2's quality estimate and the reference's corrected agreement further apart than this raise a warning
QUALITY_CHECK_TOLERANCE = 0.1
BACKBONES = ("mlp", "cnn")
#: Stage 2 rules: "calibrated" (the default: held-out trusted samples calibrate the decision; keeps clean data),
#: and the paper's per-step binarisers
STAGE2_RULES = ("calibrated", *BINARIZE_METHODS)
#: Stage 1 weightings (keepset.training.GradMimic)
WEIGHTINGS = ("auto", "lfdr", "softmax")
SETTINGS = ("probe", "finetune")


@dataclass
class FilterOptions:
    """The knobs of the filter (the CLI flags of ``keepset filter``)."""

    setting: str = "probe"           # probe: linear heads on the reference's frozen backbone; finetune: whole
                                     # networks from one shared initialisation
    layers: str | None = None        # scored layers in the finetune setting (default "all")
    backbone: str = "mlp"            # reference network trained on the trusted samples: mlp | cnn
    holdout: float = 0.2             # fraction of the trusted samples held out (never trained on)
    reference_epochs: int = 0        # 0: chosen from the trusted part's size
    epochs: int = 20                 # epochs of head training
    batch_size: int = 64
    lr: float | None = None          # None: 10 / mean ||h||^2 (normalised SGD step of the head)
    method: str = "proj"             # Mimic Score behind the weights: proj | cos
    temperature: float = 1.0         # softmax weighting only
    weighting: str = "auto"          # Stage 1: auto (lfdr with held-out samples, else softmax) | lfdr | softmax
    holdout_per_step: int = 32       # held-out trusted samples scored at every step
    binarize: str = "calibrated"     # Stage 2: calibrated (default) or the paper's per-step rule
    vote: str = "majority"           # the paper's rules only
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def validate(self, flags: bool = False) -> "FilterOptions":
        """Check every option before any work; a one-line ValueError names the first bad one.

        flags : name the options by their command-line flags (``--batch-size``) rather than their field names.
        """
        from keepset._options import (
            check_choice, check_device_option, check_fraction, check_int, check_positive, is_real, namer,
        )

        name = namer(flags)
        check_choice(self.setting, name("setting"), SETTINGS)
        if self.layers is not None and self.setting == "probe":
            raise ValueError(f"{name('layers')} applies to the finetune setting only (the probe setting scores the "
                             f"linear head): drop it, or use {name('setting')} finetune")
        check_choice(self.backbone, name("backbone"), BACKBONES)
        check_fraction(self.holdout, name("holdout"))
        for field_ in ("epochs", "batch_size"):
            check_int(getattr(self, field_), name(field_), 1)
        check_int(self.reference_epochs, name("reference_epochs"), 0, " (0: automatic)")
        if self.lr is not None and not (is_real(self.lr) and np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"{name('lr')} must be a finite number > 0 ("
                             f"{'leave it out' if flags else 'or None'} for the normalised step), got {self.lr!r}")
        if self.method not in ("proj", "cos"):
            raise ValueError(f"{name('method')} must be 'proj' or 'cos', got {self.method!r}")
        check_positive(self.temperature, name("temperature"))
        check_choice(self.binarize, name("binarize"), STAGE2_RULES)
        check_choice(self.weighting, name("weighting"), WEIGHTINGS)
        check_int(self.holdout_per_step, name("holdout_per_step"), 3)
        if self.holdout == 0 and (self.binarize == "calibrated" or self.weighting == "lfdr"):
            raise ValueError(f"{name('holdout')} 0 leaves no held-out trusted samples, which {name('binarize')} "
                             f"calibrated and {name('weighting')} lfdr need: hold some out (default 0.2), or "
                             f"choose {name('binarize')} threshold and {name('weighting')} softmax")
        check_choice(self.vote, name("vote"), VOTES)
        check_int(self.seed, name("seed"), 0)
        check_device_option(self.device, name("device"), flags)
        return self


def check_device(device) -> torch.device:
    """A usable torch device, or a one-line ValueError saying why not."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked but CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} asked but MPS is not available here; use --device cpu")
    return dev


@dataclass
class FilterResult:
    """What ``filter_samples`` computed; every array is aligned with ``ids``."""

    ids: np.ndarray                  # [N] ids of the filtered samples
    labels: np.ndarray               # [N] their labels as given
    keep: np.ndarray                 # [N] bool: Stage 2's decision
    columns: dict                    # score columns {name: [N]}
    quality: dict                    # estimated, reference_agreement, reference_check, ...
    reference_net: nn.Module         # backbone + head trained on the trusted samples (or loaded)
    model: nn.Module                 # trained with Grad-Mimic on the data's labels (probe: a linear head)
    model_init: nn.Module            # its initial weights (for comparisons from the same start)
    reference: nn.Module             # what the Mimic Score pointed at (probe: the reference's head)
    train_inputs: object             # what the model trains on: [N, d] features (probe) or the samples
    lr: float                        # the model's SGD step
    setting: str
    trusted_ids: np.ndarray          # ids of the trusted samples (the reference's part and the held-out part)
    holdout_ids: np.ndarray
    warnings: list = field(default_factory=list)


def _embed(net: nn.Module, samples: SampleSet, device, batch_size: int = 1024) -> np.ndarray:
    """Backbone features float32 [N, d] of every sample, loading inputs batch by batch."""
    net.eval().to(device)
    out = []
    with torch.no_grad():
        for s in range(0, len(samples), batch_size):
            x = torch.from_numpy(samples.get_inputs(np.arange(s, min(len(samples), s + batch_size)))).to(device)
            out.append(net.features(x).reshape(len(x), -1).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _check_compatible(samples: SampleSet, trusted: SampleSet) -> None:
    if list(trusted.class_names) != list(samples.class_names):
        raise ValueError(f"the trusted data's classes {trusted.class_names[:5]}... differ from the data's "
                         f"{samples.class_names[:5]}...; both must use the same class list in the same order")
    shape_a, shape_b = samples.get_inputs([0]).shape[1:], trusted.get_inputs([0]).shape[1:]
    if shape_a != shape_b:
        raise ValueError(f"the trusted samples have input shape {shape_b} but the data {shape_a}")


def split_trusted(trusted: SampleSet, holdout: float, seed: int) -> tuple[SampleSet, SampleSet | None]:
    """(the reference's part, the held-out part) of the trusted samples, stratified and seeded."""
    if holdout == 0:
        return trusted, None
    counts = np.bincount(trusted.labels, minlength=trusted.num_classes)
    if (counts[counts > 0] < 2).any():
        raise ValueError("some classes have a single trusted sample, so none can be held out; give more trusted "
                         "samples or --holdout 0")
    fit_part, held = split_indices(trusted.labels, (1.0 - holdout, holdout), seed)
    return trusted.subset(fit_part), trusted.subset(held)


def train_reference(trusted: SampleSet, net: nn.Module, *, epochs: int, seed: int, device, progress: bool
                    ) -> nn.Module:
    """``net`` trained in place on the trusted samples' labels (AdamW, seeded); epochs 0: from their number."""
    epochs = epochs or int(np.clip(30000 // max(len(trusted), 1), 10, 100))
    fit(net, trusted, epochs=epochs, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=1e-4, seed=seed,
        progress=progress, desc="reference (trusted samples)", device=device)
    return net


def linear_heads(net: nn.Module, seed: int) -> tuple[LinearProbe, LinearProbe]:
    """(the reference head: ``net``'s trained head as a LinearProbe, a fresh head drawn from ``seed + 1``)."""
    d, k = net.head.in_features, net.head.out_features
    reference = LinearProbe(d, k)
    reference.head.load_state_dict(net.head.state_dict())
    torch.manual_seed(seed + 1)
    return reference.cpu(), LinearProbe(d, k)


def _setting(opt: FilterOptions, net: nn.Module, init: nn.Module | None, samples: SampleSet, device):
    """(initial model, reference module, what the model trains on, SGD step, scored layers) of the setting."""
    if opt.setting == "finetune":
        # Scoring only the head fails here (digits, 40% noise: AUROC 0.42): the two backbones drift apart and
        # their heads stop meaning the same thing; scoring every layer works (AUROC 0.99).
        return init, net.cpu(), samples, opt.lr if opt.lr is not None else 0.1, opt.layers or "all"
    for p in net.parameters():
        p.requires_grad_(False)
    feats = _embed(net, samples, device)
    reference_head, head0 = linear_heads(net.cpu(), opt.seed)
    lr = opt.lr if opt.lr is not None else probe_learning_rate(feats)
    return head0, reference_head, feats, lr, None


def filter_samples(samples: SampleSet, trusted: SampleSet | None = None, *, reference: nn.Module | None = None,
                   options: FilterOptions | None = None, dynamics_dir: str | Path | None = None,
                   log=print) -> FilterResult:
    """Grad-Mimic Stage 1 + 2 on ``samples`` (labels as given) with a reference from ``trusted`` (clean samples)
    or ``reference`` (a trained keepset network: its ``features`` backbone and ``head``). With both, the
    reference is used as given and every trusted sample is held out to check it.

    dynamics_dir : where the recorded scores go (None: in memory).
    """
    opt = (options or FilterOptions()).validate()
    device = check_device(opt.device)
    if len(samples) == 0:
        raise ValueError("the data holds no samples")
    if trusted is None and reference is None:
        raise ValueError("give trusted samples (--trusted SPEC or --trusted-ids FILE) or a reference checkpoint "
                         "(--reference CKPT): Grad-Mimic needs a reference trained on clean data")
    if trusted is not None:
        _check_compatible(samples, trusted)
        overlap = np.intersect1d(samples.ids, trusted.ids) if samples.ids.dtype == trusted.ids.dtype else []
        if len(overlap) and trusted.name == samples.name:
            raise ValueError(f"{len(overlap)} trusted ids are also among the samples to filter; trusted samples "
                             "must be kept out of the filtered set")
    if reference is not None:
        if getattr(reference, "head", None) is None or not isinstance(reference.head, nn.Linear) \
                or not hasattr(reference, "features"):
            raise ValueError("the reference must be a keepset network with `features` (backbone) and a Linear `head`")
        if reference.head.out_features != samples.num_classes:
            raise ValueError(f"the reference predicts {reference.head.out_features} classes but the data has "
                             f"{samples.num_classes}")
        if opt.setting == "finetune":
            raise ValueError("the finetune setting trains model and reference from one shared initialisation; with "
                             "a given --reference that initialisation is unknown: use the probe setting")
        net, holdout, init = reference.to(device), trusted, None
    else:
        fit_part, holdout = split_trusted(trusted, opt.holdout, opt.seed)
        log(f"reference: {opt.backbone} on {len(fit_part)} trusted samples"
            + (f", {len(holdout)} held out" if holdout is not None else ""))
        torch.manual_seed(opt.seed)
        init = model_for_inputs(opt.backbone, tuple(fit_part.get_inputs([0]).shape[1:]), fit_part.num_classes)
        net = train_reference(fit_part, copy.deepcopy(init), epochs=opt.reference_epochs, seed=opt.seed,
                              device=device, progress=opt.progress)
    calibrated = opt.binarize == "calibrated" or opt.weighting == "lfdr"
    if calibrated and (holdout is None or len(holdout) < 20):
        raise ValueError(f"the calibrated Stage 2 and the lfdr weighting need at least 20 held-out trusted samples "
                         f"(here {0 if holdout is None else len(holdout)}): give more trusted samples, or choose "
                         "binarize='threshold' and weighting='softmax'")
    model0, ref_module, train_x, lr, layers = _setting(opt, net, init, samples, device)
    model = copy.deepcopy(model0)
    dyn = Path(dynamics_dir) if dynamics_dir is not None else None
    recorder = DynamicsRecorder(dyn, RECORD_FIELDS)
    held = None
    if holdout is not None and len(holdout) >= 3:
        held_x = _embed(net, holdout, device) if opt.setting == "probe" else holdout.get_inputs()
        held = (held_x, holdout.labels, holdout.ids)
    holdout_rec = DynamicsRecorder(None if dyn is None else dyn / "holdout", HOLDOUT_FIELDS) if held else None
    gm = GradMimic(ref_module, layers=layers, method=opt.method, temperature=opt.temperature, record_to=recorder,
                   holdout=held, holdout_per_step=opt.holdout_per_step, holdout_record_to=holdout_rec,
                   weighting=opt.weighting if held else "softmax")
    fit(model, train_x, samples.labels, ids=samples.ids, method=gm, epochs=opt.epochs, batch_size=opt.batch_size,
        optimizer="sgd", lr=lr, momentum=0.9, seed=opt.seed, progress=opt.progress, desc="Grad-Mimic model",
        device=device)
    model.cpu()
    logits = predict_logits(ref_module, train_x if opt.setting == "probe" else samples.get_inputs()).numpy()
    columns = {
        "mimic_mean": per_sample(recorder, "mimic", "mean", ids=samples.ids).astype(np.float32),
        "mimic_last": per_sample(recorder, "mimic", "last", ids=samples.ids).astype(np.float32),
        "mimic_normed_mean": per_sample(recorder, "mimic_normed", "mean", ids=samples.ids).astype(np.float32),
        "reference_loss": reference_label_loss(logits, samples.labels).astype(np.float32),
        "reference_pred": logits.argmax(1).astype(np.int64),
    }
    agreement = float((columns["reference_pred"] == samples.labels).mean())
    quality = {"reference_agreement": agreement, "reference_holdout_accuracy": None, "reference_check": None}
    warnings = []
    if holdout is not None and len(holdout):
        acc = accuracy(net.cpu(), holdout.get_inputs(), holdout.labels)
        quality["reference_holdout_accuracy"] = acc
        try:
            quality["reference_check"] = quality_from_agreement(agreement, acc, samples.num_classes)
        except ValueError as exc:
            warnings.append(f"no quality check: {exc}")
    else:
        warnings.append("no held-out trusted samples: the reference's agreement with the labels is not corrected "
                        "for its own errors (give --trusted or --trusted-ids to check it)")
    check = quality["reference_check"]
    if opt.binarize == "calibrated":
        res = calibrated_stage2(recorder, holdout_rec, ids=samples.ids, reference_quality=check, seed=opt.seed)
        keep = res.keep
        columns["pvalue"] = res.pvalues.astype(np.float32)
        quality["estimated"] = res.quality
        quality["stage2_alone"] = clean_fraction(res.pvalues)  # Storey's estimate, independent of the reference
        if dyn is not None:
            write_text_atomic(dyn / "calibration.json", json.dumps(
                {"rule": "calibrated", "reference_quality": check, "seed": opt.seed, "method": "count",
                 "draws": 8}, indent=1) + "\n", overwrite=True)
        compared, what = quality["stage2_alone"], "the held-out trusted samples' calibration"
    else:
        keep = stage2_filter(recorder, binarize=opt.binarize, vote=opt.vote, ids=samples.ids)
        quality["estimated"] = estimate_quality(keep)
        compared, what = quality["estimated"], "Stage 2"
    if check is not None and abs(check - compared) > QUALITY_CHECK_TOLERANCE:
        warnings.append(
            f"{what} estimates quality {compared:.3f} but the reference's agreement with the labels implies "
            f"{check:.3f}. " + (
                "The paper's per-step rule over-flags nearly clean data (it drops part of every batch): check before "
                "dropping what it flags, or use the calibrated rule." if opt.binarize != "calibrated" and
                check > compared else
                "The two independent estimates disagree: look at the flagged samples before relying on either."))
    trusted_ids = trusted.ids if trusted is not None else np.zeros(0, samples.ids.dtype)
    holdout_ids = holdout.ids if holdout is not None else np.zeros(0, samples.ids.dtype)
    return FilterResult(samples.ids, samples.labels, keep, columns, quality, net.cpu(), model, model0, ref_module,
                        train_x, lr, opt.setting, trusted_ids, holdout_ids, warnings)


@dataclass
class FilterConfig:
    """``keepset filter``'s command line: the data, where the reference comes from, the output folder."""

    data: str
    trusted: str | None = None        # spec of a separate trusted (clean) data set
    trusted_ids: str | None = None    # .npy of ids inside --data whose labels are trusted
    reference: str | None = None      # checkpoint of a trained keepset network
    out: str = "out/filter"
    overwrite: bool = False
    options: FilterOptions = field(default_factory=FilterOptions)

    def validate(self, flags: bool = False) -> "FilterConfig":
        """Check the options, the reference sources and the flags a given reference makes meaningless, before
        any work (``flags``: name them by their command-line flags). The files are read by ``load_inputs``."""
        def name(field_: str) -> str:
            return "--" + field_.replace("_", "-") if flags else field_

        self.options.validate(flags)
        if self.trusted and self.trusted_ids:
            raise ValueError(f"give either {name('trusted')} SPEC or {name('trusted_ids')} FILE, not both")
        if not (self.trusted or self.trusted_ids or self.reference):
            raise ValueError(f"give {name('trusted')} SPEC, {name('trusted_ids')} FILE or {name('reference')} CKPT: "
                             "Grad-Mimic needs a reference trained on clean data")
        if self.reference and not (self.trusted or self.trusted_ids) and (
                self.options.binarize == "calibrated" or self.options.weighting == "lfdr"):
            raise ValueError(f"{name('binarize')} calibrated (the default) and {name('weighting')} lfdr are calibrated "
                             f"by held-out trusted samples: add {name('trusted')} or {name('trusted_ids')} to "
                             f"{name('reference')}, or choose {name('binarize')} threshold and {name('weighting')} "
                             "softmax")
        if self.reference:
            if self.options.setting == "finetune":
                raise ValueError(f"{name('setting')} finetune trains model and reference from one shared "
                                 f"initialisation, which a given {name('reference')} does not have: use "
                                 f"{name('setting')} probe")
            # a given reference is used as it is: these options would be ignored
            defaults = FilterOptions()
            for field_ in ("backbone", "reference_epochs", "holdout"):
                if getattr(self.options, field_) != getattr(defaults, field_):
                    raise ValueError(f"{name(field_)} shapes the reference trained on trusted samples; with "
                                     f"{name('reference')} the given reference is used as it is (every trusted "
                                     f"sample checks it): drop {name(field_)}")
        return self


def load_inputs(cfg: FilterConfig) -> tuple[SampleSet, SampleSet | None, nn.Module | None]:
    """The samples to filter, the trusted samples and the reference named by ``cfg`` (validated)."""
    if cfg.trusted and cfg.trusted_ids:
        raise ValueError("give either --trusted SPEC or --trusted-ids FILE, not both")
    if not (cfg.trusted or cfg.trusted_ids or cfg.reference):
        raise ValueError("give --trusted SPEC, --trusted-ids FILE or --reference CKPT: Grad-Mimic needs a "
                         "reference trained on clean data")
    reference = load_checkpoint(cfg.reference)[0] if cfg.reference else None
    samples = load_spec(cfg.data)
    trusted = None
    if cfg.trusted:
        trusted = load_spec(cfg.trusted)
    elif cfg.trusted_ids:
        ids = read_keep_list(cfg.trusted_ids)
        try:
            pos = samples.positions_of(ids)
        except ValueError as exc:
            raise ValueError(f"--trusted-ids {cfg.trusted_ids}: {exc}") from None
        if len(np.unique(pos)) != len(pos):
            raise ValueError(f"{cfg.trusted_ids} names some ids twice")
        mask = np.zeros(len(samples), bool)
        mask[pos] = True
        trusted, samples = samples.subset(mask), samples.subset(~mask)
    return samples, trusted, reference


def run_filter(cfg: FilterConfig, log=print) -> dict:
    """Validate, filter, and write the run folder ``cfg.out`` (whole, atomically). Returns the summary."""
    t0 = time.perf_counter()
    opt = cfg.validate().options
    check_output_dir(cfg.out, cfg.overwrite)  # before any work
    samples, trusted, reference = load_inputs(cfg)
    log(f"data {cfg.data}: {len(samples)} samples to filter, {samples.num_classes} classes"
        + (f"; {len(trusted)} trusted" if trusted is not None else ""))
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        result = filter_samples(samples, trusted, reference=reference, options=opt, dynamics_dir=tmp / "dynamics",
                                log=log)
        summary = write_run(tmp, result, samples, data_spec=cfg.data, params=_params(cfg), t0=t0,
                            trusted_inside=bool(cfg.trusted_ids), inputs=input_files(cfg))
    return summary


def input_files(cfg: FilterConfig) -> dict:
    """The files a filter run reads, for the manifest's input hashes: the data and trusted data when their spec
    names one file, the trusted ids, the reference checkpoint (folders are identified by the data fingerprint)."""
    from keepset.data import spec_file

    files = {"data": spec_file(cfg.data), "trusted": spec_file(cfg.trusted) if cfg.trusted else None,
             "trusted_ids": cfg.trusted_ids, "reference": cfg.reference}
    return {k: v for k, v in files.items() if v}


def _params(cfg: FilterConfig) -> dict:
    doc = asdict(cfg)
    doc.update(doc.pop("options"))
    return doc


def write_run(out: Path, result: FilterResult, samples: SampleSet, *, data_spec: str, params: dict, t0: float,
              extra_columns: dict | None = None, extra_summary: dict | None = None,
              method: str = "keepset-filter", trusted_inside: bool = False, inputs: dict | None = None) -> dict:
    """Write a run folder's files into ``out`` (a fresh folder): scores.parquet and keep.npy (the filtered
    samples), trusted.npy (with ``trusted_inside``: the trusted samples came from the same data), summary.json,
    the checkpoints and manifest.json. Returns the summary."""
    columns = dict(result.columns)
    known = {}
    if samples.true_labels is not None:
        known["true_label"] = samples.true_labels
    if samples.corrupted is not None:
        known["corrupted"] = samples.corrupted
    columns.update(known)
    columns.update(extra_columns or {})
    columns["keep"] = result.keep
    truth = {}
    if samples.corrupted is not None:  # a copy with recorded corruption: measure the filter against it
        from keepset.evaluation import auroc, detection_metrics, quality_error

        truth["detection"] = detection_metrics(samples.corrupted, ~result.keep)
        truth["detection"]["auroc"] = auroc(samples.corrupted, -result.columns["mimic_mean"].astype(np.float64))
        truth["quality"] = {**result.quality, "true": float(1 - samples.corrupted.mean())}
        truth["quality"]["error"] = quality_error(truth["quality"]["estimated"], truth["quality"]["true"])
    write_score_table(out / "scores.parquet", result.ids, columns, labels=result.labels,
                      metadata={"data": data_spec, "class_names": list(samples.class_names), "method": method})
    write_keep_list(out / "keep.npy", result.ids[result.keep])
    if trusted_inside and len(result.trusted_ids):
        write_keep_list(out / "trusted.npy", result.trusted_ids)
    if result.setting == "probe":
        model_net = copy.deepcopy(result.reference_net)
        model_net.head.load_state_dict(result.model.head.state_dict())
        role = "model: the reference's frozen backbone + the head trained with Grad-Mimic"
    else:
        model_net, role = result.model, "model: fine-tuned with Grad-Mimic from the reference's initialisation"
    save_checkpoint(model_net, out / "model.safetensors", {"role": role})
    save_checkpoint(result.reference_net, out / "reference.safetensors",
                    {"role": "reference: trained on the trusted samples"})
    n = len(result.ids)
    summary = {
        "data": data_spec, "n": n, "kept": int(result.keep.sum()), "flagged": int(n - result.keep.sum()),
        "n_trusted": int(len(result.trusted_ids)), "n_holdout": int(len(result.holdout_ids)),
        "class_names": list(samples.class_names), "quality": dict(result.quality),
        "setting": result.setting, "lr": result.lr, "warnings": list(result.warnings),
        "keep_list": ("keep.npy holds the ids of the filtered samples Stage 2 keeps" +
                      ("; the trusted samples (trusted.npy) are clean: keep them too" if trusted_inside else "")),
        **truth,
        **(extra_summary or {}),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=json_default) + "\n")
    write_manifest(out / "manifest.json", method=method, params=params,
                   data={"spec": data_spec, "fingerprint": samples.fingerprint(), "n": n}, inputs=inputs,
                   models={"reference": "reference.safetensors", "model": "model.safetensors"},
                   outputs={f: f for f in ("scores.parquet", "keep.npy", "summary.json", "dynamics")})
    return summary


def format_summary(s: dict) -> str:
    """A short plain-text table of a filter run."""
    q = s["quality"]
    check = ("no held-out trusted samples" if q.get("reference_check") is None else
             f"reference agrees with {q['reference_agreement']:.3f} of the labels -> quality {q['reference_check']:.3f} "
             f"(corrected for its held-out error)")
    rows = [("data", s["data"]),
            ("samples", f"{s['n']} filtered, {s['n_trusted']} trusted ({s['n_holdout']} held out)"),
            ("dataset quality", f"estimated {q['estimated']:.3f}"
             + (f" (held-out calibration alone {q['stage2_alone']:.3f})" if q.get("stage2_alone") is not None else "")
             + (f" | true {q['true']:.3f} (recorded corruption)" if "true" in q else "")),
            ("quality check", check),
            ("kept", f"{s['kept']} of {s['n']} ({s['flagged']} flagged)")]
    if s.get("detection"):
        d = s["detection"]
        rows.append(("detection", f"precision {d['precision']:.3f} recall {d['recall']:.3f} F1 {d['f1']:.3f} "
                                  f"AUROC {d['auroc']:.3f} (against the recorded corruption)"))
    rows.append(("time", f"{s['seconds']} s"))
    rows += [("warning", w) for w in s.get("warnings", [])]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)

