"""Quality against cost: HDM at several budgets and the baselines, by images sent through the model per explanation.

    python benchmarks/cost_curve.py [--cases 24] [--seeds 4242,9999] [--steps 3,5,10,20,40] [--threads 1]

For each seed's held-out 96 x 96 cases (1-3 lesions, shipped 2D DenseNet, class "lesion"):
HDM with ``steps`` optimiser steps per mask phase (20 is the default), RISE with 250, 500
and 1000 masks (1000 is the default), and the one-budget baselines (Gradient x Input,
Occlusion, Grad-CAM, MDM and NeuroMask at their defaults). Quality: pointing game,
pixel AUROC, lesions hit in 2-3-lesion cases, and faithfulness on the model's grid as
``medhdm evaluate`` reports it (:func:`medhdm.metrics.faithfulness.faithfulness_scores`):
the deletion and insertion curves sampled at log-spaced shares of the voxels
(:func:`medhdm.metrics.curves.log_fractions`, 0.01 % to 100 %) read as the share of
voxels whose deletion removes (insertion restores) half of the log-odds evidence
(``deletion_half``, ``insertion_half``, lower is better) and the area under the curves
over log10(share), scaled to [0, 1] (``deletion_auc_log`` lower is better,
``insertion_auc_log`` higher is better). Cost: images through the model per explanation
(counted by a hook on the model, so MONAI's internal batches count), and seconds per image
(on the given number of torch threads; only ratios inside one run compare).
Prints one table per seed, writes ``benchmarks/results/cost_curve.json`` and the plot
``benchmarks/results/cost_curve.png`` (quality against images, log scale).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from common import RESULTS, compare_counting_images, held_out_cases, write_json

from medhdm import HDM, MDM, RISE, GradCAM, GradientInput, NeuroMask, Occlusion
from medhdm.evaluation import format_table, summarise
from medhdm.metrics.faithfulness import faithfulness_scores
from medhdm.models import load_default_classifier

FAITHFULNESS = ("deletion_half", "insertion_half", "deletion_auc_log", "insertion_auc_log")
QUALITY = ("pointing_game", "auroc", "lesion_hit_rate_multi", *FAITHFULNESS)


def methods_at_budgets(model, steps: list[int]) -> dict:
    """Display name -> explainer: HDM per step count, RISE per mask count, the rest at their defaults."""
    methods = {f"HDM steps={s}": HDM(model).set_steps(s) for s in steps}
    methods.update({f"RISE masks={n}": RISE(model, n_masks=n) for n in (250, 500, 1000)})
    methods.update(
        {
            "GradientInput": GradientInput(model),
            "Occlusion": Occlusion(model),
            "GradCAM": GradCAM(model),
            "MDM": MDM(model),
            "NeuroMask": NeuroMask(model),
        }
    )
    return methods


def add_faithfulness(rows: list[dict], maps: dict, model, x: torch.Tensor) -> None:
    """The :data:`FAITHFULNESS` columns per row (``x`` ``(N, C, H, W)``, ``maps[name]`` ``(N, 1, H, W)``), from the
    deletion and insertion curves on log-spaced shares, as ``medhdm evaluate`` computes them."""
    for name, saliency in maps.items():
        # every method's maps deleted towards the same blurred image (HDM's default reference)
        scores, _ = faithfulness_scores(model, x, saliency, 1, reference="blur")
        for row in rows:
            if row["method"] == name:
                row.update({key: scores[key][row["case"]] for key in FAITHFULNESS})


def plot(summaries: dict, path) -> None:
    """Quality (one panel per metric) against images per explanation, one line per seed and method family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(QUALITY), figsize=(4 * len(QUALITY), 3.6))
    for seed, summary in summaries.items():
        for family, marker in (("HDM", "o-"), ("RISE", "s-")):
            names = [n for n in summary if n.startswith(family + " ")]
            names.sort(key=lambda n: summary[n]["images"])
            for ax, key in zip(axes, QUALITY):
                ax.plot(
                    [summary[n]["images"] for n in names],
                    [summary[n][key] for n in names],
                    marker,
                    label=f"{family} {seed}",
                )
        for name, entry in summary.items():
            if " " in name and name.split(" ")[0] in ("HDM", "RISE"):
                continue
            for ax, key in zip(axes, QUALITY):
                ax.plot(entry["images"], entry[key], "x")
                ax.annotate(name, (entry["images"], entry[key]), fontsize=6)
    for ax, key in zip(axes, QUALITY):
        ax.set_xscale("log")
        ax.set_xlabel("images through the model per explanation")
        ax.set_title(key, fontsize=9)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--seeds", default="4242,9999")
    parser.add_argument("--steps", default="3,5,10,20,40", help="HDM optimiser steps per mask phase")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    model = load_default_classifier()
    steps = [int(s) for s in args.steps.split(",")]
    out, summaries = {"cases": args.cases, "threads": args.threads, "seeds": {}}, {}
    start = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        x, lesions, _ = held_out_cases(args.cases, seed=seed)
        methods, maps, rows = methods_at_budgets(model, steps), {}, []
        for name, explainer in methods.items():
            rows += compare_counting_images(name, explainer, x, lesions, args.batch_size, maps)
            print(f"  seed {seed}: {name} done ({time.perf_counter() - start:.0f} s)", flush=True)
        add_faithfulness(rows, maps, model, x)
        summary_rows = summarise(rows, [*QUALITY, "images", "seconds"])
        summary = {}
        for r in summary_rows:
            summary.setdefault(r["method"], {})[r["metric"]] = r["mean"]
        summaries[seed] = summary
        out["seeds"][str(seed)] = {"summary": summary_rows, "rows": rows}
        print(f"\nseed {seed}: {args.cases} cases, {args.threads} torch thread(s); mean [95% bootstrap CI]\n")
        columns = [*QUALITY, "images", "seconds"]
        digits = {"auroc": 3, "images": 0, "seconds": 3, "deletion_half": 4, "insertion_half": 4}
        digits.update({"deletion_auc_log": 3, "insertion_auc_log": 3})
        print(format_table(summary_rows, columns, ci=list(QUALITY), digits={k: digits.get(k, 2) for k in columns}))
    write_json(RESULTS / "cost_curve.json", out)
    plot(summaries, RESULTS / "cost_curve.png")
    print(f"\nwrote {RESULTS / 'cost_curve.json'} and cost_curve.png ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
