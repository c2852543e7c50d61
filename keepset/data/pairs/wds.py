"""webdataset tar shards: ``{key}.jpg|jpeg|png|webp`` + ``{key}.txt`` (+ ``{key}.json``) per sample.

Read with the standard library's ``tarfile`` in streaming mode (no extraction to disk, no dependency on
the ``webdataset`` package). Members are grouped by key, webdataset's convention: the member path up to
the first dot of its file name (``a/b/000012.seg.png`` -> key ``a/b/000012``, extension ``seg.png``);
consecutive members with one key form a sample. A sample needs an image and a txt; its id is the json's
``uid`` field, else its ``key`` field, else the sample key. Members with an absolute path or ``..``,
links and oversized members are refused; images over 50 megapixels are refused before decoding.
"""

from __future__ import annotations

import glob
import json
import re
import tarfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from keepset.data.pairs.base import PairBatch, PairSource
from keepset.data.pairs.decode import MAX_IMAGE_PIXELS, ImageDecoder
from keepset.data.pairs.ids import IdTracker

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
#: members larger than this are refused (a caption or a web image is far smaller)
MAX_MEMBER_BYTES = 64 << 20
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")
_BRACE_RE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """webdataset's shard notation: ``shards-{000..009}.tar`` -> 10 names (zero padding kept)."""
    m = _BRACE_RE.search(pattern)
    if not m:
        return [pattern]
    lo, hi = int(m.group(1)), int(m.group(2))
    if hi < lo:
        raise ValueError(f"bad shard range {m.group(0)} in {pattern!r}: the end is before the start")
    width = len(m.group(1))
    return [name for i in range(lo, hi + 1)
            for name in expand_braces(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():])]


def resolve_tar_shards(path_or_glob) -> list[Path]:
    """A tar file, a folder of ``*.tar``, a glob or a brace range -> the shard files in sorted order."""
    spec = str(path_or_glob)
    p = Path(spec).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.glob("*.tar*") if f.is_file() and re.search(r"\.tar(\.gz|\.bz2|\.xz)?$", f.name))
        if not files:
            raise ValueError(f"no *.tar shards in {p}; a webdataset folder holds tar files of "
                             "{key}.jpg|png + {key}.txt (+ {key}.json)")
        return files
    if p.is_file():
        return [p]
    names = expand_braces(spec)
    files = []
    for name in names:
        if any(ch in name for ch in "*?["):
            files += sorted(Path(f) for f in glob.glob(str(Path(name).expanduser())) if Path(f).is_file())
        else:
            files.append(Path(name).expanduser())
    if not files:
        raise FileNotFoundError(f"no webdataset shard matches {spec!r}; give a .tar file, a folder of .tar files, "
                                "a glob (dir/*.tar) or a range (dir/{00000..00009}.tar)")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} webdataset shard(s) not found (e.g. {missing[:3]})")
    return files


def _check_member(member: tarfile.TarInfo, shard: str) -> bool:
    """True for a regular file to read, False for a folder to skip; ValueError for anything unsafe."""
    name = member.name
    if name.startswith("/") or name.startswith("\\") or ".." in Path(name).parts or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"shard {shard}: member {name!r} has an absolute path or '..'; refusing the shard")
    if member.isdir():
        return False
    if not member.isfile():
        raise ValueError(f"shard {shard}: member {name!r} is a link or special file; a webdataset shard holds "
                         "regular files only")
    if member.size > MAX_MEMBER_BYTES:
        raise ValueError(f"shard {shard}: member {name!r} is {member.size} bytes, over the {MAX_MEMBER_BYTES}-byte "
                         "limit for one sample file")
    return True


