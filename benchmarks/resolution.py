"""HDM on the same anatomy at 96, 128 and 192 pixels across: sizes in millimetres against sizes in voxels.

    python benchmarks/resolution.py [--cases 24] [--sizes 96,128,192] [--steps 5] [--threads 1]

The held-out 96 x 96 cases (1-3 lesions; ``common.held_out_cases``) lie on a 250 mm field of
view, the LesionBench files' geometry (250/96 = 2.604 mm, the shipped 2D model's native grid).
Each is resampled to 128 and 192 pixels across (images bilinear, lesion labels nearest):
the same anatomy at 1.953 and 1.302 mm.

The shipped DenseNet does not classify the upsampled cases: it was trained at one resolution
and is not scale invariant (the first table: lesion cases at 192 pixels read p(lesion) about
0.2). The classifier here is therefore the shipped DenseNet behind an antialiased bilinear resize
to its 96 x 96 input (``Resampled``), as a deployment that resamples to the training grid
has it: at 96 pixels it is the shipped model exactly, and it decides every resolution alike, so
that only the explainer's view of the image changes with the resolution.

Explained with HDM (``--steps`` per mask phase, default 5 = HDM's default) given the spacing
(sizes in mm, :mod:`medhdm.explain.units`) and without it (sizes in voxels, the fallback), and
Gradient x Input (in voxels) as a reference. Scores: pointing game, pixel AUROC, lesions hit in
2-3-lesion cases, mean [95% bootstrap CI]; and per resolution the paired difference of each HDM
from itself at 96 pixels (bootstrap CI, Wilcoxon). Writes ``benchmarks/results/resolution.json``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from common import BENCH_SEED, RESULTS, held_out_cases, write_json
from torch import nn

from medhdm import HDM, GradientInput
from medhdm.data import make_dataset, stack_cases
from medhdm.evaluation import compare_methods, format_table, paired_comparison, summarise
from medhdm.explain.units import SHIPPED_GRIDS
from medhdm.models import load_default_classifier

QUALITY = ("pointing_game", "auroc", "lesion_hit_rate_multi")
FIELD_OF_VIEW_MM = 250.0


class Resampled(nn.Module):
    """``net`` behind an antialiased bilinear resize of its input to ``size`` (identity at that size)."""

    def __init__(self, net: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.net, self.size = net, tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        return self.net(x)


class AtSpacing:
    """An explainer called with a fixed ``spacing`` (``compare_methods`` calls ``explain(x, class_idx)``)."""

    def __init__(self, explainer, spacing: tuple[float, ...]) -> None:
        self.explainer, self.spacing = explainer, spacing

    def explain(self, x: torch.Tensor, class_idx=None):
        return self.explainer.explain(x, class_idx, spacing=self.spacing)


def resample(x: torch.Tensor, labels: torch.Tensor | None, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images ``(N, 1, 96, 96)`` bilinear and label maps nearest (if given), to ``size`` pixels across."""
    if size == x.shape[-1]:
        return x, labels
    image = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    lesions = None if labels is None else F.interpolate(labels.float(), size=(size, size), mode="nearest").long()
    return image, lesions


def model_check(shipped: nn.Module, wrapped: nn.Module, x: torch.Tensor, healthy: torch.Tensor, sizes) -> list[dict]:
    """p(lesion) and accuracy of the shipped and the resampling classifier on the lesion and healthy cases."""
    rows = []
    for size in sizes:
        for name, model in (("shipped DenseNet", shipped), ("resize to 96, DenseNet", wrapped)):
            for cases, images in (("lesion", x), ("healthy", healthy)):
                with torch.no_grad():
                    p = torch.softmax(model(resample(images, None, size)[0]), 1)[:, 1]
                correct = (p > 0.5) if cases == "lesion" else (p <= 0.5)
                rows.append(
                    {
                        "size": size,
                        "classifier": name,
                        "cases": cases,
                        "p_mean": float(p.mean()),
                        "p_min": float(p.min()),
                        "p_max": float(p.max()),
                        "accuracy": float(correct.float().mean()),
                    }
                )
    return rows


def grids_of(hdm: HDM, size: int, spacing) -> str:
    """The mask grids (benchmark / auxiliary) and the fused map's sigma HDM uses on ``size`` pixels."""
    x = torch.zeros(1, 1, size, size)
    units = hdm.physical_settings(2) if spacing is not None else None
    if units is None:
        from medhdm.explain.masks import grid_shapes

        bench, aux = grid_shapes((size, size), hdm.benchmark_grids), grid_shapes((size, size), hdm.auxiliary_grids)
    else:
        bench = units.grid_shapes("benchmark", (size, size), spacing)
        aux = units.grid_shapes("auxiliary", (size, size), spacing)
    sigma = hdm._sigma(x, spacing)
    sigma = sigma[0] if isinstance(sigma, tuple) else sigma
    return f"{','.join(str(g[0]) for g in bench)} / {','.join(str(g[0]) for g in aux)}, sigma {sigma:g} px"


