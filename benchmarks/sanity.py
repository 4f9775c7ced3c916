"""Model-randomisation sanity check (Adebayo et al., 2018) of every method, 2D and 3D.

    python benchmarks/sanity.py [--cases 6] [--volumes 4] [--threads 2]

For each method at its default settings: the mean Spearman rank correlation between its
maps of the shipped classifier and of a weight-randomised copy
(:func:`medhdm.metrics.sanity_check`: the randomised model is explained with another
explainer seed, so random methods are not correlated through shared draws), on held-out
lesion cases (2D, 96 x 96, seed 77) and volumes (3D, 24 x 48 x 48, seed 77), and the
agreement of two explainer seeds on the trained model (:func:`medhdm.metrics.seed_agreement`,
1.0 for deterministic methods), the noise floor of random methods. Near 0 passes; HDM's
defaults must stay below 0.2. Grad-CAM and Grad-CAM++ are left out in 3D (no layer of the
3D network has an integer downsampling of its 24 slices). Also HDM's defaults until
2026-11-27. Writes ``benchmarks/results/sanity.json``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from common import RESULTS, default_methods, held_out_cases, write_json
from quality_2d import hdm_until_2026_11_27, hdm_until_2026_11_28

from medhdm import HDM
from medhdm.metrics import sanity_check, seed_agreement
from medhdm.models import DEFAULT_3D, load_default_classifier

SANITY_SEED = 77  # the case seed; disjoint from the held-out benchmark set (4242)


def factories(dims: int, model) -> dict:
    """Explainer builders by method name (a fresh explainer per model)."""
    names = list(default_methods(model))
    builders = {name: (lambda m, name=name: default_methods(m)[name]) for name in names}
    builders = {
        "HDM": builders.pop("HDM"),
        "HDM masks only (refine None)": lambda m: HDM(m, refine=None),
        "HDM (defaults of 2026-11-27)": hdm_until_2026_11_28,
        "HDM (defaults until 2026-11-27)": hdm_until_2026_11_27,
        **builders,
    }
    if dims == 3:
        builders = {k: v for k, v in builders.items() if not k.startswith("GradCAM")}
    return builders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6, help="2D cases")
    parser.add_argument("--volumes", type=int, default=4, help="3D volumes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated method names to leave out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    out = {"cases": args.cases, "volumes": args.volumes, "seed": SANITY_SEED, "methods": {}}
    rows: dict[str, dict] = {}
    for dims, n in ((2, args.cases), (3, args.volumes)):
        model = load_default_classifier() if dims == 2 else load_default_classifier(DEFAULT_3D)
        size = tuple(model.medhdm_card["recipe"]["spatial_size"])
        x, _, _ = held_out_cases(n, size=size, seed=SANITY_SEED)
        for name, make in factories(dims, model).items():
            if name in set(filter(None, args.skip.split(","))):
                continue
            start = time.perf_counter()
            corr = sanity_check(make, model, x, class_idx=1)
            entry = rows.setdefault(name, {})
            entry[f"sanity_{dims}d"] = float(np.nanmean(corr))
            entry[f"sanity_{dims}d_per_case"] = corr
            if dims == 2:
                entry["seed_agreement_2d"] = float(np.nanmean(seed_agreement(make, model, x, class_idx=1)))
            print(f"  {dims}D {name}: {entry[f'sanity_{dims}d']:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)
    out["methods"] = rows
    print(f"\nSpearman, trained vs randomised model (mean over {args.cases} 2D cases / {args.volumes} 3D volumes)\n")
    print("| method | sanity 2D | sanity 3D | two seeds agree (2D) |")
    print("| --- | --- | --- | --- |")
    for name, e in rows.items():
        cells = [f"{e[k]:.2f}" if k in e else "-" for k in ("sanity_2d", "sanity_3d", "seed_agreement_2d")]
        print(f"| {name} | " + " | ".join(cells) + " |")
    write_json(RESULTS / "sanity.json", out)
    print(f"wrote {RESULTS / 'sanity.json'}")


if __name__ == "__main__":
    main()
