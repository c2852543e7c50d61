"""Thumbnails of the samples the report shows: small PNGs as base64 ``data:`` URIs.

Only the rows shown are loaded and encoded. Samples are found by id (never by row position).
"""

from __future__ import annotations

import base64
import io

import numpy as np

PNG_PREFIX = "data:image/png;base64,"


def positions_of(sample_ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions [M] in ``sample_ids`` of the ``wanted`` ids [M] and a found mask [M] (position -1 if absent).

    Ids compare as integers when both sides are integers, as strings otherwise.
    """
    a, w = np.asarray(sample_ids), np.asarray(wanted)
    if not (a.dtype.kind in "iu" and w.dtype.kind in "iu"):
        a, w = a.astype(str), w.astype(str)
    order = np.argsort(a, kind="stable")
    sorted_ids = a[order]
    idx = np.clip(np.searchsorted(sorted_ids, w), 0, max(len(a) - 1, 0))
    found = (sorted_ids[idx] == w) if len(a) else np.zeros(len(w), dtype=bool)
    return np.where(found, order[idx] if len(a) else -1, -1), found


def encode_png(image: np.ndarray, max_side: int = 64) -> str:
    """One image [C, H, W] float in [0, 1] (C = 1 or 3) as a PNG data URI, at most ``max_side`` pixels a side
    (smaller images keep their size: the page scales them up without smoothing)."""
    from PIL import Image

    x = np.clip(np.asarray(image, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    im = Image.fromarray(x[0] if x.shape[0] == 1 else np.ascontiguousarray(x.transpose(1, 2, 0)))  # L or RGB
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return PNG_PREFIX + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(spec: str | None, ids: np.ndarray, max_side: int = 64) -> tuple[list[str | None], str | None]:
    """PNG data URIs [M] (None where a sample has no image) of the samples ``ids`` [M] of the data ``spec``,
    and a one-line note saying why thumbnails are missing (None when all were made)."""
    ids = np.asarray(ids)
    none: list[str | None] = [None] * len(ids)
    if len(ids) == 0:
        return none, None
    if not spec:
        return none, "no thumbnails: the run does not say which data it filtered (summary.json has no `data`)"
    from keepset.data import load_spec

    try:
        samples = load_spec(spec)
    except (OSError, ValueError, ImportError) as exc:
        return none, f"no thumbnails: the data {spec!r} cannot be loaded ({str(exc).splitlines()[0]})"
    pos, found = positions_of(samples.ids, ids)
    if not found.any():
        return none, f"no thumbnails: none of the shown ids is in the data {spec!r} (moved or another data set?)"
    try:
        images = samples.get_inputs(pos[found])
    except (OSError, ValueError) as exc:
        return none, f"no thumbnails: reading the images failed ({str(exc).splitlines()[0]})"
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        return none, (f"no thumbnails: the data {spec!r} holds feature vectors or arrays of shape "
                      f"{tuple(images.shape[1:])}, not images")
    out = list(none)
    for j, i in enumerate(np.flatnonzero(found)):
        out[i] = encode_png(images[j], max_side)
    missing = int((~found).sum())
    note = None if not missing else f"{missing} shown ids are not in the data {spec!r}: no thumbnail for them"
    return out, note
