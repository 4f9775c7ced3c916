"""Which one-case differences are knife edges: the settings re-run under imperceptible input noise.

    python benchmarks/input_noise.py [--seeds 9999] [--draws 4] [--sigma 1e-6] [--cases 24] [--threads 1]
        [--settings defaults,until_2026_11_27,GradientInput] [--dims 2] [--out NAME]

HDM is deterministic (its masks start from a constant; ``seed`` does not change them), but an
image whose map peaks on the rim of a lesion, or between two regions of almost equal evidence,
can flip between hit and miss with the batch it is explained in (other convolution kernels,
other rounding). On the in-memory held-out sets a pointing-game difference of one case in 24
between two settings can be such a flip. This script explains the same cases with each setting
``--draws`` times: draw 0 on the images as they are, draw k on the images plus N(0, sigma^2) noise
from generator seed k (1e-6 of the [0, 1] intensity range: far below any image's own noise). It
prints, per setting, the pointing game and the lesions hit in 2-3-lesion cases at each draw and
their mean, the cases that some draw misses (in how many draws, with the model's p(lesion)), and
the paired difference of the per-case means over draws against the first setting (mean,
bootstrap 95 % CI, Wilcoxon p). Settings: ``defaults``, ``before_focus`` (the defaults before the focus
term of issue 24, ``common.BEFORE_FOCUS``), ``knee`` (the defaults of 2026-12-05, ``common.KNEE_DEFAULTS``),
``magnitude`` (the second defaults of 2026-12-05, ``common.MAGNITUDE_DEFAULTS``),
``until_2026_11_27``, ``GradientInput``; ``--dims 3``
runs the shipped 3D model on 24 x 48 x 48 volumes. Writes ``benchmarks/results/input_noise_<seeds>.json``
(or ``<out>.json``).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import defaultdict

import numpy as np
import torch
from common import (
    BEFORE_FOCUS,
    KNEE_DEFAULTS,
    MAGNITUDE_DEFAULTS,
    RESULTS,
    compare_counting_images,
    held_out_cases,
    write_json,
)
from quality_2d import hdm_until_2026_11_27

from medhdm import HDM, GradientInput
from medhdm.evaluation import paired_comparison
from medhdm.evaluation.statistics import bootstrap_ci
from medhdm.models import DEFAULT_3D, load_default_classifier

QUALITY = ("pointing_game", "lesion_hit_rate_multi")


def make(setting: str, model):
    """The explainer of ``setting``."""
    if setting == "defaults":
        return HDM(model)
    if setting == "before_focus":
        return HDM(model, **BEFORE_FOCUS)
    if setting == "knee":
        return HDM(model, **KNEE_DEFAULTS)
    if setting == "magnitude":
        return HDM(model, **MAGNITUDE_DEFAULTS)
    if setting == "until_2026_11_27":
        return hdm_until_2026_11_27(model)
    if setting == "GradientInput":
        return GradientInput(model)
    raise ValueError(f"--settings: unknown {setting!r}")


def noisy(x: torch.Tensor, draw: int, sigma: float) -> torch.Tensor:
    """``x`` for draw 0, else ``x`` plus N(0, sigma^2) noise from generator seed ``draw``."""
    if draw == 0:
        return x
    generator = torch.Generator().manual_seed(draw)
    return x + sigma * torch.randn(x.shape, generator=generator)


def run_seed(model, x, lesions, data_seed: int, settings: list[str], draws: int, sigma: float) -> list[dict]:
    """Rows of every setting at every draw (``run`` holds the draw) on the held-out set ``x`` of ``data_seed``."""
    cases = x.shape[0]
    rows = []
    for setting in settings:
        for draw in range(draws):
            start = time.perf_counter()
            got = compare_counting_images(setting, make(setting, model), noisy(x, draw, sigma), lesions, cases)
            for row in got:
                row.update(run=draw, data_seed=data_seed)
            rows += got
            seconds = time.perf_counter() - start
            print(f"  seed {data_seed}, {setting}, draw {draw}: {seconds:.0f} s", flush=True)
    return rows


def per_case_means(rows: list[dict], metric: str) -> list[dict]:
    """One row per setting and case: ``metric`` averaged over the draws."""
    values: dict[tuple[str, int], list[float]] = defaultdict(list)
    for row in rows:
        values[(row["method"], row["case"])].append(float(row[metric]))
    return [{"method": m, "case": c, metric: float(np.nanmean(v))} for (m, c), v in values.items()]


def report(rows: list[dict], p_lesion: np.ndarray, settings: list[str]) -> dict:
    """Print and return the per-seed figures, the missed cases and the paired differences."""
    out: dict = {"settings": {}, "paired": []}
    for setting in settings:
        mine = [r for r in rows if r["method"] == setting]
        runs = sorted({r["run"] for r in mine})
        by_run = {
            metric: [float(np.nanmean([r[metric] for r in mine if r["run"] == k])) for k in runs] for metric in QUALITY
        }
        misses: dict[int, int] = defaultdict(int)
        for r in mine:
            misses[r["case"]] += int(r["pointing_game"] < 1)
        missed = {c: n for c, n in sorted(misses.items()) if n}
        out["settings"][setting] = {"runs": runs, "by_run": by_run, "missed": missed}
        print(f"{setting}: draws {runs}")
        for metric in QUALITY:
            mean, low, high = bootstrap_ci([r[metric] for r in per_case_means(mine, metric) if not np.isnan(r[metric])])
            each = " ".join(f"{v:.2f}" for v in by_run[metric])
            print(f"  {metric}: {each}; mean over draws {mean:.3f} [{low:.3f}, {high:.3f}]")
        text = ", ".join(f"case {c} {n}/{len(runs)} (p={p_lesion[c]:.2f})" for c, n in missed.items())
        print(f"  pointing misses: {text or 'none'}")
    for setting in settings[1:]:
        for metric in QUALITY:
            means = per_case_means([r for r in rows if r["method"] in (settings[0], setting)], metric)
            diff = paired_comparison(means, settings[0], setting, metric)
            out["paired"].append(diff)
            print(
                f"{settings[0]} - {setting}, {metric} (per-case means over draws): "
                f"{diff['mean_difference']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}], "
                f"Wilcoxon p {diff['wilcoxon_p']:.2f}"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="9999", help="held-out data seeds")
    parser.add_argument("--draws", type=int, default=4, help="draw 0: no noise; draws 1..: noise seeds")
    parser.add_argument("--sigma", type=float, default=1e-6, help="standard deviation of the input noise")
    parser.add_argument("--settings", default="defaults,until_2026_11_27,GradientInput")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--out", default=None, help="results file name (default input_noise_<seeds>)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    model = load_default_classifier() if args.dims == 2 else load_default_classifier(DEFAULT_3D)
    size = tuple(model.medhdm_card["recipe"]["spatial_size"])
    settings = args.settings.split(",")
    results = {"cases": args.cases, "threads": args.threads, "draws": args.draws, "sigma": args.sigma, "seeds": {}}
    for data_seed in (int(s) for s in args.seeds.split(",")):
        x, lesions, _ = held_out_cases(args.cases, size=size, seed=data_seed)
        with torch.no_grad():
            p_lesion = torch.softmax(model(x), dim=1)[:, 1].numpy()
        rows = run_seed(model, x, lesions, data_seed, settings, args.draws, args.sigma)
        print(f"held-out seed {data_seed}, {args.cases} cases, {args.threads} torch thread(s)")
        summary = report(rows, p_lesion, settings)
        results["seeds"][str(data_seed)] = {**summary, "p_lesion": p_lesion.tolist(), "rows": rows}
    results["dims"] = args.dims
    write_json(RESULTS / f"{args.out or 'input_noise_' + args.seeds.replace(',', '_')}.json", results)


if __name__ == "__main__":
    main()