class WebDatasetSource(PairSource):
    """Image-text pairs from webdataset tar shards, one tar per shard.

    Parameters
    ----------
    path : a .tar file, a folder of .tar files, a glob, or a brace range (``dir/{00000..00009}.tar``)
    image_size : None (the first image's size), an int side or (H, W): every image is resized to it
    mode : None (the first image's: "L" for grayscale, else "RGB"), "L" or "RGB"
    decode_images : False to read ids, texts and json fields only (``images`` is then None)
    check_duplicates : refuse an id seen in an earlier shard (8 bytes per pair; see keepset.data.pairs.ids)

    ``iter_shards(columns=[...])`` / ``iter_batches(n, columns=[...])`` read those json fields into
    ``PairBatch.columns``.
    """

    def __init__(self, path, *, image_size=None, mode: str | None = None, decode_images: bool = True,
                 check_duplicates: bool = True, max_pixels: int = MAX_IMAGE_PIXELS):
        files = resolve_tar_shards(path)
        names = [re.sub(r"\.tar(\.gz|\.bz2|\.xz)?$", "", f.name) for f in files]
        if len(set(names)) != len(names):
            names = [str(f) for f in files]
        self._paths = dict(zip(names, files))
        self.shards = names
        self.name = f"wds:{path}"
        self.decode_images = bool(decode_images)
        self.check_duplicates = bool(check_duplicates)
        self.decoder = ImageDecoder(image_size, mode, max_pixels)
        self._image_size, self._mode = image_size, mode

    def _files(self) -> list[Path]:
        return [self._paths[s] for s in self.shards]

    def _options(self) -> dict:
        return {"image_size": self._image_size, "mode": self._mode, "decode_images": self.decode_images}

    def _new_pass(self) -> dict:
        return {"ids": IdTracker(self.name) if self.check_duplicates else None}

    # ------------------------------------------------------------ reading
    def _samples(self, shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
        """(key, {extension: bytes}) for every sample of one shard, streamed."""
        path = self._paths[shard]
        key, parts, seen = None, {}, set()
        try:
            with tarfile.open(path, mode="r|*") as tf:
                for member in tf:
                    if not _check_member(member, shard):
                        continue
                    m = _KEY_RE.match(member.name)
                    if not m:
                        raise ValueError(f"shard {shard}: member {member.name!r} has no extension; webdataset "
                                         "members are named {key}.{ext}")
                    k, ext = m.group(1), m.group(2).lower()
                    if k != key:
                        if key is not None:
                            yield key, parts
                        if k in seen:
                            raise ValueError(f"shard {shard}: sample key {k!r} appears twice, not in consecutive "
                                             "members; a webdataset shard stores each sample's files together")
                        seen.add(k)
                        key, parts = k, {}
                    if ext in parts:
                        raise ValueError(f"shard {shard}: sample {k!r} has two {ext!r} members")
                    fh = tf.extractfile(member)
                    parts[ext] = fh.read() if fh is not None else b""
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ValueError(f"shard {path} is not a readable tar file: {exc}") from None
        if key is not None:
            yield key, parts

    def _read_shard(self, shard: str, columns: Sequence[str] | None, batch_size, state) -> Iterator[PairBatch]:
        columns = list(columns or [])
        ids, texts, images, cols = [], [], [], {c: [] for c in columns}
        tracker = state.get("ids")

        def flush():
            if tracker is not None:
                tracker.add(np.array(ids, dtype=str), shard)
            batch = PairBatch(ids=np.array(ids, dtype=str), texts=list(texts),
                              images=ImageDecoder.stack(images) if self.decode_images else None,
                              columns={c: np.asarray(v) for c, v in cols.items()}, shard=shard)
            ids.clear(), texts.clear(), images.clear()
            for v in cols.values():
                v.clear()
            return batch

        for key, parts in self._samples(shard):
            where = f"{key!r} in shard {shard}"
            image_ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
            if image_ext is None:
                raise ValueError(f"sample {where} has no image ({'/'.join(IMAGE_EXTENSIONS)}); "
                                 f"its members: {sorted(parts)}")
            if "txt" not in parts:
                raise ValueError(f"sample {where} has no txt caption; its members: {sorted(parts)}")
            try:
                text = parts["txt"].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"caption {key}.txt in shard {shard} is not UTF-8: {exc}") from None
            meta = {}
            if "json" in parts:
                try:
                    meta = json.loads(parts["json"].decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise ValueError(f"{key}.json in shard {shard} is not valid JSON: {exc}") from None
                if not isinstance(meta, dict):
                    raise ValueError(f"{key}.json in shard {shard} must hold a JSON object")
            uid = meta.get("uid", meta.get("key", key))
            if not isinstance(uid, (str, int)) or isinstance(uid, bool) or str(uid) == "":
                raise ValueError(f"sample {where}: its json uid/key must be a non-empty string or int, got {uid!r}")
            for c in columns:
                if c not in meta:
                    raise ValueError(f"sample {where} has no json field {c!r} (found {sorted(meta)})")
                cols[c].append(meta[c])
            ids.append(str(uid))
            texts.append(text)
            if self.decode_images:
                images.append(self.decoder.decode(parts[image_ext], f"{key}.{image_ext} in shard {shard}"))
            if batch_size is not None and len(ids) >= batch_size:
                yield flush()
        if ids:
            yield flush()
