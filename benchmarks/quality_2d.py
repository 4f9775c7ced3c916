"""Quality benchmark: every method on held-out 2D lesion cases, scored against the lesions.

    python benchmarks/quality_2d.py [--cases 24] [--seed 4242] [--variants]

Explains N held-out cases (1-3 lesions each, distractors, pydicom's CT/MR anatomy)
with the shipped MONAI DenseNet, target class "lesion", every method at its default
settings, and prints per method the mean and bootstrap 95% CI of each metric over
cases, the lesion hit rate on cases with 2-3 lesions, seconds per image, and the model
work per explanation: images (composites) sent through the model, forward and backward
passes (each pass runs on a batch; the counts are per call of one batch, images per image).
``--variants`` also runs the HDM settings that were tried when the defaults were chosen.
``--seed`` draws another set of cases (4242 is the held-out set).
Writes ``benchmarks/results/quality_2d.json`` (``quality_2d_seed<N>.json`` for another seed).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from common import BEFORE_FOCUS, BENCH_SEED, RESULTS, default_methods, held_out_cases, write_json

from medhdm import HDM, MaskObjective
from medhdm import HDM as _HDM
from medhdm.evaluation import compare_methods, format_table, summarise
from medhdm.metrics import LOCALISATION_KEYS
from medhdm.models import load_default_classifier


def hdm_until_2026_11_27(model) -> HDM:
    """HDM's defaults before issue 16: 100 steps at lr 0.1 on three grids per phase, three stages,
    the pixel refinement by |gradient x (x - r)| (which fails the model-randomisation check), no focus term."""
    return HDM(
        model,
        benchmark_grids=(32, 16, 8),
        auxiliary_grids=(8, 4, 2),
        max_stages=3,
        benchmark_objective=MaskObjective(steps=100, area=0.02, lambda_area=30.0, lambda_del=1.0),
        volume_benchmark_objective=MaskObjective(steps=100, lambda_area=1.0, lambda_del=1.0),
        auxiliary_objective=MaskObjective(steps=100, lambda_area=1.0, lambda_tv=1.0, lambda_del=1.0),
        refine=0.2,
        refine_by="gradient_input",
        threshold=0.3,
        **BEFORE_FOCUS,
    )


def hdm_until_2026_11_28(model) -> HDM:
    """HDM's defaults of 2026-11-27: 20 steps per phase, binarised regions (threshold 0.3), the
    3D benchmark masks' mean-area penalty, the refinement signal smoothed with the edge replicated, no focus term."""
    return HDM(
        model,
        volume_benchmark_objective=MaskObjective(lr=0.3, final_lr=0.03, lambda_area=1.0, lambda_del=1.0),
        threshold=0.3,
        signal_padding="replicate",
        **BEFORE_FOCUS,
    ).set_steps(20)


