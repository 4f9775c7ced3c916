"""The ``medhdm`` command line.

Errors that come from bad input (``ValueError``, ``TypeError``, ``FileNotFoundError``)
are printed as one line on stderr with exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    if args.cases < 1:
        raise ValueError(f"--cases: expected at least 1, got {args.cases}")
    run_demo(Path(args.out), n_cases=args.cases)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="medhdm", description="Hierarchical Dynamic Masks for MONAI classifiers.")
    parser.add_argument("--version", action="version", version=f"medhdm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain and score held-out lesion cases with HDM and the baselines")
    demo.add_argument("--out", default="medhdm-demo", help="output folder (default: ./medhdm-demo)")
    demo.add_argument("--cases", type=int, default=6, help="number of cases (default: 6)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(int(os.environ.get("MEDHDM_THREADS", "2")), os.cpu_count() or 1)))
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"medhdm {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
