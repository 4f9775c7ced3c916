"""Quality benchmark on files: LesionBench studies on disk, through the same pipeline as ``medhdm evaluate``.

    python benchmarks/quality_files.py --dims 2 --cases 24
    python benchmarks/quality_files.py --dims 3 --cases 8
    python benchmarks/quality_files.py --dims 3 --cases 24 --hdm-steps 5 \
        --methods "HDM,HDM steps=5,GradientInput,Occlusion"
    python benchmarks/quality_files.py --dims 3 --cases 24 \
        --methods "HDM,HDM knee=0.3 magnitude=0,HDM focus=0,GradientInput"
    python benchmarks/quality_files.py --dims 3 --cases 24 \
        --methods "HDM,HDM focus_signal=positive_gradient,HDM focus=0,GradientInput"

Writes lesion cases (1-3 lesions each, seeded) as DICOM studies with NIfTI masks, explains
each with every method through MONAI loading, the invertible preprocessing and the map
back on the source grid, scores against the lesions and the model (as ``medhdm evaluate``:
half-evidence shares and deletion/insertion AUC over log-spaced shares from 0.01 %;
``--curve-steps 64`` for the equal-step AUC of the tables measured before issue 16, item 6), and prints per
method the mean and bootstrap 95% CI of each metric and the seconds per case. Writes
``benchmarks/results/quality_files_<dims>d.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import BEFORE_FOCUS, KNEE_DEFAULTS, MAGNITUDE_DEFAULTS, RESULTS, write_json

from medhdm import HDM, MDM, RISE, GradCAM, GradientInput, NeuroMask, Occlusion
from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.evaluation import evaluate_manifest, format_table, summarise
from medhdm.io.manifest import load_manifest
from medhdm.models import DEFAULT_2D, DEFAULT_3D, load_default_classifier
from medhdm.pipeline import InputSpec

METRICS = (
    "pointing_game",
    "energy_in_lesion",
    "auroc",
    "auprc",
    "lesion_hit_rate",
    "deletion_half",
    "insertion_half",
    "seconds",
)


def methods_for(model, dims: int, hdm_steps: tuple[int, ...] = ()) -> dict:
    methods = {
        "HDM": HDM(model),
        **{f"HDM steps={s}": HDM(model).set_steps(s) for s in hdm_steps},
        "HDM focus=0": HDM(model, **BEFORE_FOCUS),  # the defaults before the focus term (issue 24)
        "HDM knee=0.3 magnitude=0": HDM(model, **KNEE_DEFAULTS),  # the defaults of 2026-12-05
        "HDM focus_signal=positive_gradient": HDM(model, **MAGNITUDE_DEFAULTS),  # the second defaults of 2026-12-05
        "GradientInput": GradientInput(model),
        "Occlusion": Occlusion(model),
        "RISE": RISE(model, n_masks=1000),
    }
    if dims == 2:  # on the 3D model Grad-CAM finds no layer with integer downsampling (24 slices)
        methods.update({"MDM": MDM(model), "NeuroMask": NeuroMask(model), "GradCAM": GradCAM(model)})
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--seed", type=int, default=5150)
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset, e.g. HDM (default: all); the JSON is then named after them",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--hdm-steps", default="", help="also HDM at these optimiser steps per phase, e.g. 5,10")
    parser.add_argument(
        "--curve-steps", type=int, default=None, help="equal shares of the curves (default: log-spaced shares)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    model = load_default_classifier(DEFAULT_2D if args.dims == 2 else DEFAULT_3D)
    spec = InputSpec(tuple(model.medhdm_card["recipe"]["spatial_size"]), intensity_range=LESIONBENCH_INTENSITY_RANGE)
    methods = methods_for(model, args.dims, tuple(int(s) for s in args.hdm_steps.split(",") if s))
    if args.methods:
        wanted = args.methods.split(",")
        unknown = sorted(set(wanted) - set(methods))
        if unknown:
            parser.error(f"--methods: unknown {unknown}; expected some of {sorted(methods)}")
        methods = {name: methods[name] for name in wanted}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_lesionbench(
            Path(tmp) / "cases", args.cases, args.dims, seed=args.seed, lesion_weights=(0.0, 1.0, 1.0, 1.0)
        )
        entries = load_manifest(manifest)
        for entry in entries:
            entry["class_idx"] = 1
        rows, _ = evaluate_manifest(entries, methods, spec, curve_steps=args.curve_steps, log=None)
    auc = ["deletion_auc_log", "insertion_auc_log"] if args.curve_steps is None else ["deletion_auc", "insertion_auc"]
    metrics = [*METRICS[:-1], *auc, "seconds"]
    summary = summarise(rows, metrics)
    print(
        f"{args.cases} LesionBench {args.dims}D cases (seed {args.seed}, 1-3 lesions), "
        f"model {model.medhdm_card['name']}, {time.perf_counter() - start:.0f} s"
    )
    digits = {m: 4 if m.endswith("_half") else 2 for m in metrics}
    print(format_table(summary, metrics, ci=[m for m in metrics if m != "seconds"], digits=digits))
    suffix = "" if not args.methods else "_" + args.methods.replace(",", "_").replace(" ", "").replace("=", "")
    write_json(
        RESULTS / f"quality_files_{args.dims}d{suffix}.json",
        {"cases": args.cases, "seed": args.seed, "summary": summary, "rows": rows},
    )


if __name__ == "__main__":
    main()
