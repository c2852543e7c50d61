"""``keepset filter`` on image-text pairs: Grad-Mimic by contrastive probing, streamed shard by shard.

Contrastive probing is the image-text analogue of linear probing: the image and text encoders are frozen
(their embeddings precomputed, as DataComp ships them, or computed per shard by keepset's encoders) and
only two projections into a shared space train (``keepset.models.TwoTowerProbe``, CLIP's loss
``keepset.losses.clip_loss``).

1. The trusted pairs (uids naming clean pairs inside the pool, a separate trusted pool, or none when a
   reference checkpoint is given) are split, seeded at random (pairs have no classes to stratify by), into
   the reference's part and a held-out part (``holdout``) that no probe ever trains on.
2. A probe drawn from ``seed`` is the shared initialisation. The reference is a copy trained on the
   reference's part (AdamW). The model is another copy trained on the pool's pairs with
   ``GradMimic(reference, loss_fn=clip_loss)``: the contrastive loss has a rotation symmetry (any rotation
   of the shared space gives the same loss), so two probes from different initialisations land in
   different rotations and ``theta_ref - theta`` would mean nothing; from one initialisation they stay in
   one frame. Every pair's Mimic Score is recorded by uid at every step; the batches come from the pool's
   shards, shuffled inside a bounded buffer with the seed (``keepset.data.pair_stream``).
3. Stage 2 turns the recording into one keep decision per uid (``stage2_filter``).
4. Quality: Stage 2's estimate (the fraction kept) and an independent check from the reference's clip
   scores: the share of pool pairs scoring at least the 5th percentile of the held-out trusted pairs'
   scores, divided by 0.95 (``keepset.scoring.pairs.quality_above_clean_quantile``).
5. Per pair (``scores.parquet``): the caption, the Mimic Score aggregates, ``clip_score`` (the reference's
   cosine of the pair's projected image and caption: keepset's analogue of DataComp's CLIP score, since
   the pool's embeddings need not be CLIP's), ``sas`` (the same cosine under a third copy of the probe
   trained on the pool's own pairs without any trusted data: the CLIP-powered method's Semantic Alignment
   Score with each pair's own caption), DataComp's ``clip_b32_similarity_score`` /
   ``clip_l14_similarity_score`` when the pool ships them, and ``keep``.

Memory: one shard (or one read chunk) of embeddings, the shuffle buffer, the trusted pairs, and per pair its
uid and a few floats; never the pool's embeddings. ``filter_pairs`` computes (the Python API);
``run_filter_pairs`` validates everything, then writes the run folder into a temporary folder that replaces
``--out`` whole at the end.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from keepset.data.pair_stream import PairChunk, SpilledChunks, embedded_chunks, shuffled_batches
from keepset.data.pairs import SCORE_COLUMNS, PairSource, load_pairs
from keepset.io import atomic_dir, check_output_dir, read_keep_list, write_keep_list, write_manifest
from keepset.io import write_text_atomic
from keepset.io.atomic import json_default
from keepset.io.tables import ScoreTableWriter
from keepset.losses import clip_loss
from keepset.models import TwoTowerProbe, load_checkpoint, model_fingerprint, save_checkpoint
from keepset.recorder import DynamicsRecorder, per_sample
from keepset.scoring.pairs import pair_cosines, quality_above_clean_quantile
from keepset.selection.binarize import BINARIZE_METHODS
from keepset.selection.stage2 import VOTES, estimate_quality, stage2_filter
from keepset.training import GradMimic
from keepset.training.gradmimic import RECORD_FIELDS
from keepset.workflows.filter import QUALITY_CHECK_TOLERANCE, check_device

#: the held-out trusted pairs' clip-score percentile behind the quality check
CHECK_PERCENTILE = 5.0
#: pairs read from a source at a time (the bound on embeddings held besides the shuffle buffer)
READ_CHUNK = 4096


@dataclass
class PairFilterOptions:
    """The knobs of the pair filter (the pair flags of ``keepset filter``)."""

    dim: int = 64                    # size of the shared space of the two-tower probe
    text_hidden: tuple = ()          # widths of an MLP on the text side before its projection
    layers: str | list | None = None  # scored parameters (None: both projections' weights)
    holdout: float = 0.2             # fraction of the trusted pairs held out (never trained on)
    reference_epochs: int = 0        # 0: chosen from the number of trusted pairs
    epochs: int = 5                  # epochs of Grad-Mimic training over the pool
    batch_size: int = 256            # pairs per contrastive batch (the softmax's negatives)
    lr: float = 1e-3                 # AdamW step of the model, the SAS probe and the reference
    method: str = "proj"             # Mimic Score behind the weights: proj | cos
    temperature: float = 1.0
    binarize: str = "threshold"      # Stage 2's per-step rule
    vote: str = "majority"
    shuffle_buffer: int = 16384      # rows shuffled together (memory: this many pairs' embeddings)
    sas: bool = True                 # train the pool-fitted probe behind the `sas` column
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def validate(self, flags: bool = False) -> "PairFilterOptions":
        """Check every option before any work; a one-line ValueError names the first bad one.

        flags : name the options by their command-line flags (``--batch-size``) rather than their field names.
        """
        from keepset._options import (
            check_choice, check_device_option, check_fraction, check_int, check_positive, namer,
        )

        name = namer(flags)
        for field_ in ("dim", "epochs", "batch_size", "shuffle_buffer"):
            check_int(getattr(self, field_), name(field_), 1)
        if self.batch_size < 2:
            raise ValueError(f"{name('batch_size')} must be >= 2: a contrastive batch needs negatives, got "
                             f"{self.batch_size}")
        if self.shuffle_buffer < self.batch_size:
            raise ValueError(f"{name('shuffle_buffer')} ({self.shuffle_buffer}) must hold at least one batch "
                             f"({self.batch_size})")
        try:
            self.text_hidden = tuple(int(h) for h in self.text_hidden)
        except (TypeError, ValueError):
            raise ValueError(f"{name('text_hidden')} must be a list of positive widths, got "
                             f"{self.text_hidden!r}") from None
        if any(h < 1 for h in self.text_hidden):
            raise ValueError(f"{name('text_hidden')} widths must be positive, got {self.text_hidden}")
        check_fraction(self.holdout, name("holdout"))
        check_int(self.reference_epochs, name("reference_epochs"), 0, " (0: automatic)")
        check_positive(self.lr, name("lr"))
        if self.method not in ("proj", "cos"):
            raise ValueError(f"{name('method')} must be 'proj' or 'cos', got {self.method!r}")
        check_positive(self.temperature, name("temperature"))
        check_choice(self.binarize, name("binarize"), BINARIZE_METHODS)
        check_choice(self.vote, name("vote"), VOTES)
        check_int(self.seed, name("seed"), 0)
        check_device_option(self.device, name("device"), flags)
        return self


@dataclass
class PairFilterResult:
    """What ``filter_pairs`` computed; every array is aligned with ``ids`` (the filtered pairs, pool order)."""

    ids: np.ndarray                  # [N] uids of the filtered pairs (the trusted ones excluded)
    keep: np.ndarray                 # [N] bool: Stage 2's decision
    columns: dict                    # {name: float [N]}: mimic_*, clip_score, sas, DataComp's score columns
    quality: dict                    # estimated, clip_check, reference_holdout_recall_at_1, ...
    reference: nn.Module             # the probe trained on the trusted pairs (or loaded)
    model: nn.Module                 # the probe trained on the pool with Grad-Mimic
    init: nn.Module                  # their shared initial weights
    sas_probe: nn.Module | None      # the probe fitted to the pool's own pairs (the `sas` column)
    trusted_ids: np.ndarray          # ids of the trusted pairs (the reference's part and the held-out part)
    holdout_ids: np.ndarray
    steps: int                       # Grad-Mimic steps taken
    history: list                    # per epoch: mean training loss of the model (and the SAS probe)
    detection: dict | None = None    # against a given truth (evaluation only)
    warnings: list = field(default_factory=list)


# ---------------------------------------------------------------- small pieces

def probe_batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A seeded permutation of ``range(n)`` cut into near-equal batches of at most ``batch_size`` (none of one
    pair when n >= 2)."""
    perm = torch.randperm(n, generator=gen)
    parts = max(1, -(-n // batch_size))
    return [p for p in torch.tensor_split(perm, parts) if len(p)]


def train_probe(probe: nn.Module, image_emb: np.ndarray, text_emb: np.ndarray, *, epochs: int, batch_size: int,
                lr: float, weight_decay: float, seed: int, device, progress: bool = False,
                desc: str = "probe") -> list[float]:
    """Train ``probe`` in place on in-memory pairs [n, d] with CLIP's loss (AdamW, seeded batches).
    Returns the mean loss of every epoch."""
    from keepset._progress import progress_bar

    n = len(image_emb)
    if n < 2:
        raise ValueError(f"{desc} needs at least 2 pairs to train (a contrastive batch needs negatives), got {n}")
    probe.to(device).train()
    img = torch.from_numpy(np.asarray(image_emb, np.float32))
    txt = torch.from_numpy(np.asarray(text_emb, np.float32))
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    losses = []
    with progress_bar(total=epochs, desc=desc, enabled=progress) as bar:
        for _ in range(epochs):
            total = 0.0
            for idx in probe_batches(n, batch_size, gen):
                loss = clip_loss(probe(img[idx].to(device), txt[idx].to(device))).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / n)
            bar.update(1)
    probe.eval()
    return losses


def initial_probe(d_img: int, d_txt: int, opt: PairFilterOptions) -> TwoTowerProbe:
    """The shared initialisation: a TwoTowerProbe drawn from ``opt.seed``."""
    torch.manual_seed(opt.seed)
    return TwoTowerProbe(d_img, d_txt, opt.dim, text_hidden=opt.text_hidden)


def init_of_reference(reference: nn.Module, extra: dict, path: str = "the reference") -> nn.Module:
    """The initial weights a reference checkpoint was trained from (rebuilt from the seed recorded in it and
    checked against the recorded fingerprint); ValueError when the checkpoint does not record them."""
    from keepset.models import build_model

    if not isinstance(reference, TwoTowerProbe):
        raise ValueError(f"{path} is a {type(reference).__name__}; the pair filter needs a TwoTowerProbe "
                         "checkpoint (the reference.safetensors of a keepset filter run on pairs)")
    if "init_seed" not in extra or "init_fingerprint" not in extra:
        raise ValueError(f"{path} does not record the initial weights it was trained from (init_seed); the model "
                         "must start from them to share the reference's frame: use the reference.safetensors "
                         "written by keepset filter on pairs, or give trusted pairs instead")
    torch.manual_seed(int(extra["init_seed"]))
    init = build_model(reference.config)
    if model_fingerprint(init) != extra["init_fingerprint"]:
        raise ValueError(f"the initial weights rebuilt from {path}'s init_seed differ from those it was trained "
                         "from (another torch version draws other weights); give trusted pairs instead")
    return init


def check_probe_fits(probe: nn.Module, d_img: int, d_txt: int, what: str) -> None:
    """A one-line ValueError when a pool's embedding sizes are not the probe's input sizes."""
    cfg = probe.config
    if (cfg["d_img"], cfg["d_txt"]) != (d_img, d_txt):
        raise ValueError(f"{what} takes image / text embeddings of sizes {cfg['d_img']} / {cfg['d_txt']} but the "
                         f"pool's are {d_img} / {d_txt}")


def read_pair_truth(path: str | Path) -> dict:
    """Evaluation truth of a pool: {"ids", "corrupted" bool, "kind" str} from a parquet with ``uid`` (or ``id``)
    and ``corruption`` ('' for clean, else the kind; ``keepset make-pool``'s truth.parquet) or ``corrupted``
    (bool). Never an input to any decision."""
    import pyarrow.parquet as pq

    from keepset._ids import check_ids

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"truth file not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable parquet file: {str(exc).splitlines()[0]}") from None
    names = table.column_names
    id_col = "uid" if "uid" in names else "id" if "id" in names else None
    if id_col is None:
        raise ValueError(f"{path} has no `uid` (or `id`) column; found {names}")
    ids = check_ids(table.column(id_col).to_numpy(zero_copy_only=False), f"ids of {path.name}")
    if "corruption" in names:
        kind = np.asarray(table.column("corruption").to_pylist(), dtype=object)
        if any(k is None for k in kind.tolist()):
            raise ValueError(f"{path}: the corruption column has missing values ('' means clean)")
        kind = kind.astype(str)
        corrupted = kind != ""
    elif "corrupted" in names:
        corrupted = table.column("corrupted").to_numpy(zero_copy_only=False)
        if corrupted.dtype != np.bool_:
            raise ValueError(f"{path}: the corrupted column must be boolean, got {corrupted.dtype}")
        kind = np.where(corrupted, "corrupted", "")
    else:
        raise ValueError(f"{path} has neither a `corruption` (str) nor a `corrupted` (bool) column; found {names}")
    return {"ids": ids, "corrupted": corrupted, "kind": kind, "path": str(path)}


