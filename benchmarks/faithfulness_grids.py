"""Do the faithfulness columns separate methods? The demo's evaluation read with the old and the new curves.

    python benchmarks/faithfulness_grids.py [--cases 6] [--cases-3d 2] [--threads 1]

Writes the demo's LesionBench studies (``medhdm demo``'s seed; the defaults are the demo's
6 2D and 2 3D cases), explains each once with the demo's methods (:func:`medhdm.demo.demo_plans`)
through the pipeline of ``medhdm evaluate``, adds a uniform random map, and scores every map
on the classifier's grid twice, as ``medhdm evaluate`` does
(:func:`medhdm.metrics.faithfulness.faithfulness_scores`, blur reference, class "lesion"):
with 64 equal shares (``deletion_auc``, ``insertion_auc``: the columns until issue 16, item 6) and
with the default log-spaced shares from 0.01 % (``deletion_auc_log``, ``insertion_auc_log``,
``deletion_half``, ``insertion_half``). Prints per dimension the mean [95% bootstrap CI] per
method and, per column, the spread of the method means (random map left out) against the
mean CI width; writes ``benchmarks/results/faithfulness_grids_<cases>x2d_<cases-3d>x3d.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, write_json

from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.demo import DEMO_SEED, demo_plans
from medhdm.evaluation import format_table, summarise
from medhdm.io.manifest import load_manifest
from medhdm.metrics.faithfulness import faithfulness_scores
from medhdm.models import DEFAULT_3D, load_default_classifier
from medhdm.pipeline import InputSpec, explain_images

COLUMNS = (
    "insertion_auc",
    "deletion_auc",
    "insertion_auc_log",
    "deletion_auc_log",
    "insertion_half",
    "deletion_half",
)


def model_views(model, methods: dict, images: list[str]) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per method, per case: the classifier's input ``(1, C, *S)`` and the map on its grid ``(1, 1, *S)``;
    ``"random map"``: uniform noise (seeded) on Gradient x Input's inputs."""
    spec = InputSpec(tuple(model.medhdm_card["recipe"]["spatial_size"]), intensity_range=LESIONBENCH_INTENSITY_RANGE)
    views = {}
    for name, explainer in methods.items():
        results = explain_images(images, explainer, spec, [1] * len(images))
        views[name] = [(r.model_input, r.model_saliency) for r in results]
    generator = torch.Generator().manual_seed(0)
    first = next(iter(views.values()))
    views["random map"] = [(x, torch.rand(s.shape, generator=generator)) for x, s in first]
    return views


def score_views(model, views: dict) -> list[dict]:
    """One row per method and case with the :data:`COLUMNS`: both grids on the same maps."""
    rows = []
    for name, per_case in views.items():
        for case, (x, saliency) in enumerate(per_case):
            row = {"method": name, "case": case}
            for steps in (64, None):
                scores, _ = faithfulness_scores(model, x, saliency, 1, steps=steps, reference="blur")
                if steps is not None:  # the half fractions are read off the log-spaced grid
                    scores = {k: v for k, v in scores.items() if not k.endswith("_half")}
                row.update({k: v[0] for k, v in scores.items()})
            rows.append(row)
    return rows


def spread(summary: list[dict]) -> dict[str, dict]:
    """Per column: the range of the method means (random map left out) and the mean 95% CI width."""
    out = {}
    for column in COLUMNS:
        entries = [s for s in summary if s["metric"] == column and s["method"] != "random map"]
        means = [s["mean"] for s in entries]
        widths = [s["ci_high"] - s["ci_low"] for s in entries]
        out[column] = {"range": float(np.ptp(means)), "mean_ci_width": float(np.mean(widths))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6, help="2D cases (the demo's 6)")
    parser.add_argument("--cases-3d", type=int, default=2, help="3D cases (the demo's 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    plans = demo_plans(load_default_classifier(), load_default_classifier(DEFAULT_3D))
    out = {"cases": {2: args.cases, 3: args.cases_3d}, "dims": {}}
    for dims, n in ((2, args.cases), (3, args.cases_3d)):
        model, methods = plans[dims]
        with tempfile.TemporaryDirectory() as tmp:
            manifest = write_lesionbench(Path(tmp), n, dims, seed=DEMO_SEED, lesion_weights=(0.0, 1.0, 1.0, 1.0))
            images = [e["image"] for e in load_manifest(manifest)]
            rows = score_views(model, model_views(model, methods, images))
        summary = summarise(rows, COLUMNS)
        ranges = spread(summary)
        out["dims"][str(dims)] = {"summary": summary, "spread": ranges, "rows": rows}
        print(f"\n{dims}D, {n} cases (the demo's LesionBench, seed {DEMO_SEED}); mean [95% bootstrap CI]\n")
        digits = {c: 4 if c.endswith("_half") else 3 for c in COLUMNS}
        print(format_table(summary, COLUMNS, ci=True, digits=digits))
        print("\nrange of the method means (random map left out) / mean CI width:")
        print(", ".join(f"{c} {v['range']:.4g} / {v['mean_ci_width']:.4g}" for c, v in ranges.items()))
    path = RESULTS / f"faithfulness_grids_{args.cases}x2d_{args.cases_3d}x3d.json"
    write_json(path, out)
    print(f"\nwrote {path} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
