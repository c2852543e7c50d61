"""Exact vs faithful CLIP-powered selection, measured side by side in one run.

Both paths run on the same scores (seeded synthetic SAS/SDS by default, or the sas/sds columns of a
score table with ``--scores``); each is timed ``--repeats`` times, interleaved, and the medians are
compared. Prints the speed-up, the Jaccard index of the two keep sets and both counts.

    keepset bench clip-select                      # N = 50,000, ratio 0.5
    python -m keepset.bench.clip_select --n 50000 --ratio 0.3 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from keepset._argtypes import int_at_least, positive_int, ratio, seed
from keepset.bench._script import script_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int_at_least(2), default=50_000, help="number of samples (synthetic scores)")
    parser.add_argument("--ratio", type=ratio, default=0.5, help="fraction to keep, in (0, 1]")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs of each path, interleaved")
    parser.add_argument("--scores", default=None,
                        help="score table with sas and sds columns instead of synthetic scores (default: synthetic)")
    parser.add_argument("--max-steps", type=positive_int, default=100_000, help="optimiser step limit")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the synthetic scores")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")


def synthetic_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded SAS-like (skewed to high values) and SDS-like (right-skewed) scores, min-max normalised."""
    from keepset.scoring.semantic import minmax

    rng = np.random.default_rng(seed)
    return minmax(rng.beta(5.0, 2.0, n)), minmax(rng.gamma(2.0, 1.0, n))


def run(args) -> int:
    import torch

    from keepset.scoring.semantic import minmax
    from keepset.selection.clip_select import clip_select

    if args.scores and (args.n != 50_000 or args.seed != 0):
        raise ValueError("--n and --seed shape the synthetic scores, which --scores replaces: drop them")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scores:
        from keepset.io import read_score_table

        table = read_score_table(args.scores)
        missing = [c for c in ("sas", "sds") if c not in table]
        if missing:
            raise ValueError(f"{args.scores} has no column {missing}; score it with keepset score --method "
                             "clip-powered (sas and sds)")
        sas, sds = minmax(table["sas"]), minmax(table["sds"])
    else:
        sas, sds = synthetic_scores(args.n, args.seed)
    n = len(sas)
    t_exact, t_faith = [], []
    mask_e = mask_f = info_f = None
    for _ in range(max(1, args.repeats)):
        t0 = time.perf_counter()
        for _ in range(10):  # the fast path is timed over 10 calls per repeat for a stable reading
            mask_e, info_e = clip_select(sas, sds, args.ratio, exact=True, return_info=True)
        t_exact.append((time.perf_counter() - t0) / 10)
        t0 = time.perf_counter()
        mask_f, info_f = clip_select(sas, sds, args.ratio, exact=False, return_info=True, steps=args.max_steps)
        t_faith.append(time.perf_counter() - t0)
    me, mf = statistics.median(t_exact), statistics.median(t_faith)
    jac = float((mask_e & mask_f).sum() / max(1, (mask_e | mask_f).sum()))
    print(f"N = {n}, ratio {args.ratio}, k = {info_e['k']}, torch threads {torch.get_num_threads()}, "
          f"{args.repeats} interleaved repeats (medians)")
    print(f"exact (top-k_eff)  : {me * 1e3:9.2f} ms   kept {int(mask_e.sum())}")
    print(f"faithful optimiser : {mf * 1e3:9.2f} ms   kept {int(mask_f.sum())}  ({info_f['steps']} SGD steps, "
          f"early stop; best checkpoint at step {info_f['best_step']}, last iterate kept {info_f['final_count']})")
    print(f"speed-up exact vs faithful: {mf / me:.0f}x")
    print(f"Jaccard(exact, faithful) = {jac:.5f}; count difference {abs(int(mask_e.sum()) - int(mask_f.sum()))} "
          f"({abs(int(mask_e.sum()) - int(mask_f.sum())) / n:.4%} of N)")
    return 0


def main(argv=None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
