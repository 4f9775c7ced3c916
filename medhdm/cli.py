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


def _export(args: argparse.Namespace) -> None:
    from .export import OverlayStyle, export
    from .io.dicom import read_dicom
    from .io.maps import load_map

    source = read_dicom(args.image)
    saliency = load_map(args.map, source)
    lesion = load_map(args.lesion, source) if args.lesion else None
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    written = export(
        source, saliency, args.out, formats,
        method=args.method, class_label=args.class_label,
        style=OverlayStyle(cmap=args.cmap, threshold=args.threshold, alpha=args.alpha, legend=not args.no_legend),
        lesion_mask=lesion, window_preset=args.window_preset, seg_threshold=args.seg_threshold,
        deidentify_salt=args.deidentify_salt, allow_inside_source=args.allow_inside_source,
    )
    for fmt, paths in written.items():
        where = paths[0] if len(paths) == 1 else f"{len(paths)} files in {Path(args.out)}"
        print(f"{fmt}: {where}")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="medhdm", description="Hierarchical Dynamic Masks for MONAI classifiers.")
    parser.add_argument("--version", action="version", version=f"medhdm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain and score held-out lesion cases with HDM and the baselines")
    demo.add_argument("--out", default="medhdm-demo", help="output folder (default: ./medhdm-demo)")
    demo.add_argument("--cases", type=int, default=6, help="number of cases (default: 6)")
    demo.set_defaults(func=_demo)

    exp = sub.add_parser("export", help="write a saliency map into the source study (DICOM SC/PM/SEG, NIfTI, PNG)")
    exp.add_argument("--image", required=True, help="source DICOM file or series folder")
    exp.add_argument("--map", required=True, help="map on the source grid: .npy (H, W) / (D, H, W), or NIfTI")
    exp.add_argument("--out", required=True, help="output folder (not inside the source folder)")
    exp.add_argument("--format", default="sc,pm,seg,nifti,png", help="comma-separated: sc,pm,seg,nifti,png")
    exp.add_argument("--method", default="HDM", help="method named in the series description (default HDM)")
    exp.add_argument("--class-label", default=None, help="explained class, named in the series description")
    exp.add_argument("--lesion", default=None, help="lesion mask on the source grid (.npy or NIfTI), outlined")
    exp.add_argument("--cmap", default="inferno", help="matplotlib colormap (default inferno)")
    exp.add_argument("--threshold", type=float, default=0.25, help="overlay drawn where map >= this (0.25)")
    exp.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (0.5)")
    exp.add_argument("--no-legend", action="store_true", help="do not burn in the colour bar and label")
    exp.add_argument("--window-preset", default=None, help="CT window preset: soft_tissue, lung, bone, brain")
    exp.add_argument("--seg-threshold", type=float, default=0.5, help="SEG holds map >= this (0.5)")
    exp.add_argument("--deidentify-salt", default=None, help="de-identify the DICOM outputs with this secret")
    exp.add_argument("--allow-inside-source", action="store_true", help="allow --out inside the source folder")
    exp.set_defaults(func=_export)
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
