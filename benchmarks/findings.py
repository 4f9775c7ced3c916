"""Lesion-level scoring of findings: CPM and sensitivity at 1 false finding per image, every method.

    python benchmarks/findings.py [--sets memory2d,memory3d,files2d,files3d] [--cases 24]
                                  [--seeds 4242,9999] [--threads 1] [--methods HDM,GradientInput]

HDM's findings come from its stages, every other method's from its map
(:mod:`medhdm.explain.findings`); all are scored by :mod:`medhdm.metrics.froc` (a hit: the finding's
peak within 5 mm of a lesion; the CPM is the mean sensitivity at 1/8 to 8 false findings per image;
95 % CIs by a bootstrap over images). The sets:

- ``memory2d`` / ``memory3d``: the held-out in-memory cases (1-3 lesions each) of each ``--seeds``
  seed, at the shipped models' grids (96 x 96 and 24 x 48 x 48), explained at the shipped spacing
  (2.604 mm; 3 x 5.208 x 5.208 mm), target class "lesion";
- ``files2d`` / ``files3d``: LesionBench studies on disk (``--files-seed``, default 5150, 1-3 lesions each,
  as ``quality_files.py``) through ``medhdm evaluate``'s pipeline, findings on the source grid.

Methods at their defaults, in 2D and 3D: HDM, MDM, NeuroMask, Gradient x Input, occlusion, RISE,
Grad-CAM and Grad-CAM++ (``--methods`` picks some). ``--first`` scores only the first cases of a set
(the in-memory cases are drawn for ``--cases`` and the first ``--first`` kept; LesionBench studies are
written for ``--cases`` and the first ``--first`` explained), so a subset of a long method is the
subset of the same set. Writes ``benchmarks/results/findings.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import RESULTS, default_methods, held_out_cases, write_json

from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.evaluation import evaluate_manifest, format_table
from medhdm.evaluation.run import froc_from_rows
from medhdm.explain.units import SHIPPED_GRIDS
from medhdm.io.manifest import load_manifest
from medhdm.metrics.froc import froc_summary, image_hits
from medhdm.models import DEFAULT_2D, DEFAULT_3D, load_default_classifier
from medhdm.pipeline import InputSpec

FILES_SEED = 5150


def memory_set(
    model, dims: int, cases: int, seed: int, methods: dict, first: int | None = None, batch: int = 8
) -> list[dict]:
    """The FROC summary of every method on ``cases`` held-out in-memory cases of ``seed`` (the first
    ``first`` of them when given)."""
    grid = SHIPPED_GRIDS[dims]
    x, lesions, _ = held_out_cases(cases, size=grid.size, seed=seed)
    x, lesions = x[:first], lesions[:first]
    cases = len(x)
    summary = []
    for name, explainer in methods.items():
        start, images = time.perf_counter(), []
        for lo in range(0, cases, batch):
            result = explainer.explain(x[lo : lo + batch], 1, spacing=grid.spacing)
            for j, found in enumerate(result.findings):
                mask = lesions[lo + j, 0].numpy()
                images.append(image_hits([f.peak for f in found], [f.score for f in found], mask, spacing=grid.spacing))
        summary.extend(froc_summary(name, images))
        print(f"  {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return summary


def files_set(
    model, dims: int, cases: int, methods: dict, first: int | None = None, seed: int = FILES_SEED
) -> list[dict]:
    """The FROC summary of every method on ``cases`` LesionBench studies of ``seed`` through the file pipeline
    (the first ``first`` of them when given)."""
    spec = InputSpec(tuple(model.medhdm_card["recipe"]["spatial_size"]), intensity_range=LESIONBENCH_INTENSITY_RANGE)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_lesionbench(Path(tmp) / "cases", cases, dims, seed=seed, lesion_weights=(0.0, 1.0, 1.0, 1.0))
        entries = load_manifest(manifest)[:first]
        for entry in entries:
            entry["class_idx"] = 1
        rows, _ = evaluate_manifest(entries, methods, spec, faithfulness=False, log=None)
    return froc_from_rows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="memory2d,memory3d,files2d,files3d")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--seeds", default="4242,9999", help="held-out seeds of the in-memory sets")
    parser.add_argument("--files-seed", type=int, default=FILES_SEED, help="seed of the LesionBench studies")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--methods", default=None, help="comma-separated subset (default: all of each set)")
    parser.add_argument("--first", type=int, default=None, help="score only the first N cases of each set")
    parser.add_argument("--out", default="findings.json", help="file name under benchmarks/results/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    results = {"cases": args.cases, "threads": args.threads, "sets": {}}
    if args.first:
        results["first"] = args.first
    for name in args.sets.split(","):
        dims = int(name[-2])
        model = load_default_classifier(DEFAULT_2D if dims == 2 else DEFAULT_3D)
        methods = default_methods(model)
        if args.methods:
            methods = {k: v for k, v in methods.items() if k in args.methods.split(",")}
        seeds = args.seeds.split(",")
        runs = [(f"{name}_seed{s}", int(s)) for s in seeds] if name.startswith("memory") else [(name, 0)]
        for key, seed in runs:
            start = time.perf_counter()
            print(f"{key}: {args.first or args.cases} of {args.cases} cases", flush=True)
            if name.startswith("memory"):
                summary = memory_set(model, dims, args.cases, seed, methods, args.first)
            else:
                summary = files_set(model, dims, args.cases, methods, args.first, args.files_seed)
            results["sets"][key] = {"seed": seed or args.files_seed, "summary": summary}
            print(format_table(summary, ["cpm", "froc_sens@1"], ci=["cpm", "froc_sens@1"]))
            print(f"  {time.perf_counter() - start:.0f} s, {args.threads} torch thread(s)", flush=True)
            write_json(RESULTS / args.out, results)


if __name__ == "__main__":
    main()
