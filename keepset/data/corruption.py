"""Image corruption that records which images were damaged (the CLIP-powered paper's robustness setting).

``corrupt_images(images, kind, fraction=, severity=, seed=)`` damages exactly ``round(fraction * N)``
images chosen with ``seed`` and returns the new images with a boolean mask of the damaged ones. The
input is never modified; the output is float32 in [0, 1]. Everything is vectorised over the chosen
images (one numpy expression per kind; the blur loops over its few kernel taps, never over samples).

Severity scales (1..5), in ImageNet-C's spirit (Hendrycks & Dietterich, 2019):

- ``gaussian_noise``: additive N(0, sigma^2) per pixel and channel, sigma in {0.08, 0.12, 0.18, 0.26, 0.38}
  (ImageNet-C's own scale), then clipped to [0, 1].
- ``blur``: a Gaussian blur of standard deviation ``sigma_px = s * side / 32`` pixels, s in
  {0.5, 1.0, 1.5, 2.0, 3.0} and ``side = min(H, W)`` (so 0.5 ... 3 px on 32-pixel images, 0.44 ... 2.6 px
  on 28-pixel ones: comparable to CIFAR-10-C at the low end, stronger at the high end so that damage is
  visible on small images). The kernel is truncated at ``int(3 * sigma + 0.5)`` pixels (at least 1) and
  applied separably along H then W with symmetric ("reflect") edges: the same filter as
  ``scipy.ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=3)`` per channel.
- ``occlusion``: one square-ish patch of ``round(f * H)`` x ``round(f * W)`` pixels, f in
  {0.2, 0.3, 0.4, 0.5, 0.6}, at a uniformly drawn position fully inside the image, filled with the
  constant ``FILL`` = 0.5 (mid grey: Cutout's zero in mean-normalised space, visible on both black and
  white backgrounds) in every channel.
- ``blank``: the whole image replaced by the constant ``FILL`` = 0.5 (severity has no effect but is
  still validated).
"""

from __future__ import annotations

import numpy as np

CORRUPTION_KINDS = ("gaussian_noise", "blur", "occlusion", "blank")
NOISE_SIGMAS = (0.08, 0.12, 0.18, 0.26, 0.38)
BLUR_SIGMAS_PER_32PX = (0.5, 1.0, 1.5, 2.0, 3.0)
OCCLUSION_FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.6)
FILL = 0.5
BLUR_TRUNCATE = 3.0


def _check(images, kind: str, fraction: float, severity: int) -> tuple[np.ndarray, float, int]:
    if kind not in CORRUPTION_KINDS:
        raise ValueError(f"unknown corruption kind {kind!r}; choose one of {CORRUPTION_KINDS}")
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}") from None
    if not np.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1] (the share of images to damage), got {fraction!r}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be an integer from 1 (mild) to 5 (strong), got {severity!r}")
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"images must be a 4-D array [N, C, H, W], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be floats in [0, 1] (divide uint8 images by 255), got dtype {x.dtype}")
    if x.size and (not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0):
        raise ValueError("images must be finite and in [0, 1]; rescale them (e.g. divide uint8 images by 255)")
    return x, fraction, int(severity)


def gaussian_kernel(sigma: float, truncate: float = BLUR_TRUNCATE) -> np.ndarray:
    """Normalised 1-D Gaussian taps float64 [2r + 1], ``r = max(1, int(truncate * sigma + 0.5))``."""
    radius = max(1, int(truncate * sigma + 0.5))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def blur_images(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of float images [n, C, H, W] (symmetric edges), float32 [n, C, H, W]."""
    k = gaussian_kernel(sigma)
    r = (len(k) - 1) // 2
    out = x.astype(np.float64)
    for axis in (2, 3):  # a loop over the two image axes and the kernel taps, vectorised over samples
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="symmetric")
        size = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * np.take(padded, np.arange(i, i + size), axis=axis)
        out = acc
    return out.astype(np.float32)


def occlusion_side(severity: int, size: int) -> int:
    """Side in pixels of the occluding patch along an image axis of ``size`` pixels (at least 1)."""
    return max(1, min(size, int(round(OCCLUSION_FRACTIONS[severity - 1] * size))))


def corrupt_images(images, kind: str, *, fraction: float, severity: int = 3,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Damage exactly ``round(fraction * N)`` seeded-chosen images.

    Parameters
    ----------
    images : float array [N, C, H, W] in [0, 1] (not modified)
    kind : one of ``CORRUPTION_KINDS`` (see the module docstring for each kind's severity scale)
    fraction : float in [0, 1], the share of images to damage
    severity : int in 1..5
    seed : int; the same seed gives the same chosen images and the same bytes

    Returns
    -------
    images_out : float32 [N, C, H, W] in [0, 1]; unchosen images are byte-identical to the input
    corrupted : bool [N], True for the damaged images
    """
    x, fraction, severity = _check(images, kind, fraction, severity)
    n = len(x)
    out = np.array(x, dtype=np.float32, copy=True)
    corrupted = np.zeros(n, dtype=bool)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=int(round(fraction * n)), replace=False)) if n else np.zeros(0, np.int64)
    corrupted[chosen] = True
    if len(chosen) == 0:
        return out, corrupted
    sel = out[chosen]
    _, c, h, w = sel.shape
    if kind == "gaussian_noise":
        noise = rng.normal(0.0, NOISE_SIGMAS[severity - 1], size=sel.shape)
        sel = np.clip(sel + noise, 0.0, 1.0)
    elif kind == "blur":
        sigma = BLUR_SIGMAS_PER_32PX[severity - 1] * min(h, w) / 32.0
        sel = np.clip(blur_images(sel, sigma), 0.0, 1.0)
    elif kind == "occlusion":
        ph, pw = occlusion_side(severity, h), occlusion_side(severity, w)
        top = rng.integers(0, h - ph + 1, size=len(chosen))
        left = rng.integers(0, w - pw + 1, size=len(chosen))
        rows = np.arange(h)[None, :]
        cols = np.arange(w)[None, :]
        in_rows = (rows >= top[:, None]) & (rows < top[:, None] + ph)     # [n, H]
        in_cols = (cols >= left[:, None]) & (cols < left[:, None] + pw)   # [n, W]
        patch = in_rows[:, None, :, None] & in_cols[:, None, None, :]     # [n, 1, H, W]
        sel = np.where(patch, np.float32(FILL), sel)
    else:  # blank
        sel = np.full_like(sel, FILL)
    out[chosen] = sel.astype(np.float32)
    return out, corrupted
