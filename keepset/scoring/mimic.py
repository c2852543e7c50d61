"""The Mimic Score as a registered scorer: a model checkpoint and a reference checkpoint in, one score
per sample out (batched, with a progress bar)."""

from __future__ import annotations

import numpy as np
import torch

from keepset.data import SampleSet
from keepset.models import load_checkpoint
from keepset.models.mimic import MIMIC_METHODS, check_same_space, mimic_scores, resolve_layers


def add_arguments(parser) -> None:
    g = parser.add_argument_group("Mimic Score (proj, cos, normed_proj, normed_cos)")
    g.add_argument("--model", help="checkpoint (.safetensors) of the model being scored")
    g.add_argument("--reference", help="checkpoint of the reference model (same architecture)")
    g.add_argument("--layers", default=None,
                   help="parameters to score: a name, a module prefix, comma-separated names, or 'all' "
                        "(default: the final Linear's weight)")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of normed methods (default 1)")
    g.add_argument("--allow-partial-reference", action="store_true",
                   help="accept a reference whose architecture differs from the model's outside the scored layers")


def score_mimic(samples: SampleSet, *, method: str = "proj", model=None, reference=None, layers=None,
                temperature: float = 1.0, batch_size: int = 256, progress: bool = True, device: str = "cpu",
                allow_partial_reference: bool = False, **_) -> dict[str, np.ndarray]:
    """Mimic Score of every sample of ``samples``. ``model``/``reference``: modules or checkpoint paths.

    A reference whose architecture differs from the model's anywhere is refused unless
    ``allow_partial_reference`` (then only the scored layers must match).

    Normed methods are softmax-normalised within each batch of ``batch_size`` samples, as in training.
    Returns {method: float32 [N]}.
    """
    from keepset._progress import progress_bar

    if method not in MIMIC_METHODS:
        raise ValueError(f"unknown mimic method {method!r}; choose one of {MIMIC_METHODS}")
    if model is None or reference is None:
        raise ValueError("the Mimic Score needs --model and --reference checkpoints")
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = load_checkpoint(model)[0]
    if isinstance(reference, (str, bytes)) or hasattr(reference, "__fspath__"):
        reference = load_checkpoint(reference)[0]
    if isinstance(layers, str) and layers != "all" and "," in layers:
        layers = [s.strip() for s in layers.split(",") if s.strip()]
    names = resolve_layers(model, layers)
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
