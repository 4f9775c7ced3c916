"""The trade-off of HDM's focus levers (issue 24): lesions hit against energy in lesion and pixel AUROC.

    python benchmarks/focus_frontier.py [--dims 2,3] [--seeds 31,77] [--cases 24] [--threads 1] [--out NAME]

Per set (in-memory lesion cases of ``seed``, 1-3 lesions, the shipped 2D and 3D DenseNets, class "lesion"):
HDM once at its defaults and Gradient x Input. From the one HDM call's stages (as ``hdm_focus.py`` does) the map
at each point ``(m, f, t)`` of :data:`GRID`: the refined map with the stages' gradient magnitude at weight ``m``,
focused at weight ``f`` on the stages' refinement signals and shaped by the knee ``t`` (slope 2), which is what
``HDM(magnitude=m, focus=f, knee=t)`` returns. ``(0, 0, 0.2)`` hits the same lesions as the map before the focus
term (the knee keeps every value at or above the hit count's floor of 0.2 of the maximum, and the voxels' order).
Per set and map: the means over cases of energy in lesion, pixel AUROC and pointing, lesions hit in 2-3-lesion
cases (a constant map, as Gradient x Input's where the gradient is 0, is left out of the means, as ``summarise``
leaves out its NaN), and the lesions it hits and misses against the map before the focus term
(``HDM(**common.BEFORE_FOCUS)``), counted per case; per set, the name of the grid point that is HDM's defaults.
Writes ``benchmarks/results/<out>.json`` (default ``focus_frontier_<seeds>.json``): per set and map these figures
and the lesions hit per case (the map before also the lesions per case).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch
from common import RESULTS, held_out_cases, write_json
from hdm_focus import DEFAULT_SETTINGS, before_focus_map, counted_explain, stage_terms
from scipy import ndimage

from medhdm import HDM, GradientInput
from medhdm.explain.hdm import focus_map, focus_signals, knee_map
from medhdm.metrics.localisation import auroc, energy_in_lesion, lesion_hit_rate, pointing_game
from medhdm.models import DEFAULT_3D, load_default_classifier

#: (gradient magnitude ``m``, focus weight ``f``, knee ``t``) of the grid; HDM's defaults are among its points (each
#: set's figures name them under ``defaults``)
GRID = [(m, f, t) for m in (0.0, 0.2) for f in (0.0, 0.25, 0.5, 1.0) for t in (0.2, 0.3, 0.5)]
BEFORE = "before the focus term"
METRICS = {"energy_in_lesion": energy_in_lesion, "auroc": auroc, "pointing_game": pointing_game}


def point_name(m: float, f: float, t: float) -> str:
    """The name of the grid point ``(m, f, t)`` in the results."""
    return f"magnitude {m:g}, focus {f:g}, knee {t:g}"


def grid_maps(explanation) -> dict[str, torch.Tensor]:
    """The map before the focus term and the map at each point of :data:`GRID`, by name, from one HDM call."""
    _, contributions, _, alphas = stage_terms(explanation)
    maps = {BEFORE: before_focus_map(explanation)}
    for m in dict.fromkeys(m for m, _, _ in GRID):
        refined, signals = before_focus_map(explanation, m), focus_signals(explanation.stages, 1.0, m)
        for f in dict.fromkeys(f for m2, f, _ in GRID if m2 == m):
            focused = focus_map(refined, contributions, signals, f, alphas)
            for t in (t for m2, f2, t in GRID if (m2, f2) == (m, f)):
                maps[point_name(m, f, t)] = knee_map(focused, 1.0, t, 2.0)
    return maps


def set_figures(maps: torch.Tensor, lesions: torch.Tensor, before_hits: list[int | None] | None) -> dict:
    """The means over cases of :data:`METRICS`, lesions hit in 2-3-lesion cases, the lesions hit per case, and the
    lesions gained and lost against ``before_hits`` (per case, lesions hit; ``None``: this is the map before, whose
    figures hold the lesions per case instead)."""
    s, m = maps.detach().cpu().numpy()[:, 0], lesions.cpu().numpy()[:, 0] > 0
    out = {key: float(np.nanmean([fn(s[i], m[i]) for i in range(len(s))])) for key, fn in METRICS.items()}
    hits: list[int | None] = []  # None: a constant map (no peak; left out, as ``summarise`` leaves out its NaN)
    counts = []
    for i in range(len(s)):
        n = ndimage.label(m[i], structure=np.ones((3,) * m[i].ndim))[1]  # full connectivity, as the hit count
        rate = lesion_hit_rate(s[i], m[i])
        counts.append(n)
        hits.append(None if math.isnan(rate) else round(rate * n))
    multi = [i for i, n in enumerate(counts) if n >= 2 and hits[i] is not None]
    out["lesion_hit_rate_multi"] = math.fsum(hits[i] / counts[i] for i in multi) / len(multi)
    out["constant_maps"] = sum(h is None for h in hits)
    out["hits"] = hits
    if before_hits is None:
        out["lesions"] = counts  # per case, its lesion components (the hits' denominators)
    else:
        paired = [i for i in multi if before_hits[i] is not None]
        out["lesions_gained"] = sum(max(0, hits[i] - before_hits[i]) for i in paired)
        out["lesions_lost"] = sum(max(0, before_hits[i] - hits[i]) for i in paired)
    return out


def run(model, dims: int, seed: int, cases: int) -> dict:
    size = tuple(model.medhdm_card["recipe"]["spatial_size"])
    x, lesions, _ = held_out_cases(cases, size=size, seed=seed)
    hdm, images = counted_explain(HDM(model), x)
    gi = GradientInput(model).explain(x, 1)
    maps = grid_maps(hdm)
    before = set_figures(maps.pop(BEFORE), lesions, None)
    out = {BEFORE: before, "GradientInput": set_figures(gi.saliency, lesions, before["hits"])}
    out |= {name: set_figures(s, lesions, before["hits"]) for name, s in maps.items()}
    out["images"] = images
    out["defaults"] = point_name(*(getattr(DEFAULT_SETTINGS, k)[dims] for k in ("magnitude", "focus", "knee")))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="2,3")
    parser.add_argument("--seeds", default="31,77")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    out = {"cases": args.cases, "threads": args.threads, "grid": GRID, "runs": {}}
    start = time.perf_counter()
    for dims in (int(d) for d in args.dims.split(",")):
        model = load_default_classifier() if dims == 2 else load_default_classifier(DEFAULT_3D)
        for seed in (int(s) for s in args.seeds.split(",")):
            result = run(model, dims, seed, args.cases)
            out["runs"][f"{dims}d/{seed}"] = result
            print(f"\n{dims}D, seed {seed} ({time.perf_counter() - start:.0f} s)", flush=True)
            for name, fig in result.items():
                if not isinstance(fig, dict):  # the images per explanation, the defaults' name
                    continue
                print(
                    f"  {name:40s} energy {fig['energy_in_lesion']:.3f} AUROC {fig['auroc']:.4f} "
                    f"pointing {fig['pointing_game']:.2f} hits {fig['lesion_hit_rate_multi']:.3f} "
                    f"+{fig.get('lesions_gained', 0)} -{fig.get('lesions_lost', 0)}",
                    flush=True,
                )
    name = args.out or f"focus_frontier_{args.seeds.replace(',', '_')}"
    write_json(RESULTS / f"{name}.json", out)


if __name__ == "__main__":
    main()
