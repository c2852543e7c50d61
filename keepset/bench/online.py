"""Online batch re-weighting compared side by side: plain SGD, Grad-Mimic Stage 1 (softmax of the
Mimic Score), RHO-loss batch selection and GraNd-weighted batches, on the shared proxy setting
(a linear head on the trusted reference's frozen features of the noisy train split; same seeds,
initial weights, batch order and epochs for every method). Test accuracy on the clean test split.

RHO-loss's irreducible loss is the trusted reference head's loss on each (noisy) training label.

  python -m keepset.bench.online                       # digits, 40% symmetric noise, 3 seeds
  python -m keepset.bench.online --data fashion-mnist --seeds 1
"""

from __future__ import annotations

import argparse
import sys

from keepset._argtypes import fraction_open, positive_float, positive_int, ratio
from keepset.bench._script import script_main
from keepset.cli._common import add_quiet

METHODS = ("sgd", "gradmimic", "rho", "grand")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", help="data spec (digits, fashion-mnist, ...)")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                   help="reference network trained on the trusted split (its features feed the linear heads)")
    p.add_argument("--seeds", type=positive_int, default=3, help="number of seeds (0, 1, ...)")
    p.add_argument("--noise", type=fraction_open, default=0.4, help="symmetric label-noise rate, in [0, 1)")
    p.add_argument("--ref-epochs", type=positive_int, default=30, help="epochs of the reference on the trusted split")
    p.add_argument("--epochs", type=positive_int, default=10, help="epochs of every online run")
    p.add_argument("--batch-size", type=positive_int, default=64, help="batch size of every training run")
    p.add_argument("--lr", type=positive_float, default=0.05, help="SGD learning rate of the reference")
    p.add_argument("--head-lr", type=positive_float, default=None,
                   help="SGD learning rate of the linear head (default: 10 / mean ||h||^2 of the train features)")
    p.add_argument("--rho-ratio", type=ratio, default=0.3, help="RHO-loss: fraction of each batch trained on")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="Grad-Mimic softmax temperature")
    add_quiet(p, "no per-seed progress lines")
    p.add_argument("--device", default="cpu", help="where the networks train: cpu, cuda, cuda:N or mps")


def run(args) -> int:
    import torch

    from keepset.data import load_spec
    from keepset.evaluation.proxy import make_split, noisy_labels, train_reference
    from keepset.evaluation.report import fmt, markdown_table, mean_std
    from keepset.models import LinearProbe
    from keepset.training import GradMimic, GrandWeight, RhoLoss, accuracy, fit, irreducible_losses
    from keepset.training.step_size import probe_learning_rate

    from keepset.cli._common import check_device

    check_device(args.device)
    samples = load_spec(args.data)
    results: dict[str, list[float]] = {m: [] for m in METHODS}
    for seed in range(args.seeds):
        split = make_split(samples.labels, seed)
        ref = train_reference(samples, split, args.model, epochs=args.ref_epochs, batch_size=args.batch_size,
                              lr=args.lr, seed=seed, device=args.device)
        labels, _ = noisy_labels(samples, split, "symmetric", args.noise, seed)
        d = ref.train_features.shape[1]
        reference = LinearProbe(d, samples.num_classes)
        with torch.no_grad():
            reference.head.weight.copy_(ref.net.head.weight)
            reference.head.bias.copy_(ref.net.head.bias)
        irreducible = irreducible_losses(reference, ref.train_features, labels)
        head_lr = args.head_lr if args.head_lr is not None else probe_learning_rate(ref.train_features)
        for m in METHODS:
            method = {"sgd": None, "gradmimic": GradMimic(reference, temperature=args.temperature),
                      "rho": RhoLoss(irreducible, ratio=args.rho_ratio), "grand": GrandWeight()}[m]
            torch.manual_seed(seed + 1)
            head = LinearProbe(d, samples.num_classes)
            fit(head, ref.train_features, labels, method=method, epochs=args.epochs, batch_size=args.batch_size,
                lr=head_lr, momentum=0.9, seed=seed, progress=False, device=args.device)
            head.cpu()
            results[m].append(accuracy(head, ref.test_features, samples.labels[split.test]))
        if not args.quiet:
            print(f"seed {seed}: " + ", ".join(f"{m} {results[m][-1]:.3f}" for m in METHODS), file=sys.stderr)
    print(f"{args.data}, {args.noise:g} symmetric noise, {args.seeds} seeds, {args.epochs} epochs, linear head on "
          f"the trusted {args.model}'s features; test accuracy (mean ± std):\n")
    print(markdown_table(["method", "test accuracy"], [[m, fmt(mean_std(results[m]))] for m in METHODS]))
    return 0


def main(argv=None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
