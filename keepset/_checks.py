"""Argument validation shared by every stage: one place for the error messages users read."""

from __future__ import annotations

import numpy as np


def check_ratio(ratio: float, name: str = "ratio") -> float:
    """Return ``ratio`` as a float in (0, 1], or raise a ValueError that says how to fix it."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1], got {ratio!r}") from None
    if not np.isfinite(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1] (the fraction of samples to keep), got {ratio!r}")
    return value


def check_temperature(temperature) -> float:
    """A softmax temperature as a float: a one-line ValueError unless it is a finite number > 0."""
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {value}")
    return value


def check_scores(scores, name: str = "scores") -> np.ndarray:
    """Return ``scores`` as a 1-D float64 array with no NaN/inf, or raise naming the bad entries."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one float per sample), got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite values (NaN or inf), first at positions {idx}; "
            "drop or impute those samples before selecting"
        )
    return arr


def check_labels(labels, num_classes: int | None = None, name: str = "labels", *,
                 hint: str | None = None) -> np.ndarray:
    """Return integer class labels as int64 [N], or raise a one-line ValueError naming the bad values.

    Labels must be 1-D, integer-valued (floats holding whole numbers are accepted), finite and >= 0;
    with ``num_classes``, every label must also be < ``num_classes``. ``hint`` replaces the default
    advice given when a label is out of range (e.g. "or pass class_names that name every class").
    """
    try:
        arr = np.asarray(labels)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} are not an array of class indices: {one_line(exc)}") from None
    if arr.ndim != 1:
        extra = "; one-hot labels: take labels.argmax(axis=1)" if arr.ndim == 2 else ""
        raise ValueError(f"{name} must be 1-D (one class index per sample), got shape {arr.shape}{extra}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating):
            nan = np.isnan(arr)
            if nan.any():
                raise ValueError(f"{name} hold {int(nan.sum())} NaN values (first at positions "
                                 f"{np.flatnonzero(nan)[:5].tolist()}); every sample needs a class index")
            bad = ~np.isfinite(arr) | (arr != np.round(arr))
            if bad.any():
                raise ValueError(f"{name} hold {int(bad.sum())} values that are not whole numbers "
                                 f"(e.g. {arr[bad][:3].tolist()}); labels must be integer class indices 0..K-1")
            if arr.max() > np.iinfo(np.int64).max or arr.min() < np.iinfo(np.int64).min:
                raise ValueError(f"{name} hold values beyond int64 (e.g. {arr[np.abs(arr) > 2**62][:3].tolist()}); "
                                 "labels must be class indices 0..K-1")
            arr = arr.astype(np.int64)
        else:
            advice = ("; map class names to indices with np.unique(labels, return_inverse=True)"
                      if arr.dtype.kind in "USO" else "")
            raise ValueError(f"{name} must be integer class indices, got dtype {arr.dtype}{advice}")
    if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} hold values above 2^63 - 1 (e.g. {int(arr.max())}); labels must be class "
                         "indices 0..K-1")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        neg = arr < 0
        raise ValueError(f"{name} hold {int(neg.sum())} negative values (e.g. {arr[neg][:5].tolist()}); class "
                         "indices start at 0: remap the labels to 0..K-1 (np.unique(labels, return_inverse=True))")
    if num_classes is not None and arr.size:
        bad = arr >= num_classes
        if bad.any():
            fix = hint or "map them to known classes or pass the right num_classes"
            raise ValueError(
                f"{name} have {int(bad.sum())} values outside [0, {num_classes}) "
                f"(e.g. {arr[bad][:5].tolist()}); {fix}"
            )
    return arr


def infer_num_classes(labels: np.ndarray, name: str = "labels", *, dense: bool = False,
                      fix: str = "pass num_classes") -> int:
    """The number of classes K = max(labels) + 1 implied by checked labels int64 [N] (0 when empty).

    Refused (ValueError saying how to remap) when K is not plausible:

    - always when K > N: N samples cannot need more classes than N to be indexed 0..K-1, and a label
      such as 10^9 would otherwise make a caller build 10^9 class names;
    - with ``dense=True``, whenever some class in 0..K-1 has no sample (needed where new labels are
      *drawn* from 0..K-1, as label noise does: an absent class would silently receive samples).
    """
    y = np.asarray(labels)
    if not y.size:
        return 0
    top = int(y.max())
    k = top + 1
    distinct = np.unique(y)
    remap = (f"remap the labels to 0..{len(distinct) - 1} (np.unique(labels, return_inverse=True)) or "
             f"{fix}")
    if k > len(y):
        raise ValueError(f"{name} hold {top}, but there are only {len(y)} samples ({len(distinct)} distinct "
                         f"labels), so the classes cannot be 0..{top}; {remap}")
    if dense and len(distinct) < k:
        missing = np.setdiff1d(np.arange(k), distinct)
        raise ValueError(f"{name} take {len(distinct)} distinct values but go up to {top} (classes "
                         f"{missing[:5].tolist()} never occur), so the number of classes cannot be inferred; "
                         f"{remap}")
    return k


def check_class_labels(labels, num_classes: int | None = None, name: str = "labels") -> np.ndarray:
    """``check_labels`` plus plausibility when ``num_classes`` is unknown: the labels must be indices 0..K-1
    with K at most the number of samples (``infer_num_classes``); pass ``num_classes`` for a small subset
    of a larger label set. Returns int64 [N]."""
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
                                    or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    y = check_labels(labels, num_classes, name)
    if num_classes is None:
        infer_num_classes(y, name, fix="pass num_classes")
    return y


def check_nonempty_array(n: int, name: str, task: str = "select from") -> None:
    """Raise ``ValueError("<name> is empty: there are no samples to <task>")`` when ``n == 0``."""
    if int(n) == 0:
        raise ValueError(f"{name} is empty: there are no samples to {task}")


def one_line(text, limit: int = 200) -> str:
    """``text`` (e.g. a library's exception message) on one line, at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def check_installed(module: str, what: str, extra: str) -> None:
    """ImportError naming the keepset extra that installs ``module`` when it is not installed (checked without
    importing it, so before any work and at no cost)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{what} needs the {module.replace('_', '-')} package, which is not installed: "
                          f'pip install "keepset[{extra}]" (or make install-extras)')


def check_not_empty(n: int, what: str, fix: str = "check the path and the files it holds") -> None:
    """Raise ``ValueError("<what> holds no samples; <fix>")`` when ``n == 0``."""
    if int(n) == 0:
        raise ValueError(f"{what} holds no samples; {fix}")


def check_mask(mask, n: int, name: str = "mask") -> np.ndarray:
    """Return a boolean [n] keep mask, or raise when its shape or dtype is wrong."""
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise ValueError(f"{name} must be a boolean array, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    return arr
