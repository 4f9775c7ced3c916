"""``medhdm demo``: explain and score held-out lesion cases with HDM and the baselines."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options

__all__ = ["add_command", "run"]


def add_command(sub) -> None:
    """``medhdm demo``."""
    demo = sub.add_parser("demo", help="explain and score held-out lesion cases with HDM and the baselines")
    demo.add_argument("--out", default="medhdm-demo", help="output folder (default: ./medhdm-demo)")
    demo.add_argument("--cases", type=int, default=6, help="number of 2D cases (default: 6)")
    demo.add_argument("--cases-3d", type=int, default=2, help="number of 3D cases (default: 2)")
    options.finish_command(demo, run)


def run(args: argparse.Namespace) -> None:
    from ..demo import run_demo

    options.check_out_folder(args.out)
    if args.cases < 1:
        raise ValueError(f"--cases: expected at least 1, got {args.cases}")
    if args.cases_3d < 0:
        raise ValueError(f"--cases-3d: expected 0 or more, got {args.cases_3d}")
    run_demo(Path(args.out), n_cases=args.cases, n_cases_3d=args.cases_3d)
