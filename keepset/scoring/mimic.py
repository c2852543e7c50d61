"""The Mimic Score as a registered scorer: a model checkpoint and a reference checkpoint in, one score
per sample out (batched, with a progress bar)."""

from __future__ import annotations

import numpy as np

from keepset._argtypes import positive_float
from keepset.data import SampleSet

# torch and keepset.models are imported inside the functions: ``keepset score --help`` reads ``add_arguments``
# without loading torch.


def add_arguments(parser) -> None:
    g = parser.add_argument_group("Mimic Score (proj, cos, normed_proj, normed_cos)")
    g.add_argument("--model", help="checkpoint (.safetensors) of the model being scored (required)")
    g.add_argument("--reference", help="checkpoint of the reference model, same architecture (required)")
    g.add_argument("--layers", default=None,
                   help="parameters to score: a name, a module prefix, comma-separated names, or 'all' "
                        "(default: the final Linear's weight)")
    g.add_argument("--temperature", type=positive_float, default=1.0,
                   help="softmax temperature of the normed methods (normed_proj, normed_cos)")
    g.add_argument("--allow-partial-reference", action="store_true",
                   help="accept a reference whose architecture differs from the model's outside the scored layers")


def parse_layers(layers):
    """``--layers`` as given on the command line: comma-separated names become a list; None, 'all', a name or a
    prefix pass through."""
    if isinstance(layers, str) and layers != "all" and "," in layers:
        return [s.strip() for s in layers.split(",") if s.strip()]
    return layers


def preflight(method: str, options: dict) -> dict:
    """Checks before any work (``keepset score`` calls it first): both checkpoints load, the scored layers exist,
    and the reference shares the model's weight space (its whole architecture unless
    ``allow_partial_reference``). Replaces the paths in ``options`` by the loaded networks (loaded once).

    Returns what the manifest records: {"inputs": the checkpoint paths, "models": their weight fingerprints}.
    """
    from keepset.models import load_checkpoint, model_fingerprint
    from keepset.models.mimic import check_same_space, resolve_layers

    paths = {}
    for name in ("model", "reference"):
        if not options.get(name):
            raise ValueError(f"the Mimic Score needs --{name} CHECKPOINT (.safetensors): both --model and "
                             "--reference")
        if isinstance(options[name], (str, bytes)) or hasattr(options[name], "__fspath__"):
            paths[name] = options[name]
            options[name] = load_checkpoint(options[name])[0]
    model, reference = options["model"], options["reference"]
    try:
        check_same_space(model, reference, resolve_layers(model, parse_layers(options.get("layers"))),
                         strict=not options.get("allow_partial_reference", False))
    except ValueError as exc:  # name the flag, not the Python argument
        raise ValueError(str(exc).replace("allow_partial_reference=True", "--allow-partial-reference")) from None
    return {"inputs": paths, "models": {name: {"fingerprint": model_fingerprint(options[name]),
                                               "path": str(paths.get(name, ""))} for name in ("model", "reference")}}


def score_mimic(samples: SampleSet, *, method: str = "proj", model=None, reference=None, layers=None,
                temperature: float = 1.0, batch_size: int = 256, progress: bool = True, device: str = "cpu",
                allow_partial_reference: bool = False, **_) -> dict[str, np.ndarray]:
    """Mimic Score of every sample of ``samples``. ``model``/``reference``: modules or checkpoint paths.

    A reference whose architecture differs from the model's anywhere is refused unless
    ``allow_partial_reference`` (then only the scored layers must match).

    Normed methods are softmax-normalised within each batch of ``batch_size`` samples, as in training.
    Returns {method: float32 [N]}.
    """
    import torch

    from keepset._progress import progress_bar
    from keepset.models import load_checkpoint
    from keepset.models.mimic import MIMIC_METHODS, check_same_space, mimic_scores, resolve_layers

    if method not in MIMIC_METHODS:
        raise ValueError(f"unknown mimic method {method!r}; choose one of {MIMIC_METHODS}")
    if model is None or reference is None:
        raise ValueError("the Mimic Score needs --model and --reference checkpoints")
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = load_checkpoint(model)[0]
    if isinstance(reference, (str, bytes)) or hasattr(reference, "__fspath__"):
        reference = load_checkpoint(reference)[0]
    names = resolve_layers(model, parse_layers(layers))
    check_same_space(model, reference, names, strict=not allow_partial_reference)
    model.eval().to(device)
    reference.eval().to(device)
    n = len(samples)
    out = np.empty(n, dtype=np.float32)
    for start in progress_bar(range(0, n, batch_size), desc=f"{method} scores", enabled=progress):
        pos = np.arange(start, min(n, start + batch_size))
        x = torch.from_numpy(samples.get_inputs(pos)).to(device)
        y = torch.from_numpy(samples.labels[pos]).to(device)
        out[pos] = mimic_scores(model, reference, x, y, layers=names, method=method, temperature=temperature,
                                allow_partial_reference=allow_partial_reference).detach().cpu().numpy()
    return {method: out}
