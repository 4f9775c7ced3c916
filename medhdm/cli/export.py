"""``medhdm export``: write a saliency map into the source study (DICOM SC/PM/SEG/SR, NIfTI, PNG)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options

__all__ = ["add_command", "run"]


def add_command(sub) -> None:
    """``medhdm export``."""
    exp = sub.add_parser("export", help="write a saliency map into the source study (DICOM SC/PM/SEG/SR, NIfTI, PNG)")
    exp.add_argument(
        "--image", required=True, help="source DICOM file (single-frame or enhanced multi-frame) or series folder"
    )
    exp.add_argument("--map", required=True, help="map on the source grid: .npy (H, W) / (D, H, W), or NIfTI")
    exp.add_argument("--out", required=True, help="output folder (not the source, not inside a source series folder)")
    exp.add_argument(
        "--label",
        "--method",
        dest="label",
        default="HDM",
        metavar="LABEL",
        help="the method that made the map, as the series description names it (default HDM); "
        "a label only: --method is the same option",
    )
    exp.add_argument(
        "--class-label",
        default=None,
        help="explained class, named in the series description; with sr its index (0, 1, ...), required",
    )
    exp.add_argument(
        "--probability", type=float, default=None, help="sr: the class's probability (left out of the SR if not given)"
    )
    exp.add_argument(
        "--scores",
        default=None,
        metavar="JSON",
        help="sr: a JSON file of scores by name (pointing_game, auroc, deletion_auc_log, ...; "
        "as medhdm evaluate names them); the SR names the method and medhdm's version, not the model",
    )
    exp.add_argument("--lesion", default=None, help="lesion mask on the source grid (.npy or NIfTI), outlined")
    options.add_export_options(exp)
    options.add_deidentify_options(exp)
    exp.add_argument("--overwrite", action="store_true", help="replace an export that --out already holds")
    exp.add_argument("--allow-inside-source", action="store_true", help="allow --out inside the source series folder")
    options.finish_command(exp, run)


def run(args: argparse.Namespace) -> None:
    from ..export import check_export_arguments, export, map_on_source_grid
    from ..io.dicom import read_dicom
    from ..io.maps import load_lesion, load_map

    # every argument checked before any file is read
    formats = options.format_list(args.format)
    style = options.overlay_style(args)
    deidentify = options.deidentification(args)
    salt = deidentify.salt if deidentify is not None else None
    check_export_arguments(formats, args.out, style, args.window_preset, args.seg_threshold, salt)
    report = _report_content(args, formats)
    source = read_dicom(args.image)
    saliency = map_on_source_grid(load_map(args.map, source), source, name=str(args.map))
    lesion = load_lesion(args.lesion, source) if args.lesion else None
    written = export(
        source,
        saliency,
        args.out,
        formats,
        method=args.label,
        class_label=args.class_label,
        style=style,
        lesion_mask=lesion,
        window_preset=args.window_preset,
        seg_threshold=args.seg_threshold,
        deidentify_salt=salt,
        allow_inside_source=args.allow_inside_source,
        overwrite=args.overwrite,
        retain_dates=args.retain_dates,
        report=report,
    )
    for fmt, paths in written.items():
        where = paths[0] if len(paths) == 1 else f"{len(paths)} files in {Path(args.out)}"
        print(f"{fmt}: {where}")


def _report_content(args: argparse.Namespace, formats: list[str]):
    """What ``export --format sr`` says: ``--class-label`` (the class index), ``--probability``, ``--scores``."""
    import json

    from ..export import ReportContent

    if "sr" not in formats:
        given = [n for n, v in (("--probability", args.probability), ("--scores", args.scores)) if v is not None]
        if given:
            raise ValueError(f"{'/'.join(given)}: only with --format sr (they are what the SR reports)")
        return None
    if args.class_label is None or not str(args.class_label).strip().isdigit():
        raise ValueError(
            f"--class-label: the SR (--format sr) needs the explained class's index (0, 1, ...); got {args.class_label}"
        )
    scores = None
    if args.scores is not None:
        try:
            scores = json.loads(Path(args.scores).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"--scores: cannot read {args.scores} as JSON ({err})") from None
        if not isinstance(scores, dict):
            raise ValueError(f"--scores: {args.scores} holds no JSON object of scores by name")
    try:
        return ReportContent(int(args.class_label), args.probability, scores=scores)
    except (TypeError, ValueError) as err:  # "probability: ..." or "scores: ...": said with the option
        name, _, problem = str(err).partition(": ")
        flag = {"probability": "--probability", "scores": f"--scores {args.scores}"}.get(name, "--class-label")
        raise ValueError(f"{flag}: {problem}") from None
