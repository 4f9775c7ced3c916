"""HDM's focused map (issue 24): the ablation on the tuning seeds, the before/after on the held-out sets.

    python benchmarks/hdm_focus.py [--dims 2,3] [--seeds 31,77] [--cases 24] [--threads 1] [--out NAME]

Per set (in-memory lesion cases of ``seed``, 1-3 lesions, the shipped 2D DenseNet at 96 x 96 and 3D
DenseNet at 24 x 48 x 48, class "lesion"): HDM at its defaults once, its images through the model per
explanation counted by a hook on the model (as ``cost_curve.py`` does), and Gradient x Input. The
rows of the ablation are computed from that one call's stages: the refined map without the gradient
magnitude, ``T0 = norm(S + max_l d_l)`` (the fused masks ``masks["fused"]`` and the stages' pixel signals;
the map of the defaults before the focus term, ``HDM(**common.BEFORE_FOCUS)``) focused by
:func:`medhdm.explain.hdm.focus_map` at each weight ``f`` and raised to each exponent ``gamma``, which
is what ``HDM(focus=f, contrast=gamma, knee=0)`` returns (the stages do not depend on either), and at the
dimension's ``f`` through :func:`medhdm.explain.hdm.knee_map` at each knee, slope and exponent above the knee
(``HDM(knee=t, knee_slope=k, contrast=gamma, magnitude=0)``), and with the stages' gradient magnitudes added
at each weight ``m`` of :data:`MAGNITUDES`, ``norm(S + max_l d_l + m max_l a_l)``, focused at the dimension's
``f`` and through the default knee (``HDM(magnitude=m)``), and at the default ``m`` through each knee of
:data:`MAGNITUDE_KNEES` (``HDM(knee=t)``); at the default magnitude and knee each focus weight of :data:`FOCUS_WEIGHTS`
with the focus term on the stages' refinement signals ``norm(d_l + m a_l)`` (``HDM(focus=f)``) and on ``d_l`` alone
(``HDM(focus=f, focus_signal="positive_gradient")``).
Quality: pointing game, energy in lesion, pixel AUROC,
lesions hit in 2-3-lesion cases (mean and 95 % bootstrap CI over cases; also with the hit count's floor at
0.1 and 0.3 of the maximum instead of 0.2), and the paired differences of the defaults against the map
before the focus term, the one-exponent map, the knee without the magnitude and the focus term on ``d_l``
(``common.MAGNITUDE_DEFAULTS``). Seeds 31 and 77 chose the
defaults; 4242 and 9999 are the held-out sets, run once after the choice. Writes
``benchmarks/results/<out>.json`` (default ``hdm_focus_<seeds>.json``).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from common import RESULTS, held_out_cases, write_json

from medhdm import HDM, GradientInput
from medhdm.evaluation import format_table, paired_comparison, summarise
from medhdm.evaluation.scoring import score_row
from medhdm.explain.hdm import focus_map, focus_signals, knee_map
from medhdm.explain.maps import normalise
from medhdm.metrics.localisation import lesion_hit_rate
from medhdm.models import DEFAULT_3D, load_default_classifier

QUALITY = ("pointing_game", "energy_in_lesion", "auroc", "lesion_hit_rate_multi")
#: lesions hit in 2-3-lesion cases with the hit count's floor at other shares of the maximum than its 0.2
FLOORS = {"lesion_hit_rate_multi_01": 0.1, "lesion_hit_rate_multi_03": 0.3}
BEFORE = "HDM before (focus 0, contrast 1)"
DEFAULTS = "HDM defaults"
#: the focused map with one exponent (the defaults before the knee)
PREVIOUS = "HDM focused, one exponent (f 0.5, gamma 1.5 in 2D; f 1, gamma 2 in 3D)"
PREVIOUS_SETTINGS = {2: (0.5, 1.5), 3: (1.0, 2.0)}
#: (focus weight, contrast exponent) of the ablation
GRID = [(f, g) for f in (0.0, 0.5, 1.0) for g in (1.0, 1.5, 2.0, 2.5)]
#: (knee, slope, exponent above the knee) of the knee's ablation, at the dimension's focus weight
KNEES = [(t, k, g) for t in (0.2, 0.3) for k in (2.0, 3.0, 4.0) for g in (1.0, 1.25)]
#: weights ``m`` of the stages' gradient magnitude in the refined map, at the default focus weight and knee
MAGNITUDES = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
#: knees (slope 2) at the default focus weight and gradient magnitude
MAGNITUDE_KNEES = (0.15, 0.2, 0.25, 0.3)
#: focus weights ``f`` at the default knee, gradient magnitude and focus signal, each with the focus term on the stages'
#: refinement signals and on the positive gradient alone
FOCUS_WEIGHTS = (0.25, 0.5, 0.75, 1.0)
DEFAULT_SETTINGS = HDM(torch.nn.Identity())  # (reads the default focus weight and knee per dimension)
#: the defaults of 2026-12-05: the focus term and the knee on the refined map without the gradient magnitude
KNEE = "HDM knee, no magnitude (the defaults of 2026-12-05)"
#: the defaults of 2026-12-05 with the gradient magnitude in the refined map only, the focus term on ``d_l`` at the
#: weight of :data:`PREVIOUS_SETTINGS` (``common.MAGNITUDE_DEFAULTS``)
FOCUS_ON_GRADIENT = "HDM magnitude, focus on the positive gradient (the defaults of 2026-12-05, second)"


def counted_explain(explainer, x):
    """``explainer.explain(x, 1)`` and the images the model saw per explanation (a forward pre-hook)."""
    counted: list[int] = []
    hook = explainer.model.register_forward_pre_hook(lambda _m, args: counted.append(args[0].shape[0]))
    try:
        result = explainer.explain(x, 1)
    finally:
        hook.remove()
    return result, sum(counted) / x.shape[0]


def before_focus_map(explanation, magnitude: float = 0.0) -> torch.Tensor:
    """The refined map of one HDM explanation (at ``refine = 1``) with the stages' gradient magnitude at weight
    ``magnitude``: ``norm(S + max_l d_l + m max_l a_l)``; ``magnitude = 0`` is the map before the focus term."""
    stages = explanation.stages
    signal = torch.stack([s.sensitivity for s in stages], dim=0).amax(dim=0)
    refined = explanation.masks["fused"] + signal
    if magnitude:
        refined = refined + magnitude * torch.stack([s.magnitude for s in stages], dim=0).amax(dim=0)
    return normalise(refined)


def stage_terms(explanation) -> tuple[torch.Tensor, list, list, list]:
    """What :func:`~medhdm.explain.hdm.focus_map` reads from one HDM explanation: the map before the focus
    term (:func:`before_focus_map`), each stage's new region (its map outside what earlier stages removed),
    signal and fusion weight."""
    stages = explanation.stages
    previous = [torch.zeros_like(stages[0].removed)] + [s.removed for s in stages[:-1]]
    contributions = [s.map * (1 - r) for s, r in zip(stages, previous)]
    return before_focus_map(explanation), contributions, [s.sensitivity for s in stages], [s.alpha for s in stages]


def variants(explanation) -> dict[str, torch.Tensor]:
    """The ablation's maps, by name, from one HDM explanation (see the module docstring)."""
    refined, contributions, sensitivities, alphas = stage_terms(explanation)
    f0, g0 = PREVIOUS_SETTINGS[refined.ndim - 2]
    weights = {f0, *(f for f, _ in GRID)}
    focused = {f: focus_map(refined, contributions, sensitivities, f, alphas) for f in weights}  # once per weight
    maps = {PREVIOUS: focused[f0] ** g0}
    for f, g in GRID:
        maps[f"focus {f:g}, contrast {g:g}"] = focused[f] ** g
    for t, k, g in KNEES:
        maps[f"focus {f0:g}, knee {t:g}, slope {k:g}, contrast {g:g}"] = knee_map(focused[f0], g, t, k)
    maps[KNEE] = maps[f"focus {f0:g}, knee 0.3, slope 2, contrast 1"]
    dims = refined.ndim - 2
    f, t, k, m0 = (getattr(DEFAULT_SETTINGS, key)[dims] for key in ("focus", "knee", "knee_slope", "magnitude"))
    refined_m0, signals_m0 = before_focus_map(explanation, m0), focus_signals(explanation.stages, 1.0, m0)
    for weight in FOCUS_WEIGHTS:
        for label, signals in (("refinement", signals_m0), ("positive gradient", sensitivities)):
            focused_f = focus_map(refined_m0, contributions, signals, weight, alphas)
            maps[f"focus {weight:g} on the {label}, knee {t:g}"] = knee_map(focused_f, 1.0, t, k)
    maps[FOCUS_ON_GRADIENT] = knee_map(focus_map(refined_m0, contributions, sensitivities, f0, alphas), 1.0, t, k)
    for m in MAGNITUDES:
        signals = focus_signals(explanation.stages, 1.0, m)
        focused_m = focus_map(before_focus_map(explanation, m), contributions, signals, f, alphas)
        maps[f"magnitude {m:g}"] = knee_map(focused_m, 1.0, t, k)
        if m == m0:
            for knee in MAGNITUDE_KNEES:
                maps[f"magnitude {m:g}, knee {knee:g}"] = knee_map(focused_m, 1.0, knee, k)
    return maps


