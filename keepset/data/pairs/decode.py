"""Safe image decoding for pair sources: encoded bytes or arrays -> float32 [C, H, W] in [0, 1].

Images over ``MAX_IMAGE_PIXELS`` (50 megapixels) are refused from their header, before any pixel is
decoded (a decompression bomb costs nothing). Every image of a source is converted to one mode (``L`` or
``RGB``: the first image's, unless given) and resized to one size (the first image's, unless given) so
that batches stack.
"""

from __future__ import annotations

import io
import math

import numpy as np

MAX_IMAGE_PIXELS = 50_000_000
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F", "P;L")


def parse_image_size(image_size) -> tuple[int, int] | None:
    """None, an int side or an (H, W) pair -> None or (H, W); ValueError otherwise."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (int(image_size), int(image_size))
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be an int or an (H, W) pair, got {image_size!r}") from None
    if h < 1 or w < 1 or h * w > MAX_IMAGE_PIXELS:
        raise ValueError(f"image_size must be positive and at most {MAX_IMAGE_PIXELS} pixels, got {image_size!r}")
    return h, w


class ImageDecoder:
    """Decodes images one by one into a common mode and size; ``stack`` makes float32 [n, C, H, W].

    Parameters
    ----------
    image_size : None (the first image's size), an int side, or (H, W)
    mode : None (the first image's: "L" for grayscale, else "RGB"), "L" or "RGB"
    max_pixels : refuse images with more pixels than this (default 50 megapixels)
    """

    def __init__(self, image_size=None, mode: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS):
        if mode not in (None, "L", "RGB"):
            raise ValueError(f"mode must be None, 'L' or 'RGB', got {mode!r}")
        self.size = parse_image_size(image_size)  # (H, W)
        self.mode = mode
        self.max_pixels = int(max_pixels)

    def _open(self, data: bytes, where: str):
        from PIL import Image

        try:
            im = Image.open(io.BytesIO(data))
        except Exception as exc:
            raise ValueError(f"cannot decode image {where}: {exc}") from None
        w, h = im.size
        if w * h > self.max_pixels:
            raise ValueError(f"image {where} is {w}x{h} (width x height) = {w * h} pixels, over the limit of {self.max_pixels}; "
                             "refusing to decode it")
        return im

    def decode(self, data, where: str) -> np.ndarray:
        """One image (encoded bytes, or a uint8 / [0, 1] float array [H, W] or [H, W, C]) -> float32 [C, H, W]."""
        from PIL import Image

        if isinstance(data, (bytes, bytearray, memoryview)):
            im = self._open(bytes(data), where)
        else:
            im = self._from_array(np.asarray(data), where)
        try:
            if self.mode is None:
                self.mode = "L" if im.mode in GRAY_MODES else "RGB"
            if self.size is None:
                self.size = (im.size[1], im.size[0])
            im = im.convert(self.mode)
            if (im.size[1], im.size[0]) != self.size:
                im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"cannot decode image {where}: {exc}") from None
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def _from_array(self, arr: np.ndarray, where: str):
        from PIL import Image

        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise ValueError(f"image array {where} must be [H, W] or [H, W, 3|4], got shape {arr.shape}")
        if math.prod(arr.shape[:2]) > self.max_pixels:
            raise ValueError(f"image {where} has {arr.shape[0]}x{arr.shape[1]} pixels, over the limit of "
                             f"{self.max_pixels}")
        if arr.dtype == np.uint8:
            return Image.fromarray(arr)
        if np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1:
            return Image.fromarray(np.round(arr * 255).astype(np.uint8))  # 8-bit, like every decoded image
        raise ValueError(f"image array {where} must be uint8, or floats in [0, 1]; got {arr.dtype}")

    @staticmethod
    def stack(images: list[np.ndarray], c_h_w: tuple | None = None) -> np.ndarray:
        """float32 [n, C, H, W] from a list of [C, H, W] (shape ``(0, *c_h_w)`` when empty)."""
        if not images:
            return np.zeros((0, *(c_h_w or (1, 1, 1))), dtype=np.float32)
        return np.stack(images).astype(np.float32, copy=False)