def _truth_positions(truth: dict, pool_ids: np.ndarray) -> np.ndarray:
    """Positions in the truth of every pool id; ValueError unless the truth describes exactly this pool."""
    from keepset._ids import check_same_ids

    return check_same_ids(pool_ids, truth["ids"], a_name="the pool", b_name=f"the truth file {truth.get('path', '')}")


# ---------------------------------------------------------------- the passes

class _Scan:
    """What one pass over the pool learns: every id (pool order), the embedding sizes, the trusted pairs'
    embeddings, which DataComp score columns the shards ship."""

    def __init__(self):
        self.ids: list[np.ndarray] = []
        self.d_img = self.d_txt = None
        self.trusted: list[PairChunk] = []
        self.score_columns: set[str] | None = None


def _scan(chunks, trusted_ids: np.ndarray | None) -> _Scan:
    scan = _Scan()
    for chunk in chunks:
        if not len(chunk):
            continue
        d = (chunk.image_emb.shape[1], chunk.text_emb.shape[1])
        if scan.d_img is None:
            scan.d_img, scan.d_txt = d
        elif d != (scan.d_img, scan.d_txt):
            raise ValueError(f"shard {chunk.shard}: embeddings of sizes {d} but earlier shards had "
                             f"{(scan.d_img, scan.d_txt)}")
        if not (np.isfinite(chunk.image_emb).all() and np.isfinite(chunk.text_emb).all()):
            raise ValueError(f"shard {chunk.shard}: embeddings hold NaN or inf values; recompute them")
        scan.ids.append(chunk.ids)
        present = {c for c in chunk.columns if c in SCORE_COLUMNS}
        scan.score_columns = present if scan.score_columns is None else scan.score_columns & present
        if trusted_ids is not None:
            inside = np.isin(chunk.ids, trusted_ids)
            if inside.any():
                scan.trusted.append(chunk.take(inside))
    return scan


