"""Data spec strings used on the command line: ``digits``, ``fashion-mnist[:PATH]``, ``idx:PATH``,
``cifar10:PATH``, ``cifar100:PATH``, ``imagefolder:PATH``, ``npz:PATH``.

Append ``@test`` to an IDX / CIFAR spec for its test file (e.g. ``fashion-mnist@test``).
"""

from __future__ import annotations

from keepset.data.sampleset import SampleSet
from keepset.data import sources

SPEC_HELP = ("digits | fashion-mnist[:PATH] | idx:PATH | cifar10:PATH | cifar100:PATH | "
             "imagefolder:PATH | npz:PATH   (append @test for the test file of IDX/CIFAR data)")


def spec_file(spec: str) -> str | None:
    """The file a data spec names when it names one file (``npz:PATH``, an IDX file), else None (built-in data,
    folders: their content is identified by ``SampleSet.fingerprint()``). For manifests' input hashes."""
    from pathlib import Path

    if not isinstance(spec, str):
        return None
    body = spec.strip().removesuffix("@test")
    kind, _, path = body.partition(":")
    if kind.lower() in ("npz", "idx", "mnist") and path and Path(path).expanduser().is_file():
        return str(Path(path).expanduser())
    return None


def load_spec(spec: str) -> SampleSet:
    """Load the SampleSet a data spec names; raise ValueError with the accepted forms when it is unknown."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty data spec; expected one of: {SPEC_HELP}")
    split = "train"
    body = spec.strip()
    if body.endswith("@test"):
        body, split = body[: -len("@test")], "test"
    kind, _, path = body.partition(":")
    kind = kind.lower()
    if kind == "digits" and not path and split == "train":
        return sources.load_digits_set()
    if kind == "fashion-mnist":
        return sources.load_fashion_mnist_set(path or None, split)
    if kind in ("idx", "mnist") and path:
        return sources.load_idx_set(path, split)
    if kind in ("cifar10", "cifar100", "cifar") and path:
        return sources.load_cifar_set(path, split)
    if kind == "imagefolder" and path:
        return sources.load_imagefolder_set(path)
    if kind == "npz" and path:
        return sources.load_npz_set(path)
    raise ValueError(f"unknown data spec {spec!r}; expected one of: {SPEC_HELP}")
