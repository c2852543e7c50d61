"""Fingerprints of networks in memory: one short hash of every tensor's name, dtype, shape and bytes."""

from __future__ import annotations

import hashlib

import torch


def model_fingerprint(module: torch.nn.Module, length: int = 16) -> str:
    """sha256 (first ``length`` hex digits) of ``module.state_dict()``: names (sorted), dtypes, shapes and the
    exact bytes of every tensor (any device; bfloat16 and other dtypes numpy lacks included).

    Same weights, same fingerprint in any process; a changed value, name, shape or dtype changes it.
    """
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]
