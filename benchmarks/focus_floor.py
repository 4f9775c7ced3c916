"""HDM's contrast with a peak floor and the stage weight's power (issue 24): the ablation on the tuning seeds.

    python benchmarks/focus_floor.py --dims 2 --seeds 31,77 [--cases 24] [--threads 1] [--cache DIR]

Per set (in-memory lesion cases of ``seed``, the shipped DenseNet of ``dims``, class "lesion"): HDM once
(its stage terms, :func:`hdm_focus.stage_terms`; with ``--cache`` read from / written to
``DIR/<dims>d_<seed>.pt``, the format ``hdm_focus.py --dump`` writes) and Gradient x Input. Every map is
fused from that one call: the refined map ``T`` (the map before the focus term), the focused map with
one exponent (the defaults: ``f 0.5, gamma 1.5`` in 2D, ``f 1, gamma 2`` in 3D),
and the focused map at each focus weight ``f`` and stage-weight power ``q`` through
:func:`medhdm.explain.hdm.contrast_map` with ``gamma = 1`` and each ``beta``, which is what
``HDM(focus=f, stage_power=q, contrast=1, background_contrast=beta, knee=0)`` returns. Prints pointing / energy in
lesion / pixel AUROC / lesions hit in 2-3-lesion cases per map; writes
``benchmarks/results/focus_floor_<dims>d_<seeds>.json``.
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np
import torch
from common import RESULTS, held_out_cases, write_json
from hdm_focus import PREVIOUS_SETTINGS, rows_of, stage_terms

from medhdm import HDM, GradientInput
from medhdm.explain.hdm import contrast_map, focus_map
from medhdm.models import DEFAULT_3D, load_default_classifier

METRICS = ("pointing_game", "energy_in_lesion", "auroc", "lesion_hit_rate_multi")
GRID = [(f, q, b) for f in (0.5, 1.0, 1.5) for q in (1.0, 0.5) for b in (4.0, 6.0, 8.0)]


def terms_of(model, dims: int, seed: int, cases: int, cache: str | None) -> dict:
    """The stage terms of one HDM call on the set, Gradient x Input's maps and the lesions."""
    path = f"{cache}/{dims}d_{seed}.pt" if cache else None
    if path and os.path.exists(path):
        return torch.load(path, weights_only=False)
    size = tuple(model.medhdm_card["recipe"]["spatial_size"])
    x, lesions, _ = held_out_cases(cases, size=size, seed=seed)
    out = {
        "terms": stage_terms(HDM(model).explain(x, 1)),
        "lesions": lesions,
        "gi": GradientInput(model).explain(x, 1).saliency,
    }
    if path:
        torch.save(out, path)
    return out


def maps_of(terms, dims: int) -> dict[str, torch.Tensor]:
    refined, contributions, sensitivities, alphas = terms
    f0, g0 = PREVIOUS_SETTINGS[dims]
    maps = {"T (before the focus term)": refined}
    maps[f"one exponent (f {f0:g}, gamma {g0:g})"] = focus_map(refined, contributions, sensitivities, f0, alphas) ** g0
    for f, q, b in GRID:
        focused = focus_map(refined, contributions, sensitivities, f, alphas, q)
        maps[f"f {f:g}, q {q:g}, gamma 1, beta {b:g}"] = contrast_map(focused, 1.0, b)
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=2)
    parser.add_argument("--seeds", default="31,77")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    model = load_default_classifier() if args.dims == 2 else load_default_classifier(DEFAULT_3D)
    out = {"dims": args.dims, "cases": args.cases, "threads": args.threads, "sets": {}}
    for seed in (int(s) for s in args.seeds.split(",")):
        data = terms_of(model, args.dims, seed, args.cases, args.cache)
        maps = maps_of(data["terms"], args.dims) | {"Gradient x Input": data["gi"]}
        summary = {}
        for name, m in maps.items():
            rows = rows_of(name, m, data["lesions"])
            summary[name] = {k: float(np.nanmean([r[k] for r in rows])) for k in METRICS}
            summary[name]["hits"] = [r["lesion_hit_rate_multi"] for r in rows]
        out["sets"][str(seed)] = summary
        print(f"\n{args.dims}D seed {seed} ({len(data['lesions'])} cases): pointing / energy / AUROC / lesions hit")
        for name, s in summary.items():
            print(f"  {name:40s} " + " / ".join(f"{s[k]:.3f}" for k in METRICS), flush=True)
    write_json(RESULTS / f"focus_floor_{args.dims}d_{args.seeds.replace(',', '_')}.json", out)


if __name__ == "__main__":
    main()
