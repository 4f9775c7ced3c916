"""HDM's focus term with and without the stage weight ``w_l = alpha_l / max_k alpha_k`` (issue 24, continuity).

    python benchmarks/focus_stage_weight.py DIMS SEED CASES      # e.g. 2 4242 24, 3 9999 8 (1 thread)

One HDM call at the defaults per set (in-memory lesion cases of ``SEED``, the shipped DenseNet of ``DIMS``),
its stages focused by :func:`medhdm.explain.hdm.focus_map` with the stage weight (``new``, the default map)
and without it (``old``, every stage weighted 1, the default until this change), the map before the focus
term (``before``) and Gradient x Input (``GI``); the weighted term at other weights ``f`` and exponents
``gamma`` too. Prints pointing / energy in lesion / pixel AUROC / lesions hit in 2-3-lesion cases per map
and writes ``benchmarks/results/focus_stage_weight_<DIMS>d_<SEED>_<CASES>.json``.
"""

import sys
import time
import warnings

import numpy as np
import torch
from common import RESULTS, held_out_cases, write_json
from hdm_focus import counted_explain, rows_of, stage_terms

from medhdm import HDM, GradientInput
from medhdm.explain.hdm import focus_map
from medhdm.models import DEFAULT_3D, load_default_classifier

METRICS = ("pointing_game", "energy_in_lesion", "auroc", "lesion_hit_rate_multi")


def main() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    dims, seed, cases = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    model = load_default_classifier() if dims == 2 else load_default_classifier(DEFAULT_3D)
    size = tuple(model.medhdm_card["recipe"]["spatial_size"])
    x, lesions, _ = held_out_cases(cases, size=size, seed=seed)
    t = time.time()
    hdm, images = counted_explain(HDM(model), x)
    gi, _ = counted_explain(GradientInput(model), x)
    T, C, D, A = stage_terms(hdm)
    f, g = {2: (0.5, 1.5), 3: (1.0, 2.0)}[dims]
    maps = {"new": hdm.saliency, "old": focus_map(T, C, D, f) ** g, "before": T, "GI": gi.saliency}
    for ff in (0.5, 1.0, 1.5):
        for gg in (1.0, 1.5, 2.0, 2.5):
            maps[f"new f{ff} g{gg}"] = focus_map(T, C, D, ff, A) ** gg
    out = {}
    for k, m in maps.items():
        rows = rows_of(k, m, lesions)
        out[k] = {met: float(np.nanmean([r[met] for r in rows])) for met in METRICS}
        out[k]["rows"] = rows
    out["images"] = images
    write_json(RESULTS / f"focus_stage_weight_{dims}d_{seed}_{cases}.json", out)
    print(dims, seed, cases, f"{time.time() - t:.0f}s images {images:.1f}")
    for k in maps:
        print(f"  {k:18s}", " ".join(f"{out[k][m]:.3f}" for m in METRICS))


if __name__ == "__main__":
    main()
