"""Entry point of the ``keepset`` command."""

from __future__ import annotations

import argparse
import sys

from keepset._version import __version__

EPILOG = """examples:
  keepset demo                                   # Grad-Mimic end to end on the embedded digits data
  keepset demo --data fashion-mnist --noise 0.4 --out out/fmnist
  keepset filter --data fashion-mnist --trusted-ids trusted.npy --out out/fmnist-filter   # your own labels
  keepset score --data digits --model out/demo/model.safetensors \\
                --reference out/demo/reference.safetensors --method cos --out scores.parquet
  keepset select --scores scores.parquet --method top --column cos --ratio 0.6 --out keep.npy
  keepset bench overhead
"""


def build_parser() -> argparse.ArgumentParser:
    from keepset.cli import bench, demo, make_noisy, make_pool, report, score, select
    from keepset.cli import filter as filter_

    parser = argparse.ArgumentParser(
        prog="keepset", description="Score how useful every training sample is and decide which samples to keep.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"keepset {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (demo, filter_, score, select, report, bench, make_noisy, make_pool):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
            PermissionError, ImportError) as exc:
        print(f"keepset {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