def run_size(model, x, lesions, size: int, steps: int, batch_size: int) -> tuple[list[dict], dict]:
    """Rows of every method on the cases at ``size`` pixels, and the HDM settings used."""
    spacing = (FIELD_OF_VIEW_MM / size,) * 2
    images, labels = resample(x, lesions, size)
    hdm = HDM(model)
    if steps != hdm.benchmark_objective.steps:  # another step count than HDM's default
        hdm = hdm.set_steps(steps)
    methods = {
        f"HDM mm @{size}": AtSpacing(hdm, spacing),
        f"HDM voxels @{size}": hdm,
        f"GradientInput @{size}": GradientInput(model),
    }
    rows = compare_methods(methods, images, labels, class_idx=1, batch_size=batch_size)
    settings = {f"HDM mm @{size}": grids_of(hdm, size, spacing), f"HDM voxels @{size}": grids_of(hdm, size, None)}
    return rows, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--sizes", default="96,128,192")
    parser.add_argument("--steps", type=int, default=5, help="HDM optimiser steps per mask phase (5: HDM's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    sizes = [int(s) for s in args.sizes.split(",")]
    shipped = load_default_classifier()
    model = Resampled(shipped, tuple(shipped.medhdm_card["recipe"]["spatial_size"]))
    assert SHIPPED_GRIDS[2].spacing[0] == FIELD_OF_VIEW_MM / 96  # the 96-pixel cases lie on HDM's native grid
    x, lesions, _ = held_out_cases(args.cases)
    healthy = stack_cases(make_dataset(BENCH_SEED + 1, args.cases, (96, 96), lesion_counts=(0,), weights=None))[0]
    check = model_check(shipped, model, x, healthy, sizes)
    print("The classifiers on the resampled cases (p(lesion), accuracy):\n")
    print("| pixels | classifier | cases | mean p | min p | max p | accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in check:
        print(
            f"| {r['size']} | {r['classifier']} | {r['cases']} | {r['p_mean']:.3f} | {r['p_min']:.3f} "
            f"| {r['p_max']:.3f} | {r['accuracy']:.2f} |"
        )
    rows, settings = [], {}
    for size in sizes:
        size_rows, size_settings = run_size(model, x, lesions, size, args.steps, args.batch_size)
        rows += size_rows
        settings.update(size_settings)
        print(f"  {size} pixels done ({time.perf_counter() - start:.0f} s)", flush=True)
    summary = summarise(rows, [*QUALITY, "seconds"])
    base = sizes[0]
    paired = [
        paired_comparison(rows, f"{kind} @{size}", f"{kind} @{base}", metric)
        for kind in ("HDM mm", "HDM voxels", "GradientInput")
        for size in sizes[1:]
        for metric in QUALITY
    ]
    seconds = time.perf_counter() - start
    print(f"\n{args.cases} cases per resolution, HDM steps {args.steps}, {args.threads} thread(s), {seconds:.0f} s")
    print("HDM grids (benchmark / auxiliary cells across) and fused-map sigma:")
    for name, text in settings.items():
        print(f"  {name}: {text}")
    print()
    print(format_table(summary, [*QUALITY, "seconds"], ci=list(QUALITY), digits={"auroc": 3, "seconds": 2}))
    print(f"\nPaired difference from the same method at {base} pixels (mean [95% CI], Wilcoxon p):\n")
    print("| method | metric | difference | p |\n| --- | --- | --- | --- |")
    for p in paired:
        print(
            f"| {p['a']} | {p['metric']} | {p['mean_difference']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}] "
            f"| {p['wilcoxon_p']:.3f} |"
        )
    out = {
        "cases": args.cases,
        "sizes": sizes,
        "steps": args.steps,
        "threads": args.threads,
        "seconds": round(seconds, 1),
        "field_of_view_mm": FIELD_OF_VIEW_MM,
        "model_check": check,
        "hdm_settings": settings,
        "summary": summary,
        "paired_with_first_size": paired,
        "rows": rows,
    }
    write_json(RESULTS / "resolution.json", out)
    print(f"\nwrote {RESULTS / 'resolution.json'}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
