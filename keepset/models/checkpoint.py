"""Checkpoints as safetensors: tensors plus the architecture config in the header metadata.

Loading never unpickles anything, so a checkpoint from an untrusted source is safe to open.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from keepset.io.atomic import atomic_path
from keepset.models.networks import build_model


def _metadata_json(value, what: str) -> str:
    """``value`` as JSON with sorted keys (same value, same string), or ValueError when it is not JSON data."""
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be plain JSON data (str, numbers, lists, dicts): {exc}") from None


def write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str], overwrite: bool = False) -> Path:
    """Write ``tensors`` {name: CPU tensor} and string ``metadata`` to ``path`` atomically, byte-reproducibly.

    safetensors serialises its header from a hash map, so the same tensors and metadata can come out in
    another key order (other bytes) from one save to the next. The header is re-written here with sorted
    keys (padded with spaces to 8 bytes, as the format requires); data offsets are unchanged.
    """
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(len(header).to_bytes(8, "little"))
            fh.write(header)
            fh.write(memoryview(raw)[8 + n:])
    return Path(path)


def save_checkpoint(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``model``'s state dict and config to ``path`` (.safetensors) atomically.

    The same weights, config and ``extra`` (JSON data) give the same bytes in any process.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("only keepset networks (with a .config) can be checkpointed; build one with build_model")
    meta = {"keepset_config": _metadata_json(config, "the model's config"),
            "keepset_extra": _metadata_json(extra or {}, "extra")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return write_safetensors(path, tensors, meta, overwrite=True)


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
