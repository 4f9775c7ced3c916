"""Is HDM's map continuous in its input? The largest change of the map when the image moves by 1e-6.

    python benchmarks/stability.py [--cases 8] [--threads 1] [--adam-eps 1e-8]

For HDM at its defaults, at the defaults of 2026-11-27 (20 steps, binarised regions) and at
the defaults with binarised regions, on held-out 2D cases (96 x 96) and 3D volumes
(24 x 48 x 48) of seed 555: each image is explained, then explained again after adding
Gaussian noise of standard deviation 1e-6 (far below any intensity step of a scan), and the
largest and median absolute change of the normalised map (values in [0, 1]) are printed.
A thresholded stage region flips when a voxel crosses the threshold, and every later stage
follows; Adam's first steps move each mask value by about the learning rate times the sign of
its gradient, so a gradient near 0 that changes sign moves the mask too. ``--adam-eps`` sets
Adam's epsilon for every mask optimiser (PyTorch's default 1e-8) to measure the second effect.
Writes ``benchmarks/results/stability.json``.
"""

from __future__ import annotations

import argparse
import functools
import warnings

import torch
from common import RESULTS, held_out_cases, write_json
from quality_2d import hdm_until_2026_11_28

from medhdm import HDM
from medhdm.models import DEFAULT_3D, load_default_classifier

STABILITY_SEED = 555  # disjoint from the benchmark (4242, 9999), sanity (77) and tuning (31) sets


def settings(model) -> dict:
    return {
        "HDM (defaults)": HDM(model),
        "HDM (defaults, binarised regions: threshold 0.3)": HDM(model, threshold=0.3),
        "HDM (defaults of 2026-11-27)": hdm_until_2026_11_28(model),
    }


def largest_changes(explainer, x: torch.Tensor) -> torch.Tensor:
    """Per image, the largest absolute change of the map when ``x`` moves by N(0, 1e-6) noise: ``(B,)``."""
    before = explainer.explain(x, 1).saliency
    generator = torch.Generator().manual_seed(0)
    after = explainer.explain(x + 1e-6 * torch.randn(x.shape, generator=generator), 1).saliency
    return (before - after).abs().flatten(1).amax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--adam-eps", type=float, default=None, help="Adam's epsilon in the mask optimisers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.adam_eps is not None:
        torch.optim.Adam = functools.partial(torch.optim.Adam, eps=args.adam_eps)
    out = {"cases": args.cases, "seed": STABILITY_SEED, "adam_eps": args.adam_eps, "rows": []}
    print("| method | dims | largest change | median of per-image largest changes |")
    print("| --- | --- | --- | --- |")
    for dims in (2, 3):
        model = load_default_classifier() if dims == 2 else load_default_classifier(DEFAULT_3D)
        size = tuple(model.medhdm_card["recipe"]["spatial_size"])
        x, _, _ = held_out_cases(args.cases, size=size, seed=STABILITY_SEED)
        for name, explainer in settings(model).items():
            change = largest_changes(explainer, x)
            row = {"method": name, "dims": dims, "max": float(change.max()), "median": float(change.median())}
            row["per_image"] = change.tolist()
            out["rows"].append(row)
            print(f"| {name} | {dims}D | {row['max']:.4f} | {row['median']:.4f} |", flush=True)
    suffix = "" if args.adam_eps is None else f"_eps{args.adam_eps:g}"
    write_json(RESULTS / f"stability{suffix}.json", out)


if __name__ == "__main__":
    main()
