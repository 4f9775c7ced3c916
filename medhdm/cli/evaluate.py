"""``medhdm evaluate``: explain every case of a manifest with several methods, score the maps against the lesions
and write report.html."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options

__all__ = ["add_command", "run"]


def add_command(sub) -> None:
    """``medhdm evaluate``."""
    ev = sub.add_parser(
        "evaluate",
        help="explain every case of a manifest with several methods, score the maps "
        "against the lesions and write report.html",
    )
    ev.add_argument("--manifest", required=True, help="a data manifest whose cases have 'lesion' annotations")
    ev.add_argument(
        "--methods",
        default="hdm,gxi,gradcam,occlusion",
        help=f"comma-separated methods among {options.method_names()} (default hdm,gxi,gradcam,occlusion)",
    )
    ev.add_argument("--out", required=True, help="output folder: report.html, per_case.csv, summary.csv/json, figures")
    ev.add_argument("--no-faithfulness", action="store_true", help="skip deletion/insertion")
    ev.add_argument(
        "--curve-steps",
        type=int,
        default=None,
        metavar="N",
        help="sample the deletion/insertion curves at N equal shares of the voxels and report the classic "
        "deletion_auc/insertion_auc over the share 0..1; default: 0 and 41 "
        "log-spaced shares from 0.01 %%, reported as deletion_auc_log/insertion_auc_log (area over "
        "log10(share), scaled to [0, 1]); deletion_half/insertion_half in both cases",
    )
    ev.add_argument(
        "--overwrite",
        action="store_true",
        help="redo the cases a previous run completed with another configuration (or replace a report)",
    )
    options.add_engine_options(ev)
    ev.add_argument(
        "--maps",
        action="append",
        metavar="NAME=DIR",
        help="also score maps made elsewhere "
        "(repeatable): DIR holds <case id>.nii.gz, <case id>_saliency.nii.gz or <case id>/<case id>_saliency.nii.gz "
        "(an explain --out) on the image grid, or "
        "<case id>.npy in MONAI/NIfTI order (column, row[, slice]); values in [0, 1]",
    )
    options.add_steps_option(ev)
    options.add_model_options(ev)
    options.finish_command(ev, run)


def _maps(items: list[str]) -> dict[str, str]:
    """``--maps NAME=DIR`` (repeatable) as ``{name: folder}``."""
    maps: dict[str, str] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ValueError(f"--maps: expected NAME=DIR, got {item!r}")
        if name.strip() in maps:
            raise ValueError(f"--maps: the name {name.strip()!r} is given twice")
        maps[name.strip()] = folder.strip()
    return maps


def _methods_and_maps(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """``--methods`` and ``--maps``, checked: known methods, each name once, existing map folders."""
    from ..explain.registry import method_key

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    twice = sorted({m for m in names if names.count(m) > 1})
    if twice:
        raise ValueError(f"--methods: {', '.join(twice)} given twice")
    maps = _maps(args.maps or [])
    if not names and not maps:
        raise ValueError("--methods: give at least one method (or --methods '' with --maps)")
    clash = sorted(set(maps) & set(names))
    if clash:
        raise ValueError(f"--maps: names already used by methods: {', '.join(clash)}")
    for name in names:
        method_key(name)  # an unknown method fails here, before any work
    for name, folder in maps.items():
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--maps {name}: {folder}: no such map folder")
    return names, maps


def run(args: argparse.Namespace) -> None:
    from ..cohort import EvaluateRecipe, evaluate_cohort
    from ..evaluation import FAITHFULNESS_KEYS, format_table, froc_from_rows, summarise
    from ..io.manifest import load_manifest
    from ..io.outputs import check_output_folder

    entries = load_manifest(args.manifest)
    names, maps = _methods_and_maps(args)
    missing = [e["id"] for e in entries if "lesion" not in e]
    if missing:
        raise ValueError(f"{args.manifest}: cases without a 'lesion' annotation cannot be scored: {', '.join(missing)}")
    if args.curve_steps is not None and args.curve_steps < 1:
        raise ValueError(f"--curve-steps: expected an integer >= 1, got {args.curve_steps}")
    check_output_folder(args.out, [e["image"] for e in entries])
    options.check_case_folders(args.out, [e["id"] for e in entries])
    cohort_options = options.engine_options(args)
    recipe, model, spec = options.model_and_spec(args)
    evaluation = EvaluateRecipe(
        recipe,
        spec,
        tuple(names),
        steps=args.steps,
        maps=tuple(maps.items()),
        faithfulness=not args.no_faithfulness,
        curve_steps=args.curve_steps,
        slices=options.slices(args),
    )
    title = f"medhdm evaluation: {Path(args.manifest).name}"
    _, rows = evaluate_cohort(entries, evaluation, args.out, title=title, options=cohort_options, model=model)
    faithful = [k for k in FAITHFULNESS_KEYS if rows and k in rows[0]]
    digits = {"deletion_half": 4, "insertion_half": 4}
    print(format_table(summarise(rows, ["pointing_game", "auroc", "lesion_hit_rate", *faithful]), digits=digits))
    froc = froc_from_rows(rows)
    if froc:
        print(format_table(froc, ["cpm", "froc_sens@1"], ci=True))
    print(f"report: {Path(args.out) / 'report.html'}")
