"""``medhdm bench-data``: write LesionBench cases (DICOM, NIfTI, SEG) and their manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options

__all__ = ["add_command", "run"]


def add_command(sub) -> None:
    """``medhdm bench-data``."""
    bench = sub.add_parser("bench-data", help="write LesionBench cases (DICOM, NIfTI, SEG) and their manifest")
    bench.add_argument("--out", required=True, help="output folder")
    bench.add_argument("--cases", type=int, default=8, help="number of cases (default 8)")
    bench.add_argument("--dims", type=int, default=2, choices=(2, 3), help="2 (images) or 3 (series)")
    bench.add_argument("--seed", type=int, default=4242, help="seed of cases and UIDs (default 4242)")
    bench.add_argument(
        "--manifest",
        default=None,
        help="manifest path (default OUT/manifest.json); must lie in OUT or a folder above it",
    )
    bench.add_argument("--overwrite", action="store_true", help="replace existing cases and manifest")
    options.finish_command(bench, run)


def run(args: argparse.Namespace) -> None:
    from ..data.bench_files import write_lesionbench

    if args.cases < 1:
        raise ValueError(f"--cases: expected at least 1, got {args.cases}")
    options.check_out_folder(args.out)
    if args.manifest and Path(args.manifest).is_dir():
        raise ValueError(f"--manifest: {args.manifest} is a folder; give the manifest file's path (a .json file)")
    path = write_lesionbench(
        args.out,
        n_cases=args.cases,
        spatial_dims=args.dims,
        seed=args.seed,
        manifest_path=args.manifest,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.cases} LesionBench {args.dims}D cases and {path}")
