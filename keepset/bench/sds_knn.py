"""Time the exact same-label kNN behind SDS at scale (default N = 200,000, d = 512, 10 classes).

    python -m keepset.bench.sds_knn --n 200000 --dim 512 --classes 10 --k 10

Embeddings are seeded Gaussian clusters (float32). Prints the wall time of ``sample_diversity_scores``
with the chosen backend (faiss when installed) and the thread count, and checks a random sample of rows
against a brute-force numpy computation.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from keepset._argtypes import int_at_least, positive_int, seed
from keepset.bench._script import script_main
from keepset.cli._common import add_quiet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int_at_least(2), default=200_000, help="samples (synthetic embeddings)")
    parser.add_argument("--dim", type=positive_int, default=512, help="embedding size")
    parser.add_argument("--classes", type=positive_int, default=10, help="number of classes")
    parser.add_argument("--k", type=int_at_least(2), default=10, help="neighbourhood size K, the sample included")
    parser.add_argument("--backend", default="auto", choices=("auto", "faiss", "torch"),
                        help="exact kNN backend (auto: faiss when installed)")
    parser.add_argument("--threads", type=positive_int, default=2, help="threads for faiss / torch")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the synthetic embeddings")
    add_quiet(parser, "no progress bar")


def run(args) -> int:
    import torch

    from keepset._checks import check_installed
    from keepset.scoring.semantic import sample_diversity_scores

    if args.backend == "faiss":
        check_installed("faiss", "--backend faiss", "knn")
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        pass
    rng = np.random.default_rng(args.seed)
    labels = rng.integers(0, args.classes, args.n)
    centers = rng.normal(size=(args.classes, args.dim)).astype(np.float32)
    emb = centers[labels] + rng.normal(size=(args.n, args.dim)).astype(np.float32)
    t0 = time.perf_counter()
    sds = sample_diversity_scores(emb, labels, args.k, backend=args.backend, progress=not args.quiet)
    elapsed = time.perf_counter() - t0
    check = rng.choice(args.n, size=5, replace=False)
    worst = 0.0
    for i in check:
        same = np.flatnonzero(labels == labels[i])
        d = np.sqrt(((emb[same] - emb[i]) ** 2).sum(1, dtype=np.float64))
        ref = np.sort(d)[1:args.k].mean()
        worst = max(worst, abs(ref - sds[i]) / ref)
    print(f"SDS exact kNN: N = {args.n}, d = {args.dim}, {args.classes} classes, K = {args.k}, "
          f"backend {args.backend}, {args.threads} threads: {elapsed:.1f} s")
    print(f"max relative error on 5 brute-force-checked rows: {worst:.2e}")
    return 0


def main(argv=None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
