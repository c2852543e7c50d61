"""``load_pairs(spec)``: the pair source a spec string names.

Forms (options after ``?`` as ``key=value`` joined by ``&``; keyword arguments do the same and must not
contradict the spec):

- ``datacomp:DIR[?embeddings=auto|b32|l14|generic]``: DataComp's metadata layout (``*.parquet`` + ``*.npz``);
- ``wds:PATH[?size=N&mode=L|RGB]``: webdataset tar shards (a .tar, a folder, a glob or ``{000..009}``);
- ``hf:PATH[?image=COL&text=COL&id=COL&size=N&mode=L|RGB]``: a Hugging Face dataset saved to disk, or
  parquet files.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from keepset.data.pairs.base import PairSource

PAIRS_SPEC_HELP = ("datacomp:DIR[?embeddings=auto|b32|l14|generic] | wds:PATH[?size=N&mode=L|RGB] | "
                   "hf:PATH[?image=COL&text=COL&id=COL&size=N&mode=L|RGB]")

# spec option -> constructor keyword, per kind
_OPTIONS = {
    "datacomp": {"embeddings": "embeddings"},
    "wds": {"size": "image_size", "mode": "mode"},
    "hf": {"image": "image_column", "text": "text_column", "id": "id_column", "size": "image_size", "mode": "mode"},
}


def _parse_value(key: str, value: str):
    if key == "size":
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"size must be an integer number of pixels, got {value!r}") from None
    return value


def load_pairs(spec: str, **kwargs) -> PairSource:
    """Open the pair source ``spec`` names; ``kwargs`` go to its constructor (see ``PAIRS_SPEC_HELP``)."""
    from keepset.data.pairs.datacomp import DataCompSource
    from keepset.data.pairs.hf import HFSource
    from keepset.data.pairs.wds import WebDatasetSource

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty pair spec; expected one of: {PAIRS_SPEC_HELP}")
    kind, sep, rest = spec.strip().partition(":")
    kind = kind.lower()
    if not sep or kind not in _OPTIONS or not rest:
        raise ValueError(f"unknown pair spec {spec!r}; expected one of: {PAIRS_SPEC_HELP}")
    path, _, query = rest.partition("?")
    if not path:
        raise ValueError(f"pair spec {spec!r} names no path; expected one of: {PAIRS_SPEC_HELP}")
    options = dict(kwargs)
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ValueError(f"bad options {query!r} in pair spec {spec!r}; write them as key=value&key=value") from None
        for key, value in pairs:
            if key not in _OPTIONS[kind]:
                raise ValueError(f"unknown option {key!r} for {kind}: sources; accepted: {sorted(_OPTIONS[kind])}")
            if not value:
                raise ValueError(f"option {key!r} in pair spec {spec!r} has no value; write {key}=VALUE")
            target = _OPTIONS[kind][key]
            value = _parse_value(key, value)
            if target in options and options[target] != value:
                raise ValueError(f"{key}={value!r} in the spec contradicts the keyword {target}={options[target]!r}")
            options[target] = value
    cls = {"datacomp": DataCompSource, "wds": WebDatasetSource, "hf": HFSource}[kind]
    try:
        return cls(path, **options)
    except TypeError as exc:
        raise ValueError(f"bad options for {kind}: sources: {exc}") from None
