"""Mislabel detection by SAS alone (CLIP-powered selection's alignment score), reproducible.

Protocol: split the data with ``split_indices(labels, (0.6, 0.15, 0.25), seed)``; train a keepset
network (MLP on digits, SmallCNN on 28x28 images) on the trusted split's clean labels; embed every
sample with its penultimate layer; corrupt the train split's labels (``add_label_noise``); embed the
prompts "A photo of a {class}" with MiniLM (or ``--text-encoder``); train the two adapters on the
noisy train split; SAS on the train split; AUROC of ``-SAS`` against the corrupted mask.

    python -m keepset.bench.sas_detection --data digits --noise 0.4
    python -m keepset.bench.sas_detection --data fashion-mnist --noise 0.4
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from keepset._argtypes import fraction_open, int_at_least, positive_float, positive_int, seed
from keepset.bench._script import script_main
from keepset.cli._common import add_quiet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="digits", help="data spec (digits, fashion-mnist, ...)")
    parser.add_argument("--noise", type=fraction_open, default=0.4, help="label-noise rate on the train split, in [0, 1)")
    parser.add_argument("--noise-kind", default="symmetric", choices=("symmetric", "asymmetric"),
                        help="how wrong labels are drawn")
    parser.add_argument("--text-encoder", default=None, help="text encoder spec (default: minilm)")
    parser.add_argument("--arch", default=None, choices=("mlp", "cnn"),
                        help="trusted-network architecture (default: by input shape)")
    parser.add_argument("--encoder-epochs", type=positive_int, default=30, help="epochs of the trusted network")
    parser.add_argument("--adapter-epochs", type=positive_int, default=30, help="adapter epochs")
    parser.add_argument("--adapter-lr", type=positive_float, default=1e-4, help="adapter Adam learning rate")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="adapter batch size")
    parser.add_argument("--limit", type=int_at_least(2), default=None,
                        help="use only the first N samples, for quick runs (default: all)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the split, the noise and training")
    add_quiet(parser, "no progress bars")


def run(args) -> int:
    from sklearn.metrics import roc_auc_score

    from keepset.data import add_label_noise, load_spec, split_indices
    from keepset.encoders import average_templates, class_prompts, load_text_encoder, train_adapters
    from keepset.encoders.network import TRUSTED_FRACTIONS, default_architecture
    from keepset.models import model_for_inputs
    from keepset.scoring.semantic import semantic_alignment_scores
    from keepset.training import accuracy, embed, fit
    import torch

    from keepset.encoders.spec import check_text_encoder

    check_text_encoder(args.text_encoder)  # its package and files, before any training
    progress = not args.quiet
    t0 = time.perf_counter()
    samples = load_spec(args.data)
    if args.limit:
        samples = samples.subset(np.arange(min(args.limit, len(samples))))
    train_pos, trusted_pos, test_pos = split_indices(samples.labels, TRUSTED_FRACTIONS, args.seed)
    arch = args.arch or default_architecture(samples)
    x_trusted = samples.get_inputs(trusted_pos)
    torch.manual_seed(args.seed)
    net = model_for_inputs(arch, tuple(x_trusted.shape[1:]), samples.num_classes)
    fit(net, x_trusted, samples.labels[trusted_pos], epochs=args.encoder_epochs, batch_size=128, lr=0.05,
        seed=args.seed, progress=progress, desc="trusted encoder")
    test_acc = accuracy(net, samples.get_inputs(test_pos), samples.labels[test_pos])
    img = embed(net, samples.get_inputs(train_pos))
    clean = samples.labels[train_pos]
    noisy, corrupted = add_label_noise(clean, args.noise, args.noise_kind, samples.num_classes, args.seed)
    text = load_text_encoder(args.text_encoder, progress=progress)
    templates = ["A photo of a {}"]
    txt = average_templates(text.encode_texts(class_prompts(samples.class_names, templates)), samples.num_classes)
    adapters, hist = train_adapters(img, txt, noisy, epochs=args.adapter_epochs, batch_size=args.batch_size,
                                    lr=args.adapter_lr, seed=args.seed, progress=progress)
    sas = semantic_alignment_scores(adapters.transform_images(img), adapters.transform_texts(txt), noisy)
    auroc = roc_auc_score(corrupted, -sas)
    print(f"data={args.data} arch={arch} trusted={len(trusted_pos)} train={len(train_pos)} "
          f"noise={args.noise_kind}:{args.noise} corrupted={int(corrupted.sum())}")
    print(f"trusted network test accuracy: {test_acc:.4f}")
    print(f"adapter loss: first epoch {hist[0]:.4f}, last epoch {hist[-1]:.4f} ({len(hist)} epochs, "
          f"Adam lr {args.adapter_lr})")
    print(f"SAS mislabel detection AUROC (-SAS vs corrupted): {auroc:.4f}")
    print(f"time: {time.perf_counter() - t0:.1f}s")
    return 0


def main(argv=None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