def rows_of(name: str, maps: torch.Tensor, lesions: torch.Tensor, **extra) -> list[dict]:
    out = []
    for i in range(maps.shape[0]):
        row = {"method": name, "case": i, **score_row(maps[i], lesions[i]), **extra}
        row["lesion_hit_rate_multi"] = row["lesion_hit_rate"] if row["n_lesions"] >= 2 else float("nan")
        for key, floor in FLOORS.items():
            hit = lesion_hit_rate(maps[i].detach().cpu().numpy(), lesions[i].cpu().numpy() > 0, min_peak=floor)
            row[key] = hit if row["n_lesions"] >= 2 else float("nan")
        out.append(row)
    return out


def run(model, dims: int, seed: int, cases: int, dump: str | None = None) -> dict:
    """Rows of every map on one set, the paired comparison of the defaults against the map before."""
    size = tuple(model.medhdm_card["recipe"]["spatial_size"])
    x, lesions, _ = held_out_cases(cases, size=size, seed=seed)
    start = time.perf_counter()
    hdm, images = counted_explain(HDM(model), x)
    seconds = (time.perf_counter() - start) / cases
    gi, gi_images = counted_explain(GradientInput(model), x)
    if dump:  # the stage terms, to fuse again offline
        terms = {
            "terms": stage_terms(hdm),
            "magnitudes": [s.magnitude for s in hdm.stages],
            "fused": hdm.masks["fused"],
        }
        torch.save({**terms, "lesions": lesions, "gi": gi.saliency}, f"{dump}/{dims}d_{seed}.pt")
    rows = rows_of(DEFAULTS, hdm.saliency, lesions, images=images, seconds=seconds)
    rows += rows_of(BEFORE, before_focus_map(hdm), lesions, images=images)
    rows += rows_of("GradientInput", gi.saliency, lesions, images=gi_images)
    for name, maps in variants(hdm).items():
        rows += rows_of(name, maps, lesions, images=images)
    paired = {metric: paired_comparison(rows, DEFAULTS, BEFORE, metric) for metric in (*QUALITY, *FLOORS)}
    previous = {metric: paired_comparison(rows, DEFAULTS, PREVIOUS, metric) for metric in (*QUALITY, *FLOORS)}
    knee = {metric: paired_comparison(rows, DEFAULTS, KNEE, metric) for metric in (*QUALITY, *FLOORS)}
    on_gradient = {
        metric: paired_comparison(rows, DEFAULTS, FOCUS_ON_GRADIENT, metric) for metric in (*QUALITY, *FLOORS)
    }
    summary = summarise(rows, [*QUALITY, *FLOORS, "images"])
    return {
        "rows": rows,
        "summary": summary,
        "paired_defaults_minus_before": paired,
        "paired_defaults_minus_one_exponent": previous,
        "paired_defaults_minus_knee": knee,
        "paired_defaults_minus_focus_on_gradient": on_gradient,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="2,3")
    parser.add_argument("--seeds", default="31,77")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument("--dump", default=None, help="a folder to store each set's stage terms in (torch.save)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    out = {"cases": args.cases, "threads": args.threads, "runs": {}}
    start = time.perf_counter()
    for dims in (int(d) for d in args.dims.split(",")):
        model = load_default_classifier() if dims == 2 else load_default_classifier(DEFAULT_3D)
        for seed in (int(s) for s in args.seeds.split(",")):
            result = run(model, dims, seed, args.cases, args.dump)
            out["runs"][f"{dims}d/{seed}"] = result
            print(f"\n{dims}D, seed {seed}, {args.cases} cases ({time.perf_counter() - start:.0f} s)\n", flush=True)
            digits = {"pointing_game": 2, "energy_in_lesion": 3, "auroc": 4, "lesion_hit_rate_multi": 2, "images": 0}
            digits |= {key: 2 for key in FLOORS}
            columns = [*QUALITY, *FLOORS, "images"]
            print(format_table(result["summary"], columns, ci=list(QUALITY), digits=digits), flush=True)
            for metric, p in result["paired_defaults_minus_before"].items():
                print(f"  defaults - before, {metric}: {p}")
            for metric, p in result["paired_defaults_minus_one_exponent"].items():
                print(f"  defaults - one exponent, {metric}: {p}")
            for metric, p in result["paired_defaults_minus_knee"].items():
                print(f"  defaults - knee without magnitude, {metric}: {p}")
            for metric, p in result["paired_defaults_minus_focus_on_gradient"].items():
                print(f"  defaults - focus on the positive gradient, {metric}: {p}")
    name = args.out or f"hdm_focus_{args.seeds.replace(',', '_')}"
    write_json(RESULTS / f"{name}.json", out)


if __name__ == "__main__":
    main()