def hdm_variants(model) -> dict:
    """The HDM settings compared when the defaults were chosen (see the closing note of issue 3).

    The variants before 2026-11-26 ran with the sufficiency fusion and no smoothing of the
    fused map; they keep those settings here so that their rows reproduce. Every variant keeps
    the grids, stages and mask schedules of the defaults until 2026-11-27 (``old``).
    """
    old = vars(hdm_until_2026_11_27(model))
    old = {
        k: old[k]
        for k in (
            "benchmark_grids",
            "auxiliary_grids",
            "max_stages",
            "benchmark_objective",
            "volume_benchmark_objective",
            "auxiliary_objective",
        )
    }
    before = {"fusion": "sufficiency", "smooth": None, "refine": None}

    def HDM(model, **kw):  # (the variants below as written when they were run)
        return _HDM(model, **{**old, **BEFORE_FOCUS, **kw})

    def h(la=2.0, ld=0.0, tv=1.0, **kw):
        return HDM(
            model,
            benchmark_objective=MaskObjective(lambda_area=la, lambda_del=ld),
            auxiliary_objective=MaskObjective(lambda_area=la, lambda_del=ld, lambda_tv=tv),
            **{**before, **kw},
        )

    return {
        "HDM preservation only (la 2)": h(),
        "HDM preservation only (la 4)": h(la=4.0),
        "HDM + deletion (la 2, ld 1)": h(ld=1.0),
        "HDM + deletion (la 1, ld 1), the default until 2026-11-26": h(la=1.0, ld=1.0),
        "HDM + deletion (la 1, ld 1), fusion drop": h(la=1.0, ld=1.0, fusion="drop"),
        "HDM + deletion (la 1, ld 1), fusion learned": h(la=1.0, ld=1.0, fusion="learned"),
        "HDM + deletion, benchmark area 2 % (la 30), auxiliary area 2 % (la 30)": HDM(
            model,
            benchmark_objective=MaskObjective(area=0.02, lambda_area=30.0, lambda_del=1.0),
            auxiliary_objective=MaskObjective(area=0.02, lambda_area=30.0, lambda_del=1.0, lambda_tv=1.0),
            **before,
        ),
        "HDM + deletion, benchmark area 1 % (la 30)": HDM(
            model, benchmark_objective=MaskObjective(area=0.01, lambda_area=30.0, lambda_del=1.0), **before
        ),
        "HDM deletion only (la 1, ld 1, keep 0)": HDM(
            model,
            benchmark_objective=MaskObjective(lambda_area=1.0, lambda_del=1.0, lambda_keep=0.0),
            auxiliary_objective=MaskObjective(lambda_area=1.0, lambda_del=1.0, lambda_keep=0.0, lambda_tv=1.0),
            **before,
        ),
        "HDM area 2 % (la 30, ld 1), sufficiency fusion, no smoothing: the defaults of 2026-11-26, earlier": HDM(
            model, **before
        ),
        "HDM masks only (refine None), sufficiency fusion": HDM(model, fusion="sufficiency", refine=None),
        "HDM masks only (refine None), no smoothing": HDM(model, smooth=None, refine=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--seed", type=int, default=BENCH_SEED, help="case generator seed (4242: the held-out set)")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--variants", action="store_true", help="also run the HDM variants that were tried")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--skip", default="", help="comma-separated method names to leave out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    model = load_default_classifier()
    x, lesions, _ = held_out_cases(args.cases, seed=args.seed)
    result_file = RESULTS / ("quality_2d.json" if args.seed == BENCH_SEED else f"quality_2d_seed{args.seed}.json")
    methods = default_methods(model)
    # HDM's fused masks alone, without the pixel refinement, and the defaults until 2026-11-27
    methods = {
        "HDM": methods.pop("HDM"),
        "HDM masks only (refine None)": HDM(model, refine=None),
        "HDM (defaults until 2026-11-27)": hdm_until_2026_11_27(model),
        **methods,
    }
    if args.variants:
        methods.update(hdm_variants(model))
    methods = {k: v for k, v in methods.items() if k not in set(filter(None, args.skip.split(",")))}
    start = time.perf_counter()
    rows = compare_methods(
        methods, x, lesions, class_idx=1, batch_size=args.batch_size, log=lambda s: print("  " + s, flush=True)
    )
    scores = [*LOCALISATION_KEYS, "lesion_hit_rate_multi"]
    work = ["seconds", "images", "passes", "backward_passes"]
    summary = {(r["method"], r["metric"]): r for r in summarise(rows, [*scores, *work])}
    out = {"cases": args.cases, "seed": args.seed, "model": model.medhdm_card["name"], "methods": {}}
    for name in methods:
        entry = {key: tuple(summary[(name, key)][k] for k in ("mean", "ci_low", "ci_high")) for key in scores}
        entry["seconds_per_image"] = summary[(name, "seconds")]["mean"]
        entry["forward_passes_per_call"] = next(r["passes"] for r in rows if r["method"] == name)
        entry["images_per_explanation"] = summary[(name, "images")]["mean"]
        entry["forward_passes_per_batch"] = summary[(name, "passes")]["mean"]
        entry["backward_passes_per_batch"] = summary[(name, "backward_passes")]["mean"]
        out["methods"][name] = entry
    out["rows"] = rows
    write_json(result_file, out)
    columns = ["pointing_game", "energy_in_lesion", "auroc", "lesion_hit_rate", "lesion_hit_rate_multi", *work]
    print(
        f"\n{args.cases} 96x96 cases (seed {args.seed}, 1-3 lesions), shipped DenseNet, mean [95% bootstrap CI]; "
        "lesion_hit_rate_multi: cases with 2-3 lesions; images: through the model per image; passes and "
        "backward_passes: per call of one batch\n"
    )
    digits = {"auroc": 3, "seconds": 2, "images": 0, "passes": 0, "backward_passes": 0}  # AUROCs differ in the 3rd
    print(format_table(list(summary.values()), columns, ci=columns[:5], digits={k: digits.get(k, 2) for k in columns}))
    print(f"\nwrote {result_file} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
