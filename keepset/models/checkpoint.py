"""Checkpoints as safetensors: tensors plus the architecture config in the header metadata.

Loading never unpickles anything, so a checkpoint from an untrusted source is safe to open.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from keepset.io.atomic import atomic_path
from keepset.models.networks import build_model


def save_checkpoint(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``model``'s state dict and config to ``path`` (.safetensors) atomically."""
    from safetensors.torch import save_file

    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("only keepset networks (with a .config) can be checkpointed; build one with build_model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"keepset_config": json.dumps(config), "keepset_extra": json.dumps(extra or {})}
    with atomic_path(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_safetensors(path: str | Path, what: str = "checkpoint") -> tuple[dict, dict]:
    """Tensors and header metadata of a safetensors file, with clear errors for a missing or corrupt file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"{path} is not a readable safetensors {what}: {exc}") from None
    return tensors, meta


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Build the network stored at ``path`` and load its weights. Returns (model, extra metadata)."""
    tensors, meta = read_safetensors(path, "checkpoint")
    if "keepset_config" not in meta:
        raise ValueError(f"{path} has no keepset architecture metadata; save it with keepset.models.save_checkpoint")
    model = build_model(json.loads(meta["keepset_config"]))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match its declared architecture: missing {missing}, unexpected {unexpected}")
    return model, json.loads(meta.get("keepset_extra", "{}"))