def _pool_chunks(read, exclude: np.ndarray, *, texts: bool = False):
    """The pool's chunks (``read(texts)``) without the pairs in ``exclude`` (the trusted ones)."""
    for chunk in read(texts):
        if len(exclude):
            chunk = chunk.take(~np.isin(chunk.ids, exclude))
        if len(chunk):
            yield chunk


def _split_trusted(ids: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the reference's part, the held-out part) of the trusted ids: a seeded random split of the sorted ids."""
    ids = np.sort(ids)
    n_hold = int(round(holdout * len(ids)))
    if holdout > 0 and (n_hold < 2 or len(ids) - n_hold < 2):
        raise ValueError(f"{len(ids)} trusted pairs cannot be split into a reference part and a held-out part of "
                         f"at least 2 pairs each (holdout {holdout:g}); give more trusted pairs or holdout 0")
    perm = np.random.default_rng([int(seed), 7]).permutation(len(ids))
    return ids[np.sort(perm[n_hold:])], ids[np.sort(perm[:n_hold])]


def _gather(chunks: Sequence[PairChunk], ids: np.ndarray) -> PairChunk:
    """The rows of ``chunks`` whose ids are in ``ids``, in the order of ``ids``."""
    from keepset._ids import align

    all_ids = np.concatenate([c.ids for c in chunks])
    pos = align(ids, all_ids, what="trusted ids", source="the trusted pairs")
    img = np.concatenate([c.image_emb for c in chunks])[pos]
    txt = np.concatenate([c.text_emb for c in chunks])[pos]
    return PairChunk(ids, img, txt)


def filter_pairs(source: PairSource, trusted=None, *, reference: nn.Module | None = None,
                 reference_extra: dict | None = None, options: PairFilterOptions | None = None,
                 dynamics_dir: str | Path | None = None, scores_path: str | Path | None = None,
                 embed=None, spill_dir: str | Path | None = None, truth: dict | None = None,
                 table_metadata: dict | None = None, log=print) -> PairFilterResult:
    """Grad-Mimic Stage 1 + 2 over the pairs of ``source`` by contrastive probing (module docstring).

    source : a ``PairSource`` (``keepset.data.pairs.load_pairs("datacomp:DIR")``).
    trusted : ids [M] of clean pairs inside ``source`` (they train the reference and are not filtered), a
        separate ``PairSource`` of clean pairs, or None with ``reference``.
    reference : a trained ``TwoTowerProbe``; ``reference_extra`` must then record its initial weights
        (``init_seed``, ``init_fingerprint``: the checkpoint extra ``keepset filter`` writes). With trusted pairs
        too, every trusted pair is held out to check it.
    dynamics_dir : where the recorded scores go (None: in memory). scores_path : also write the per-pair table
        (caption and every column, streamed shard by shard) there.
    embed : ``embed(PairBatch) -> (image_emb, text_emb)`` for sources that ship pixels
        (``keepset.encoders.pairs.PairEmbedder``); None: the shards' own embeddings. With ``embed``, the first
        pass writes the embedded chunks to a temporary folder under ``spill_dir`` (default: the system's temporary
        folder), removed at the end, which every later pass reads (the images are decoded once).
    truth : ``read_pair_truth(path)`` for evaluation only: it must describe exactly this pool; the result's
        ``detection`` compares the filter with it. No decision reads it.
    """
    import contextlib

    with contextlib.ExitStack() as stack:
        return _filter_pairs(source, trusted, reference, reference_extra, options, dynamics_dir, scores_path, embed,
                             spill_dir, truth, table_metadata, log, stack)


def _filter_pairs(source, trusted, reference, reference_extra, options, dynamics_dir, scores_path, embed, spill_dir,
                  truth, table_metadata, log, _stack) -> PairFilterResult:
    opt = (options or PairFilterOptions()).validate()
    device = check_device(opt.device)
    if trusted is None and reference is None:
        raise ValueError("give trusted pairs (--trusted-ids FILE or --trusted SPEC) or a reference checkpoint "
                         "(--reference CKPT): Grad-Mimic needs a reference trained on clean pairs")
    trusted_source = trusted if isinstance(trusted, PairSource) else None
    trusted_ids = None
    if trusted is not None and trusted_source is None:
        from keepset._ids import check_ids

        trusted_ids = check_ids(trusted, "trusted ids")
        if not len(trusted_ids):
            raise ValueError("the trusted id list is empty")
    init = None
    if reference is not None:
        init = init_of_reference(reference, reference_extra or {})
        reference = copy.deepcopy(reference)  # frozen and moved below: leave the caller's module as it was

    # pass 1: ids, sizes, trusted pairs; every check before any training. A pool whose embeddings are
    # computed here is spilled to a local folder once, and every later pass reads that.
    spill = None
    if embed is not None:
        import tempfile

        spill = SpilledChunks(_stack.enter_context(tempfile.TemporaryDirectory(prefix=".keepset-pairs-",
                                                                               dir=spill_dir)))
        read = lambda texts=False: spill.chunks(texts)  # noqa: E731
        scan = _scan(spill.spill(embedded_chunks(source, READ_CHUNK, embed, texts=True)), trusted_ids)
    else:
        read = lambda texts=False: embedded_chunks(source, READ_CHUNK, None, texts=texts)  # noqa: E731
        scan = _scan(read(), trusted_ids)
    if not scan.ids:
        raise ValueError(f"{source.name} holds no pairs")
    pool_ids = np.concatenate(scan.ids)
    if trusted_ids is not None:
        if pool_ids.dtype.kind != trusted_ids.dtype.kind:
            raise ValueError(f"the trusted ids are {trusted_ids.dtype} but the pool's ids are {pool_ids.dtype}; they "
                             "cannot name the same pairs")
        found = np.isin(trusted_ids, pool_ids)
        if not found.all():
            missing = trusted_ids[~found]
            raise ValueError(f"{len(missing)} of {len(trusted_ids)} trusted ids are not in the pool (e.g. "
                             f"{missing[:3].tolist()}); the trusted ids must name pairs of --data")
    trusted_pairs = None
    if trusted_source is not None:
        trusted_pairs = [c for c in embedded_chunks(trusted_source, READ_CHUNK, embed) if len(c)]
        if not trusted_pairs:
            raise ValueError(f"the trusted pool {trusted_source.name} holds no pairs")
        t_dims = (trusted_pairs[0].image_emb.shape[1], trusted_pairs[0].text_emb.shape[1])
        if t_dims != (scan.d_img, scan.d_txt):
            raise ValueError(f"the trusted pairs' embeddings have sizes {t_dims} but the pool's "
                             f"{(scan.d_img, scan.d_txt)}")
        from keepset._ids import check_ids

        t_ids = check_ids(np.concatenate([c.ids for c in trusted_pairs]), "ids of the trusted pool")
        if t_ids.dtype.kind == pool_ids.dtype.kind and np.isin(t_ids, pool_ids).any():
            raise ValueError(f"{int(np.isin(t_ids, pool_ids).sum())} trusted pairs are also in the pool to filter; "
                             "trusted pairs must be kept out of it (or name them with --trusted-ids)")
        trusted_ids = t_ids
    elif trusted_ids is not None:
        trusted_pairs = scan.trusted
    exclude = trusted_ids if (trusted_ids is not None and trusted_source is None) else np.zeros(0, pool_ids.dtype)
    filtered_ids = pool_ids[~np.isin(pool_ids, exclude)] if len(exclude) else pool_ids
    if len(filtered_ids) < 2:
        raise ValueError(f"only {len(filtered_ids)} pairs are left to filter once the trusted ones are set aside; "
                         "the filter needs at least 2")
    if reference is not None:
        check_probe_fits(reference, scan.d_img, scan.d_txt, "the reference")
    truth_pos = _truth_positions(truth, pool_ids) if truth is not None else None
    del scan.ids

    # the reference and the shared initialisation
    warnings: list[str] = []
    if reference is None:
        ref_ids, holdout_ids = _split_trusted(trusted_ids, opt.holdout, opt.seed)
        ref_part = _gather(trusted_pairs, ref_ids)
        init = initial_probe(scan.d_img, scan.d_txt, opt)
        reference = copy.deepcopy(init)
        epochs = opt.reference_epochs or int(np.clip(30000 // max(len(ref_ids), 1), 10, 200))
        log(f"reference: two-tower probe (dim {opt.dim}) on {len(ref_ids)} trusted pairs, {epochs} epochs"
            + (f"; {len(holdout_ids)} held out" if len(holdout_ids) else ""))
        train_probe(reference, ref_part.image_emb, ref_part.text_emb, epochs=epochs,
                    batch_size=min(opt.batch_size, 128), lr=opt.lr, weight_decay=1e-4, seed=opt.seed, device=device,
                    progress=opt.progress, desc="reference (trusted pairs)")
        del ref_part
    else:
        holdout_ids = np.sort(trusted_ids) if trusted_ids is not None else np.zeros(0, pool_ids.dtype)
        reference = reference.to(device).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    held = _gather(trusted_pairs, holdout_ids) if len(holdout_ids) else None
    del trusted_pairs, scan.trusted

    # Stage 1: Grad-Mimic over the pool's pairs, recorded by id (and the SAS probe on the same batches)
    model = copy.deepcopy(init).to(device).train()
    sas_probe = copy.deepcopy(init).to(device).train() if opt.sas else None
    recorder = DynamicsRecorder(dynamics_dir, RECORD_FIELDS)
    gm = GradMimic(reference, layers=opt.layers, method=opt.method, temperature=opt.temperature,
                   record_to=recorder, loss_fn=clip_loss)
    opt_model = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opt.lr, weight_decay=0.0)
    opt_sas = torch.optim.AdamW(sas_probe.parameters(), lr=opt.lr, weight_decay=0.0) if sas_probe is not None else None
    from keepset._progress import progress_bar

    n_f = len(filtered_ids)
    steps_per_epoch = max(1, n_f // opt.batch_size)
    log(f"Grad-Mimic: {n_f} pairs, {opt.epochs} epochs of batches of {opt.batch_size} (shuffled in a buffer of "
        f"{opt.shuffle_buffer})")
    history, steps = [], 0
    bar = progress_bar(total=opt.epochs * steps_per_epoch, desc="Grad-Mimic model", enabled=opt.progress)
    try:
        for epoch in range(opt.epochs):
            tot, tot_sas, seen = 0.0, 0.0, 0
            for batch in shuffled_batches(_pool_chunks(read, exclude), opt.batch_size,
                                          buffer=opt.shuffle_buffer, seed=[opt.seed, 1000 + epoch]):
                img = torch.from_numpy(batch.image_emb).to(device)
                txt = torch.from_numpy(batch.text_emb).to(device)
                loss = gm.loss(model, (img, txt), None, batch.ids, epoch=epoch)
                opt_model.zero_grad(set_to_none=True)
                loss.backward()
                opt_model.step()
                tot += float(gm.last_batch.losses.sum())
                if sas_probe is not None:
                    l2 = clip_loss(sas_probe(img, txt)).mean()
                    opt_sas.zero_grad(set_to_none=True)
                    l2.backward()
                    opt_sas.step()
                    tot_sas += float(l2.detach()) * len(batch)
                seen += len(batch)
                steps += 1
                bar.update(1)
            if seen != n_f:
                raise ValueError(f"epoch {epoch} read {seen} pairs but the first pass counted {n_f}: the pool changed "
                                 "while it was being filtered")
            history.append({"epoch": epoch, "loss": tot / n_f, **({"sas_loss": tot_sas / n_f} if sas_probe else {})})
            bar.set_postfix(loss=f"{tot / n_f:.3f}")
    finally:
        bar.close()
        gm.close()
    model.eval()
    if sas_probe is not None:
        sas_probe.eval()

    # Stage 2 and the aggregates, by id
    keep = stage2_filter(recorder, binarize=opt.binarize, vote=opt.vote, ids=filtered_ids)
    columns = {
        "mimic_mean": per_sample(recorder, "mimic", "mean", ids=filtered_ids).astype(np.float32),
        "mimic_last": per_sample(recorder, "mimic", "last", ids=filtered_ids).astype(np.float32),
        "mimic_normed_mean": per_sample(recorder, "mimic_normed", "mean", ids=filtered_ids).astype(np.float32),
    }

    # final pass: clip score and SAS per pair (and the table, streamed)
    clip_score = np.zeros(n_f, np.float32)
    sas = np.zeros(n_f, np.float32) if sas_probe is not None else None
    extra = {c: np.full(n_f, np.nan, np.float32) for c in sorted(scan.score_columns or ())}
    writer = None
    if scores_path is not None:
        writer = ScoreTableWriter(scores_path, metadata={"method": "keepset-filter-pairs", **(table_metadata or {}),
                                                         "clip_score": "cosine of the reference probe's projected "
                                                         "image and caption", "sas": "cosine under a probe fitted to "
                                                         "the pool's own pairs (no trusted data)"})
    try:
        offset = 0
        for chunk in _pool_chunks(read, exclude, texts=True):
            rows = slice(offset, offset + len(chunk))
            if not np.array_equal(chunk.ids, filtered_ids[rows]):
                raise ValueError(f"shard {chunk.shard} gave other ids than in the first pass: the pool changed while "
                                 "it was being filtered")
            clip_score[rows] = pair_cosines(reference, chunk.image_emb, chunk.text_emb)
            if sas is not None:
                sas[rows] = pair_cosines(sas_probe, chunk.image_emb, chunk.text_emb)
            for c in extra:
                extra[c][rows] = np.asarray(chunk.columns[c], dtype=np.float32)
            if writer is not None:
                cols = {"caption": chunk.texts if chunk.texts is not None else [""] * len(chunk),
                        **{k: v[rows] for k, v in columns.items()}, "clip_score": clip_score[rows]}
                if sas is not None:
                    cols["sas"] = sas[rows]
                cols.update({c: extra[c][rows] for c in extra})
                cols["keep"] = keep[rows]
                writer.write(chunk.ids, cols)
            offset += len(chunk)
        if offset != n_f:
            raise ValueError(f"the final pass read {offset} pairs but the first counted {n_f}: the pool changed while "
                             "it was being filtered")
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    columns["clip_score"] = clip_score
    if sas is not None:
        columns["sas"] = sas
    columns.update(extra)

    # quality: Stage 2's estimate and the independent check on the held-out trusted pairs
    quality = {"estimated": estimate_quality(keep), "clip_check": None, "clip_check_threshold": None,
               "reference_holdout_recall_at_1": None, "n_holdout": int(len(holdout_ids))}
    if held is not None and len(held):
        held_scores = pair_cosines(reference, held.image_emb, held.text_emb)
        check = quality_above_clean_quantile(clip_score, held_scores, CHECK_PERCENTILE)
        quality["clip_check"] = check["estimate"]
        quality["clip_check_threshold"] = check["threshold"]
        from keepset.evaluation.pairs import recall_at_k

        quality["reference_holdout_recall_at_1"] = recall_at_k(reference, held.image_emb, held.text_emb, 1)
        if len(held) < 100 / CHECK_PERCENTILE:
            warnings.append(f"only {len(held)} held-out trusted pairs: the {CHECK_PERCENTILE:g}th percentile of their "
                            "scores, and the quality check built on it, are rough")
        if abs(quality["clip_check"] - quality["estimated"]) > QUALITY_CHECK_TOLERANCE:
            warnings.append(f"Stage 2 estimates quality {quality['estimated']:.3f} but the reference's clip scores "
                            f"against the held-out trusted pairs imply {quality['clip_check']:.3f}: check the "
                            "flagged fraction before relying on it")
    else:
        warnings.append("no held-out trusted pairs: the quality estimate is not checked (give --trusted-ids or "
                        "--trusted with the reference)")

    detection = None
    if truth is not None:
        detection = pair_detection(truth, truth_pos, pool_ids, filtered_ids, keep, columns)
    return PairFilterResult(filtered_ids, keep, columns, quality, reference.cpu(), model.cpu(), init.cpu(),
                            None if sas_probe is None else sas_probe.cpu(),
                            np.sort(trusted_ids) if trusted_ids is not None else np.zeros(0, pool_ids.dtype),
                            holdout_ids, steps, history, detection, warnings)


def pair_detection(truth: dict, truth_pos: np.ndarray, pool_ids: np.ndarray, filtered_ids: np.ndarray,
                   keep: np.ndarray, columns: dict) -> dict:
    """Stage 2's flags and every score against the recorded corruption of the filtered pairs (evaluation)."""
    from keepset._ids import align
    from keepset.evaluation import auroc, detection_metrics

    pos = truth_pos[align(filtered_ids, pool_ids, what="filtered ids", source="the pool")]
    corrupted, kind = truth["corrupted"][pos], truth["kind"][pos]
    out = {"stage2": detection_metrics(corrupted, ~keep)}
    out["auroc"] = {c: auroc(corrupted, -columns[c].astype(np.float64))
                    for c in ("mimic_mean", "mimic_normed_mean", "clip_score", "sas") if c in columns}
    out["recall_by_kind"] = {str(k): float((~keep[kind == k]).mean()) for k in np.unique(kind) if k != ""}
    out["kept_clean_fraction"] = float(keep[~corrupted].mean()) if (~corrupted).any() else None
    out["true_quality"] = float(1 - corrupted.mean())
    return out


# ---------------------------------------------------------------- the command

@dataclass
class PairFilterConfig:
    """``keepset filter``'s command line for a pair pool."""

    data: str
    trusted: str | None = None        # spec of a separate trusted pair pool
    trusted_ids: str | None = None    # .npy of uids inside --data naming clean pairs
    reference: str | None = None      # a TwoTowerProbe checkpoint (a pair run's reference.safetensors)
    truth: str | None = None          # evaluation only: a truth parquet (make-pool's truth.parquet)
    image_encoder: str | None = None  # for pools of images (wds:, hf:): network:CKPT | clip:PATH
    text_encoder: str | None = None   # default MiniLM
    cache_dir: str | None = None      # embedding cache of those encoders
    out: str = "out/filter-pairs"
    overwrite: bool = False
    options: PairFilterOptions = field(default_factory=PairFilterOptions)

    def validate(self, flags: bool = False) -> "PairFilterConfig":
        """Check the options, the reference sources and the flags a given reference makes meaningless, before any
        work (``flags``: name them by their command-line flags). The files are read by ``load_pair_inputs``."""
        def name(field_: str) -> str:
            return "--" + field_.replace("_", "-") if flags else field_

        self.options.validate(flags)
        if self.trusted and self.trusted_ids:
            raise ValueError(f"give either {name('trusted')} SPEC or {name('trusted_ids')} FILE, not both")
        if not (self.trusted or self.trusted_ids or self.reference):
            raise ValueError(f"give {name('trusted_ids')} FILE, {name('trusted')} SPEC or {name('reference')} CKPT: "
                             "Grad-Mimic needs a reference trained on clean pairs")
        if self.reference:
            defaults = PairFilterOptions()
            for field_ in ("reference_epochs", "holdout", "dim", "text_hidden"):
                if getattr(self.options, field_) != getattr(defaults, field_):
                    raise ValueError(f"{name(field_)} shapes the reference trained on trusted pairs; with "
                                     f"{name('reference')} the given reference is used as it is (every trusted "
                                     f"pair checks it): drop {name(field_)}")
        return self


def load_pair_inputs(cfg: PairFilterConfig):
    """(source, trusted ids | trusted source | None, reference | None, its extra, truth | None, embed | None),
    validated before any work."""
    reference, extra = (load_checkpoint(cfg.reference) if cfg.reference else (None, {}))
    if reference is not None:
        init_of_reference(reference, extra, cfg.reference)
    truth = read_pair_truth(cfg.truth) if cfg.truth else None
    trusted = read_keep_list(cfg.trusted_ids) if cfg.trusted_ids else None
    if trusted is not None and trusted.dtype == np.dtype("u8,u8"):  # a DataComp subset file: its uids
        from keepset.io import datacomp_to_uids

        trusted = datacomp_to_uids(trusted)
    if trusted is not None and trusted.dtype.kind not in "iuU":
        raise ValueError(f"{cfg.trusted_ids} must hold pair ids (strings or integers, or DataComp's u8,u8 uid "
                         f"pairs), got dtype {trusted.dtype}")
    source, embed = open_pair_pool(cfg.data, cfg.image_encoder, cfg.text_encoder, cfg.cache_dir,
                                   progress=cfg.options.progress)
    if cfg.trusted:
        trusted = load_pairs(cfg.trusted)
    return source, trusted, reference, extra, truth, embed


def open_pair_pool(spec: str, image_encoder: str | None = None, text_encoder: str | None = None,
                   cache_dir: str | None = None, *, progress: bool = True, check_duplicates: bool = True):
    """(the pool ``spec`` names, its embedder or None), refused before any work when the pool cannot be embedded:
    a DataComp pool ships its embeddings (every shard needs its .npz; no encoders apply), a pool of images (wds:,
    hf:) is embedded with the given encoders. ``check_duplicates`` (DataComp): read every uid column once to refuse
    duplicates across the pool (a worker handed single shards of a checked pool skips it)."""
    kind = spec.strip().partition(":")[0].lower()
    source = load_pairs(spec, **({"check_duplicates": check_duplicates} if kind == "datacomp" else {}))
    missing = getattr(source, "shards_without_embeddings", None)
    if getattr(source, "embeddings", "") is None or missing:
        raise ValueError(f"{spec}: shard(s) {(missing or source.shards)[:3]} have no .npz embeddings beside their "
                         ".parquet; a DataComp pool is filtered on its image / text embeddings (keepset downloads no "
                         "images): add the npz files, or give the images as a wds: pool with --image-encoder")
    if hasattr(source, "embeddings"):  # a DataComp pool: it ships its embeddings
        given = [f for f, v in (("--image-encoder", image_encoder), ("--text-encoder", text_encoder)) if v]
        if given:
            raise ValueError(f"{spec} ships its own embeddings; {', '.join(given)} applies only to pools of "
                             "images (wds:, hf:)")
        return source, None
    from keepset.encoders import default_cache_dir
    from keepset.encoders.pairs import PairEmbedder, load_pair_encoders

    image, text = load_pair_encoders(image_encoder, text_encoder, progress=progress)
    return source, PairEmbedder(image, text, cache_dir if cache_dir else default_cache_dir())


def run_filter_pairs(cfg: PairFilterConfig, log=print) -> dict:
    """Validate, filter, and write the run folder ``cfg.out`` (whole, atomically). Returns the summary."""
    t0 = time.perf_counter()
    opt = cfg.validate().options
    check_output_dir(cfg.out, cfg.overwrite)  # before any work
    source, trusted, reference, extra, truth, embed = load_pair_inputs(cfg)
    n = source.num_pairs()
    log(f"data {cfg.data}: {n if n is not None else 'an unknown number of'} pairs in {len(source.shards)} shard(s)")
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        result = filter_pairs(source, trusted, reference=reference, reference_extra=extra, options=opt,
                              dynamics_dir=tmp / "dynamics", scores_path=tmp / "scores.parquet", embed=embed,
                              spill_dir=tmp, truth=truth, table_metadata={"data": cfg.data}, log=log)
        summary = write_pair_run(tmp, result, source, data_spec=cfg.data, params=_params(cfg), t0=t0,
                                 trusted_inside=bool(cfg.trusted_ids), seed=opt.seed, inputs=input_files(cfg))
    return summary


def input_files(cfg: PairFilterConfig) -> dict:
    """The files a pair run reads, for the manifest's input hashes (pool folders are identified by the data
    fingerprint)."""
    files = {"trusted_ids": cfg.trusted_ids, "reference": cfg.reference, "truth": cfg.truth}
    return {k: v for k, v in files.items() if v}


def _params(cfg: PairFilterConfig) -> dict:
    doc = asdict(cfg)
    doc.update(doc.pop("options"))
    return doc


def is_hex_uid_array(ids: np.ndarray) -> bool:
    """Whether every id is a 32-hex-digit uid (DataComp's format), vectorised."""
    from keepset.data.pairs import uid_to_u64

    if ids.dtype.kind != "U" or not len(ids):
        return False
    try:
        uid_to_u64(ids)
    except ValueError:
        return False
    return True


def write_pair_run(out: Path, result: PairFilterResult, source: PairSource, *, data_spec: str, params: dict,
                   t0: float, trusted_inside: bool, seed: int, inputs: dict | None = None) -> dict:
    """Write the run folder's other files into ``out`` (scores.parquet and dynamics/ are already there):
    keep.npy (uids of the filtered pairs Stage 2 keeps), trusted.npy (with ``trusted_inside``),
    keep_datacomp.npy (DataComp's sorted unique ``u8,u8``: the kept pairs and the trusted ones, for its
    resharder; only for 32-hex-digit uids), the checkpoints, summary.json and manifest.json."""
    from keepset.io import uids_to_datacomp

    kept = result.ids[result.keep]
    write_keep_list(out / "keep.npy", kept)
    outputs = ["scores.parquet", "keep.npy", "summary.json", "dynamics", "reference.safetensors", "model.safetensors"]
    if trusted_inside and len(result.trusted_ids):
        write_keep_list(out / "trusted.npy", result.trusted_ids)
        outputs.append("trusted.npy")
    datacomp_note = None
    subset = np.concatenate([kept, result.trusted_ids]) if trusted_inside else kept
    if is_hex_uid_array(result.ids) and (not len(subset) or is_hex_uid_array(subset)):
        write_keep_list(out / "keep_datacomp.npy", uids_to_datacomp(subset))
        outputs.append("keep_datacomp.npy")
        datacomp_note = ("keep_datacomp.npy: DataComp's subset format (np.dtype('u8,u8'), sorted, each uid once) of "
                         + ("the kept pairs and the trusted ones" if trusted_inside else "the kept pairs"))
    init_extra = {"init_seed": int(seed), "init_fingerprint": model_fingerprint(result.init)}
    save_checkpoint(result.reference, out / "reference.safetensors",
                    {"role": "reference: two-tower probe trained on the trusted pairs", **init_extra})
    save_checkpoint(result.model, out / "model.safetensors",
                    {"role": "model: two-tower probe trained on the pool with Grad-Mimic from the reference's "
                             "initial weights", **init_extra})
    if result.sas_probe is not None:
        save_checkpoint(result.sas_probe, out / "sas_probe.safetensors",
                        {"role": "the probe behind the sas column: trained on the pool's own pairs", **init_extra})
        outputs.append("sas_probe.safetensors")
    n = len(result.ids)
    summary = {
        "data": data_spec, "kind": "pairs", "n": n, "kept": int(result.keep.sum()),
        "flagged": int(n - result.keep.sum()), "n_trusted": int(len(result.trusted_ids)),
        "n_holdout": int(len(result.holdout_ids)), "quality": dict(result.quality), "steps": result.steps,
        "history": result.history, "warnings": list(result.warnings),
        "keep_list": ("keep.npy holds the uids of the filtered pairs Stage 2 keeps"
                      + ("; the trusted pairs (trusted.npy) are clean: keep them too" if trusted_inside else "")
                      + (f"; {datacomp_note}" if datacomp_note else "")),
        **({"detection": result.detection} if result.detection is not None else {}),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=json_default) + "\n")
    write_manifest(out / "manifest.json", method="keepset-filter-pairs", params=params,
                   data={"spec": data_spec, "fingerprint": source.fingerprint(), "n": n}, inputs=inputs,
                   models={"reference": "reference.safetensors", "model": "model.safetensors"},
                   outputs={f: f for f in outputs})
    return summary


def format_pair_summary(s: dict) -> str:
    """A short plain-text table of a pair filter run."""
    q = s["quality"]
    check = ("no held-out trusted pairs" if q.get("clip_check") is None else
             f"{q['clip_check']:.3f} from the reference's clip scores against {q['n_holdout']} held-out trusted "
             f"pairs (their text-to-image recall@1 {q['reference_holdout_recall_at_1']:.3f})")
    rows = [("data", s["data"]),
            ("pairs", f"{s['n']} filtered, {s['n_trusted']} trusted ({s['n_holdout']} held out)"),
            ("dataset quality", f"estimated {q['estimated']:.3f}"
             + (f" | true {s['detection']['true_quality']:.3f} (--truth)" if s.get("detection") else "")),
            ("quality check", check),
            ("kept", f"{s['kept']} of {s['n']} ({s['flagged']} flagged)")]
    if s.get("detection"):
        d = s["detection"]
        a = d["auroc"]
        st = d["stage2"]
        rows.append(("detection", f"Stage 2 precision {st['precision']:.3f} recall {st['recall']:.3f} "
                                  f"F1 {st['f1']:.3f}; AUROC mimic {a['mimic_mean']:.3f}, clip score "
                                  f"{a['clip_score']:.3f}" + (f", sas {a['sas']:.3f}" if "sas" in a else "")
                                  + " (against --truth)"))
    rows.append(("time", f"{s['seconds']} s"))
    rows += [("warning", w) for w in s.get("warnings", [])]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
