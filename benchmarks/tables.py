"""The READMEs' result tables, written from ``benchmarks/results/*.json``.

    python benchmarks/tables.py            # rewrite every marked table of README.md and benchmarks/README.md
    python benchmarks/tables.py --check    # exit 1 naming each marked table that differs from the results
    python benchmarks/tables.py --check --diff   # and show how

A table is marked in a README by a line ``<!-- table: NAME -->`` before it and a line
``<!-- /table -->`` after it (HTML comments, invisible on GitHub); ``NAME`` is a key of
:data:`TABLES`, whose function renders the table from the results files. Every figure goes
through :func:`medhdm.evaluation.format_table`, the formatter the benchmark scripts print
with; the column headers and row labels are set here, and each label says what its row is
now: ``defaults`` for HDM's defaults, a dated setting by its date. A marker naming no table,
a table marked twice, or a marker without its end is an error naming the README.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from common import RESULTS

from medhdm.evaluation import bootstrap_ci, format_table, summarise
from medhdm.io.atomic import atomic_write

ROOT = RESULTS.parents[1]
#: the files whose marked tables this script writes
DOCUMENTS = (ROOT / "README.md", ROOT / "benchmarks" / "README.md")
OPEN = re.compile(r"<!-- table: (.*?) -->")
CLOSE = "<!-- /table -->"

#: display names of the methods where a table shows the method alone
METHOD_NAMES = {
    "GradientInput": "Gradient x Input",
    "GradCAM": "Grad-CAM",
    "GradCAM++": "Grad-CAM++",
    "HDM_fine": "HDM, finer grids (S/8, S/4; S/2, S)",
    "HDM_clipped": "HDM, the defaults' grids before the ladder moved (2 x 2 x 2 first)",
}


#: how a row measured at HDM's defaults of 2026-11-28 reads: the map before the focus term of issue 24, which
#: the default has added since 2026-12-04 (``HDM(focus=0, contrast=1, knee=0)`` gives that map)
BEFORE_FOCUS = "defaults of 2026-11-28 (before the focus term)"


# --- reading the results ----------------------------------------------------------------------------------------


@functools.cache
def load(name: str) -> dict:
    """``benchmarks/results/<name>`` as JSON."""
    return json.loads((RESULTS / name).read_text())


def by_method(summary: Iterable[dict]) -> dict[str, dict[str, dict]]:
    """A summary (records ``{"method", "metric", "mean", "ci_low", "ci_high"}``) as ``{method: {metric: record}}``."""
    out: dict[str, dict[str, dict]] = {}
    for record in summary:
        out.setdefault(record["method"], {})[record["metric"]] = record
    return out


def as_record(value: Sequence[float] | float) -> dict:
    """A ``(mean, ci_low, ci_high)`` triple or a plain value as a summary record."""
    mean, low, high = value if isinstance(value, Sequence) else (value, math.nan, math.nan)
    return {"mean": mean, "ci_low": low, "ci_high": high}


# --- cells and tables --------------------------------------------------------------------------------------------


def number(record: Mapping | float, digits: int = 2, ci: bool = False) -> str:
    """One cell as :func:`~medhdm.evaluation.format_table` writes it: the mean (empty if NaN), with
    ``[ci_low, ci_high]`` when ``ci``."""
    record = record if isinstance(record, Mapping) else as_record(record)
    summary = [{"method": "", "metric": "value", **{k: record[k] for k in ("mean", "ci_low", "ci_high")}}]
    line = format_table(summary, ["value"], ci=ci, digits=digits).splitlines()[2]
    return line[len("|  | ") : -len(" |")]


def markdown(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["|" + "|".join(f" {cell} " if cell else " " for cell in row) + "|" for row in rows]
    return "\n".join(lines)


def metric_cells(metrics: Mapping[str, dict], columns: Sequence[tuple[str, int, bool]]) -> list[str]:
    """The cells of ``columns`` (metric, digits, with CI) from ``{metric: record}``."""
    return [number(metrics[metric], digits, ci) for metric, digits, ci in columns]


def rounded_to_hundreds(value: float) -> str:
    """``2708.75`` as ``"2,700"``."""
    return f"{int(round(value, -2)):,}"


# --- README.md ----------------------------------------------------------------------------------------------------

QUALITY = (("pointing_game", 2, True), ("auroc", 3, True), ("lesion_hit_rate_multi", 2, True))


def results() -> str:
    """README.md, "Results" (seed 4242): HDM's defaults (the focused map with its knee, and the findings ranked
    with ``rest``) from ``hdm_focus_2d_4242.json``, its masks alone and the defaults of 2026-11-27 from
    ``hdm_settings.json``, the rest from ``quality_2d.json`` (the torch threads of each row's seconds from its
    entry)."""
    focus = load("hdm_focus_2d_4242.json")["runs"]["2d/4242"]
    defaults = by_method([*focus["summary"], *summarise(focus["rows"], ["seconds"])])["HDM defaults"]
    settings = load("hdm_settings.json")["runs"]["2d/4242"]
    hdm = by_method([*settings["summary"], *summarise(settings["rows"], ["seconds"])])
    rows = []
    for metrics, label in (
        (defaults, "HDM (defaults; {images} images through the model per explanation, findings' evidence included)"),
        (hdm["HDM, defaults, refine=None"], "HDM masks only (`refine=None`)"),
        (hdm["HDM, defaults of 2026-11-27 (20 steps)"], "HDM, defaults of 2026-11-27 ({images} images)"),
    ):
        label = label.format(images=number(metrics["images"], 0))
        rows.append([label, *metric_cells(metrics, QUALITY), number(metrics["seconds"], 3) + " (1 thread)"])
    quality = load("quality_2d.json")["methods"]
    old_images = rounded_to_hundreds(quality[UNTIL_2026_11_27]["images_per_explanation"])
    labels = {
        UNTIL_2026_11_27: (
            f"HDM, defaults until 2026-11-27 (about {old_images} images per explanation; fails the sanity check)"
        ),
        **{name: METHOD_NAMES.get(name, name) for name in ("MDM", "NeuroMask", "GradientInput", "Occlusion", "RISE")},
        "GradCAM": "Grad-CAM",
    }
    for name, label in labels.items():
        entry = {key: as_record(value) for key, value in quality[name].items()}
        threads = quality[name]["threads"]
        seconds = number(entry["seconds_per_image"], 3) + f" ({threads} thread{'' if threads == 1 else 's'})"
        rows.append([label, *metric_cells(entry, QUALITY), seconds])
    header = ["method", "pointing game", "pixel AUROC", "lesions hit, 2-3-lesion cases", "s / image"]
    return markdown(header, rows)


# --- benchmarks/README.md: in-memory cases ------------------------------------------------------------------------

QUALITY_2D = (
    ("pointing_game", 2, True),
    ("energy_in_lesion", 2, True),
    ("auroc", 3, True),
    ("lesion_hit_rate", 2, True),
    ("lesion_hit_rate_multi", 2, True),
)
QUALITY_2D_HEADER = [
    "pointing game",
    "energy in lesion",
    "pixel AUROC",
    "lesions hit (all)",
    "lesions hit (2-3 lesions)",
]
BASELINES = ("MDM", "NeuroMask", "GradientInput", "Occlusion", "RISE", "GradCAM", "GradCAM++")


#: the key of ``quality_2d.json`` for HDM's defaults until 2026-11-27 (``quality_2d.hdm_until_2026_11_27``)
UNTIL_2026_11_27 = "HDM (defaults until 2026-11-27)"


def quality_2d() -> str:
    """``quality_2d.json`` (seed 4242): HDM's defaults, its masks alone, the defaults of 2026-11-27 (an earlier run
    kept in the file) and until 2026-11-27, and the baselines."""
    quality = load("quality_2d.json")["methods"]
    labels = {
        "HDM": "**HDM (defaults: 5 steps, soft stage regions, focus term)**",
        "HDM masks only (refine None)": "HDM masks only (`refine=None`: the defaults' masks, no refinement, no focus)",
        "HDM (defaults of 2026-11-27, measured 2026-11-27)": (
            "HDM, defaults of 2026-11-27 (20 steps and two grids per phase, 4 stages, positive-gradient refinement)"
        ),
        "HDM masks only (refine None), defaults of 2026-11-27, measured 2026-11-27": (
            "HDM masks only (`refine=None`), defaults of 2026-11-27"
        ),
        UNTIL_2026_11_27: (
            "HDM (defaults 2026-11-26 to 2026-11-27: pixel refinement by abs(gradient x (x - r)), "
            "fails the sanity check)"
        ),
        "HDM masks only (refine None), defaults until 2026-11-27, measured 2026-11-26": (
            'HDM masks only (`refine=None`, grids and steps until 2026-11-27, smoothing 1/32, "either" fusion)'
        ),
        **{name: name for name in BASELINES},
    }
    notes = {"Occlusion": " (MONAI batches internally)"}
    rows = []
    for name, label in labels.items():
        entry = quality[name]
        passes = str(entry["forward_passes_per_call"])
        if "images_per_explanation" in entry and name != "Occlusion":  # MONAI batches its occlusions inside one call
            passes += f" ({number(entry['images_per_explanation'], 0)} images per explanation)"
        cells = metric_cells({k: as_record(v) for k, v in entry.items()}, QUALITY_2D)
        rows.append([label, *cells, passes + notes.get(name, "")])
    return markdown(["method", *QUALITY_2D_HEADER, "forward passes"], rows)


def quality_2d_seed9999() -> str:
    """``quality_2d_seed9999.json``: the run of 2026-11-26 (HDM at its defaults until 2026-11-27)."""
    quality = load("quality_2d_seed9999.json")["methods"]
    labels = {
        "HDM (defaults until 2026-11-27, measured 2026-11-26)": "HDM, defaults until 2026-11-27",
        "HDM masks only (refine None), defaults until 2026-11-27, measured 2026-11-26": (
            "HDM masks only (`refine=None`), defaults until 2026-11-27"
        ),
        **{name: name for name in BASELINES},
    }
    rows = [
        [label, *metric_cells({k: as_record(v) for k, v in quality[name].items()}, QUALITY_2D)]
        for name, label in labels.items()
    ]
    return markdown(["method (seed 9999, 24 cases)", *QUALITY_2D_HEADER], rows)


#: the row of :func:`hdm_settings` that is HDM's defaults
HDM_SETTINGS_DEFAULTS = "HDM, defaults (+ 3D area budget 5 %)"
#: the rows of :func:`hdm_settings` that were HDM's defaults when it ran, as they read now
HDM_SETTINGS_LABELS = {
    HDM_SETTINGS_DEFAULTS: "**HDM, defaults of 2026-11-28** (+ 3D area budget 5 %; before the focus term)",
    "HDM, defaults, refine=None": "HDM masks only, refine=None (today's defaults' masks: no focus without refinement)",
}


def hdm_settings(dims: int) -> str:
    """``hdm_settings.json``: per setting and seed, pointing / AUROC / lesions hit in 2-3-lesion cases, and the
    range of images per explanation over the seeds."""
    runs = load("hdm_settings.json")["runs"]
    seeds = [key.split("/")[1] for key in runs if key.startswith(f"{dims}d/")]
    summaries = {seed: by_method(runs[f"{dims}d/{seed}"]["summary"]) for seed in seeds}
    rows = []
    for name in summaries[seeds[0]]:
        label = HDM_SETTINGS_LABELS.get(name, name)
        cells = [" / ".join(number(summaries[s][name][m], d) for m, d, _ in QUALITY) for s in seeds]
        images = sorted(summaries[s][name]["images"]["mean"] for s in seeds)
        rows.append([label, *cells, f"{number(images[0], 0)}-{number(images[-1], 0)}"])
    return markdown(["row", *(f"seed {s}" for s in seeds), "images"], rows)


INPUT_NOISE_FOCUS = "input_noise_focus_9999_4242.json"  # input_noise.py --settings defaults,before_focus,GradientInput
#: the rows of :func:`input_noise`: the results file (``{seed}`` filled in), the setting, its label
INPUT_NOISE = (
    (INPUT_NOISE_FOCUS, "defaults", "HDM defaults (focused)"),
    (INPUT_NOISE_FOCUS, "before_focus", f"HDM {BEFORE_FOCUS}"),
    ("input_noise_{seed}.json", "until_2026_11_27", "HDM until 2026-11-27 (run of 2026-11-27)"),
    (INPUT_NOISE_FOCUS, "GradientInput", "Gradient x Input"),
)


def _noise_rows(entries) -> list[list[str]]:
    """Per ``(results file, seed, setting, label)``: the pointing game and lesions hit at each draw, and the cases some
    draw misses (with p(lesion) where the model calls the case negative)."""

    def per_draw(values: list[float]) -> str:
        cells = [number(v) for v in values]
        return f"{cells[0]} (all)" if len(set(cells)) == 1 else " ".join(cells)

    rows = []
    for file, seed, name, label in entries:
        result = load(file)["seeds"][seed]
        setting = result["settings"][name]
        missed: list[list[str]] = []  # [cases, how often missed] with consecutive equal counts joined
        for case, draws in setting["missed"].items():
            p = result["p_lesion"][int(case)]
            how = f"{draws}/{len(setting['runs'])}" + (f", p {number(p)}" if p < 0.5 else "")
            if missed and missed[-1][1] == how:
                missed[-1][0] += f", {case}"
            else:
                missed.append([case, how])
        missed_text = ", ".join(f"{cases} ({how})" for cases, how in missed) or "none"
        by_run = setting["by_run"]
        rows.append([label, per_draw(by_run["pointing_game"]), per_draw(by_run["lesion_hit_rate_multi"]), missed_text])
    return rows


def input_noise() -> str:
    """:data:`INPUT_NOISE` (the focused defaults, the map before the focus term and Gradient x Input from the run
    of 2026-12-04, the defaults until 2026-11-27 from ``input_noise_<seed>.json``): per setting, the pointing game
    and lesions hit at each draw, and the cases some draw misses (with p(lesion) where the model calls the case
    negative)."""
    entries = [(f.format(seed=seed), seed, n, label) for seed in ("9999", "4242") for f, n, label in INPUT_NOISE]
    rows = [[seed, *row] for (_, seed, _, _), row in zip(entries, _noise_rows(entries))]
    header = ["seed", "setting", "pointing per draw", "lesions hit (2-3-lesion cases) per draw", "cases missed (draws)"]
    return markdown(header, rows)


#: the settings of ``input_noise_magnitude_<d>d.json`` (issue 24, second follow-up) and their labels
NOISE_MAGNITUDE = (
    ("defaults", "**HDM defaults (gradient magnitude, lower knee)**"),
    ("knee", "the defaults of 2026-12-05 (knee 0.3, no magnitude)"),
    ("before_focus", "before the focus term (the defaults of 2026-11-28)"),
)


#: the settings of ``input_noise_signal_<d>d.json`` (issue 24, third follow-up) and their labels
NOISE_SIGNAL = (
    ("defaults", "**HDM defaults (the focus term on the stages' refinement signals)**"),
    ("magnitude", "the second defaults of 2026-12-05 (the focus term on the positive gradient)"),
    ("before_focus", "before the focus term (the defaults of 2026-11-28)"),
)


def input_noise_sets(prefix: str, settings) -> Callable[[], str]:
    """A table of ``<prefix>_<d>d.json``: the input-noise draws of each ``(name, label)`` of ``settings`` on the
    held-out sets, 2D and 3D."""

    def table() -> str:
        rows = []
        for dims in (2, 3):
            file = f"{prefix}_{dims}d.json"
            for seed in load(file)["seeds"]:
                entries = [(file, seed, name, label) for name, label in settings]
                rows += [[f"{dims}D seed {seed}", *row] for row in _noise_rows(entries)]
        hits = "lesions hit (2-3-lesion cases) per draw"
        return markdown(["set", "setting", "pointing per draw", hits, "cases missed (draws)"], rows)

    return table


def sanity() -> str:
    """``sanity.json``: Spearman between the maps of the trained and the randomised model, and two seeds' agreement."""
    methods = load("sanity.json")["methods"]
    labels = {
        "HDM": "**HDM (defaults)**",
        "HDM masks only (refine None)": "HDM masks only (`refine=None`)",
        "HDM (defaults of 2026-11-27)": "HDM (defaults of 2026-11-27)",
        "HDM (defaults until 2026-11-27)": "HDM (defaults until 2026-11-27)",
        **{name: name for name in BASELINES},
    }
    constant = "NaN (the randomised model's map is constant)"
    rows = []
    for name, label in labels.items():
        entry = methods[name]
        cells = [
            "-" if key not in entry else constant if math.isnan(entry[key]) else number(entry[key])
            for key in ("sanity_2d", "sanity_3d", "seed_agreement_2d")
        ]
        rows.append([label, *cells])
    return markdown(["method", "sanity 2D", "sanity 3D", "two seeds agree (2D)"], rows)


def stability(name: str) -> Callable[[], str]:
    """``<name>.json`` of ``stability.py``: the largest change of the map under 1e-6 input noise."""

    def table() -> str:
        rows = [
            [r["method"], f"{r['dims']}D", number(r["max"], 4), number(r["median"], 4)]
            for r in load(f"{name}.json")["rows"]
        ]
        return markdown(["setting", "dims", "largest change", "median of the per-image largest changes"], rows)

    return table


# --- benchmarks/README.md: LesionBench files ----------------------------------------------------------------------

FILES = (
    ("pointing_game", 2, True),
    ("energy_in_lesion", 2, True),
    ("auroc", 2, True),
    ("lesion_hit_rate", 2, True),
)


FILES_2D = "quality_files_2d_HDM_GradientInput_Occlusion_RISE.json"
FILES_3D = "quality_files_3d_HDM_GradientInput_Occlusion.json"
FILES_2D_20_STEPS = "quality_files_2d_HDM_HDMsteps5_GradientInput_Occlusion_RISE.json"
FILES_3D_20_STEPS = "quality_files_3d_HDM_HDMsteps5_GradientInput_Occlusion.json"
FILES_2D_FOCUS = "quality_files_2d_HDM_HDMfocus0_GradientInput.json"  # the run of the focused defaults (issue 24)
FILES_3D_FOCUS = "quality_files_3d_HDM_HDMfocus0_GradientInput.json"
#: the rows of :func:`files_defaults`: file, method (None: every method of the file in one row), label
FILES_DEFAULTS = (
    (FILES_2D_FOCUS, "HDM", "**HDM (defaults, focused)**"),
    (FILES_2D, "HDM", f"HDM, {BEFORE_FOCUS}"),
    (FILES_2D_20_STEPS, "HDM", "HDM, defaults of 2026-11-27"),
    (FILES_2D, "GradientInput", "Gradient x Input"),
    (FILES_2D, "Occlusion", "Occlusion"),
    (FILES_2D, "RISE", "RISE"),
    (FILES_3D_FOCUS, "HDM", "**HDM (defaults, focused)**"),
    (FILES_3D, "HDM", f"HDM, {BEFORE_FOCUS}"),
    ("quality_files_3d_HDMsteps3_HDMsteps10_HDMsteps20.json", None, "HDM, 3 / 10 / 20 steps"),
    (FILES_3D_20_STEPS, "HDM", "HDM, defaults of 2026-11-27"),
    (FILES_3D, "GradientInput", "Gradient x Input"),
    (FILES_3D, "Occlusion", "Occlusion"),
)


def files_defaults() -> str:
    """LesionBench files, 2D and 3D: HDM's defaults and the baselines (runs of ``quality_files.py`` with
    ``--methods``), HDM at 3, 10 and 20 steps in 3D, and the defaults of 2026-11-27."""
    rows = []
    for file, name, label in FILES_DEFAULTS:
        result = load(file)
        summary = by_method(result["summary"])
        if name is None:  # one row for several step counts: "a / b / c" per column, no CIs
            cells = [" / ".join(number(summary[s][m], d) for s in summary) for m, d, _ in FILES]
            cells.append(" / ".join(number(summary[s]["seconds"], 1) for s in summary))
        else:
            cells = [*metric_cells(summary[name], FILES), number(summary[name]["seconds"])]
        rows.append([f"{file.split('_')[2].upper()} files ({result['cases']})", label, *cells])
    header = ["set", "method", "pointing", "energy in lesion", "pixel AUROC", "lesions hit", "s / case"]
    return markdown(header, rows)


def quality_files(dims: int) -> str:
    """The files' 64-step tables: ``quality_files_<dims>d.json`` (the run of the defaults until 2026-11-25 and the
    baselines) and ``quality_files_<dims>d_HDM.json`` (a later HDM-only run), as ``quality_files.py`` prints them."""
    label = {
        2: (
            "HDM (defaults 2026-11-26 to 2026-11-27, pixel refinement by abs(gradient x (x - r)); "
            "`--methods HDM`, 314 s)"
        ),
        3: "HDM (defaults of 2026-11-27; `--methods HDM --threads 1`, 2026-11-27, heavily shared machine)",
    }[dims]
    first = {2: "HDM (defaults until 2026-11-25)", 3: "HDM (until 2026-11-26, earlier)"}[dims]
    summary = [{**r, "method": label} for r in load(f"quality_files_{dims}d_HDM.json")["summary"]]
    others = load(f"quality_files_{dims}d.json")["summary"]
    summary += [{**r, "method": first if r["method"] == "HDM" else r["method"]} for r in others]
    metrics = [
        "pointing_game",
        "energy_in_lesion",
        "auroc",
        "auprc",
        "lesion_hit_rate",
        "deletion_auc",
        "insertion_auc",
        "seconds",
    ]
    return format_table(summary, metrics, ci=metrics[:-1], digits=2)


def files_budgets() -> str:
    """``quality_files_<dims>d_HDM_HDMsteps5_...json``: HDM's defaults of 2026-11-27 at 20 and 5 steps, and the
    baselines, on files (64-step deletion AUC)."""
    rows = []
    for dims, file in ((2, FILES_2D_20_STEPS), (3, FILES_3D_20_STEPS)):
        result = load(file)
        labels = {
            "HDM": "HDM, defaults of 2026-11-27 (20 steps)",
            "HDM steps=5": "HDM, defaults of 2026-11-27 at 5 steps",
        }
        for name, metrics in by_method(result["summary"]).items():
            cells = [*metric_cells(metrics, FILES), number(metrics["deletion_auc"]), number(metrics["seconds"])]
            rows.append([f"{dims}D files ({result['cases']})", labels.get(name, METHOD_NAMES.get(name, name)), *cells])
    header = ["set", "method", "pointing", "energy in lesion", "pixel AUROC", "lesions hit", "deletion AUC", "s / case"]
    return markdown(header, rows)


# --- benchmarks/README.md: faithfulness, cost, resolution, speed, cohorts -------------------------------------------

FAITHFULNESS = (
    ("insertion_auc", "insertion_auc (64 steps)"),
    ("deletion_auc", "deletion_auc (64 steps)"),
    ("insertion_auc_log", "insertion_auc_log"),
    ("deletion_auc_log", "deletion_auc_log"),
    ("insertion_half", "insertion_half"),
    ("deletion_half", "deletion_half"),
)


def faithfulness(dims: int) -> str:
    """``faithfulness_grids_24x2d_8x3d.json``: every method's faithfulness columns, and the separation (the range of
    the method means over their mean CI width), as ``faithfulness_grids.py`` prints them."""
    result = load("faithfulness_grids_24x2d_8x3d.json")["dims"][str(dims)]
    rows = []
    for name, metrics in by_method(result["summary"]).items():
        digits = [4 if key.endswith("_half") else 3 for key, _ in FAITHFULNESS]
        rows.append([name, *(number(metrics[key], d, ci=True) for (key, _), d in zip(FAITHFULNESS, digits))])
    spread = result["spread"]
    rows.append(
        ["separation", *(number(spread[key]["range"] / spread[key]["mean_ci_width"]) for key, _ in FAITHFULNESS)]
    )
    return markdown(["method", *(header for _, header in FAITHFULNESS)], rows)


COST = (
    ("pointing_game", 2, True),
    ("auroc", 3, True),
    ("lesion_hit_rate_multi", 2, True),
    ("deletion_half", 4, False),
    ("insertion_half", 4, False),
    ("deletion_auc_log", 3, False),
    ("insertion_auc_log", 3, False),
    ("images", 0, False),
)


def cost_curve(seed: str) -> Callable[[], str]:
    """``cost_curve.json``, one seed: quality, faithfulness and images per explanation at each budget."""

    def table() -> str:
        summary = by_method(load("cost_curve.json")["seeds"][seed]["summary"])
        defaults = {
            "HDM steps=5": " (default)",
            "RISE masks=1000": " (default)",
        }
        rows = [[name + defaults.get(name, ""), *metric_cells(metrics, COST)] for name, metrics in summary.items()]
        header = [
            "method",
            "pointing",
            "pixel AUROC",
            "lesions hit (2-3 lesions)",
            "deletion_half",
            "insertion_half",
            "deletion_auc_log",
            "insertion_auc_log",
            "images / explanation",
        ]
        return markdown(header, rows)

    return table


def resolution_classifiers() -> str:
    """``resolution.json``: p(lesion) (accuracy) of both classifiers on the lesion and the healthy cases per size."""
    check = {(r["size"], r["classifier"], r["cases"]): r for r in load("resolution.json")["model_check"]}
    rows = []
    for size in load("resolution.json")["sizes"]:
        cells = []
        for classifier in ("shipped DenseNet", "resize to 96, DenseNet"):
            for cases in ("lesion", "healthy"):
                r = check[(size, classifier, cases)]
                cells.append(f"{number(r['p_mean'], 3)} ({number(r['accuracy'])})")
        rows.append([str(size), *cells])
    header = [
        "pixels",
        "shipped DenseNet: lesion cases, mean p (accuracy)",
        "healthy (accuracy)",
        "resize to 96 + DenseNet: lesion cases",
        "healthy",
    ]
    return markdown(header, rows)


def resolution() -> str:
    """``resolution.json``: HDM in mm and in voxels and Gradient x Input at each size, with HDM's grids."""
    result = load("resolution.json")
    summary, settings = by_method(result["summary"]), result["hdm_settings"]
    rows = []
    for size in result["sizes"]:
        for kind, label in (("HDM mm", "HDM in mm"), ("HDM voxels", "HDM in voxels"), ("GradientInput", None)):
            name = f"{kind} @{size}"
            grids = ""
            if name in settings:
                cells, sigma = settings[name].split(", sigma ")
                grids = ", ".join(cells.split(",")).replace(" ,", ",") + f"; {sigma}"
                if kind == "HDM mm":
                    px = float(sigma.split()[0])
                    grids += f" = {number(px * result['field_of_view_mm'] / size, 1)} mm"
            metrics = summary[name]
            cells = [*metric_cells(metrics, QUALITY), number(metrics["seconds"])]
            rows.append([f"{label or METHOD_NAMES[kind]}, {size}", grids, *cells])
    header = [
        "method, pixels across",
        "grids (cells across: benchmark / auxiliary), fused sigma",
        "pointing game",
        "pixel AUROC",
        "lesions hit, 2-3-lesion cases",
        "s / image",
    ]
    return markdown(header, rows)


def realistic() -> str:
    """``realistic_cpu_2d_3d.json``: DenseNet121 2D and 3D at HDM's defaults and Gradient x Input."""
    networks = {"2d": "DenseNet121 2D 224 x 224", "3d": "DenseNet121 3D 96^3"}
    methods = {"hdm": "**HDM (defaults)**", "gradientinput": "Gradient x Input"}
    stages = {("3d", "hdm"): ": the random network's evidence is gone after it"}
    rows = []
    for r in load("realistic_cpu_2d_3d.json")["table"]:
        images = str(r["images"])
        if r["method"] == "hdm":
            plural = "" if r["stages"] == 1 else "s"
            images += f" ({r['stages']} stage{plural}{stages.get((r['dims'], r['method']), '')})"
        cells = [images, number(r["seconds"]), number(r["floor_seconds"]), number(r["peak_memory_mb"], 0)]
        rows.append([networks[r["dims"]], methods[r["method"]], *cells, r["max_batch"]])
    header = ["network", "method", "images / explanation", "s / explanation", "bare loop s", "peak MB", "max_batch"]
    return markdown(header, rows)


def speed() -> str:
    """``speed_cpu.json``: seconds per image, and the model calls and images through the model (a hook on the model,
    findings' evidence call included) per call of a batch and per image."""
    data = load("speed_cpu.json")
    labels = {"HDM": "HDM (defaults)"}
    rows = [
        [
            labels.get(name, name),
            number(e["seconds_per_image"], 3),
            str(e["model_calls"]),
            str(e["images_through_model"]),
            number(e["images_per_explanation"], 0),
        ]
        for name, e in data["methods"].items()
    ]
    threads = f"{data['threads']} thread" + ("" if data["threads"] == 1 else "s")
    header = [f"method ({threads})", "s / image", "model calls / call", "images through the model / call"]
    return markdown([*header, "images / explanation"], rows)


def cohort() -> str:
    """``cohort_cpu.json``: cases per minute of each engine, as ``cohort.py`` prints them."""
    methods = {"hdm": "HDM (defaults of 2026-11-27, 20 steps)", "gxi": "Gradient x Input"}
    rows = [
        [
            f"{r['dims']}D",
            methods[r["method"]],
            r["engine"],
            ", ".join(str(t) for t in r["threads_per_worker"]),
            *(str(r[k]) for k in ("cases", "startup_s", "run_s", "s_per_case", "cases_per_min")),
        ]
        for r in load("cohort_cpu.json")["rows"]
    ]
    header = ["data", "method", "engine", "torch threads per worker", "cases", "startup s", "run s", "s/case"]
    return markdown([*header, "cases/min"], rows)


def decode_syntaxes() -> str:
    """``decode_syntaxes.json``: per conversion, the decoder, the compression, the largest pixel and map
    differences from the uncompressed original and the milliseconds to decode a 512 x 512 slice."""
    data = load("decode_syntaxes.json")
    rows = [
        [
            f"{r['transfer_syntax']} `{r['uid']}`",
            f"`{r['tool']}`" + ("" if r["bits_stored"] == 16 else f" ({r['bits_stored']}-bit data)"),
            r["decoder"],
            f"{r['compression_ratio']:.1f}",
            f"{r['max_pixel_difference']:.3g}",
            ", ".join(f"{r['max_map_difference'][m]:.2g}" for m in ("gradcam", "hdm")),
            f"{r['decode_ms_per_slice']:.1f}",
        ]
        for r in data["rows"]
    ]
    header = ["transfer syntax", "made by", "decoder", "ratio", "max pixel diff (HU)", "max map diff Grad-CAM, HDM"]
    return markdown([*header, "decode ms / slice"], rows)


def findings_demo() -> str:
    """``findings_demo.json`` (``findings_demo.py``): the demo case's findings, as ``<case>_findings.csv`` shows."""
    data = load("findings_demo.json")
    rows = [
        [
            str(f["rank"]),
            "" if f["stage"] is None else str(f["stage"]),
            ", ".join(f"{v:.1f}" for v in f["centroid_ras_mm"]),
            f"{f['size']:,} {f['size_unit']}",
            f"{f['evidence']:.2f}",
            f"{f['share']:.2f}",
            f"lesion {f['in_lesion']}" if f["in_lesion"] else "none",
        ]
        for f in data["findings"]
    ]
    header = ["finding", "HDM stage", "centroid (RAS mm)", "size", "evidence (log-odds)", "share", "peak in"]
    return markdown(header, rows)


#: the runs of ``findings.py`` the findings tables read. A method and set measured in two runs: the first listed
#: wins, so HDM's rows come from ``findings_hdm.json`` (its findings rule now: candidates at 0.05 of its map's
#: maximum, ranked by evidence plus ``rest``); the later files' HDM rows are an earlier rule (0.1, by evidence),
#: kept for the comparison in benchmarks/README.md
FINDINGS_RESULTS = (
    "findings_hdm.json",
    "findings.json",
    "findings_2d_9999.json",
    "findings_files2d.json",
    "findings_files2d_more.json",
    "findings_3d.json",
    "findings_3d_4242.json",
    "findings_3d_9999.json",
    "findings_3d_more.json",
    "findings_3d_slow_files.json",
    "findings_3d_slow_memory.json",
    "findings_3d_slow.json",
)

FINDINGS_SETS = {
    "memory2d_seed4242": "2D, seed 4242",
    "memory2d_seed9999": "2D, seed 9999",
    "files2d": "2D files",
    "files3d": "3D files",
    "memory3d_seed4242": "3D, seed 4242",
    "memory3d_seed9999": "3D, seed 9999",
}


def findings(metric: str) -> Callable[[], str]:
    """:data:`FINDINGS_RESULTS` (``findings.py``): one FROC figure (``"cpm"`` or ``"froc_sens@1"``) per method and set,
    with its bootstrap 95 % CI over images; a figure over fewer images than the set has (``--first``) says how many."""

    def table() -> str:
        cells: dict[str, dict[str, str]] = {}
        columns: dict[str, None] = {}
        for name in [n for n in FINDINGS_RESULTS if (RESULTS / n).is_file()]:  # runs not made: left out
            run = load(name)
            for key, result in run["sets"].items():
                columns.setdefault(key)
                for r in result["summary"]:
                    row = cells.setdefault(METHOD_NAMES.get(r["method"], r["method"]), {})
                    if r["metric"] != metric or key in row:
                        continue
                    part = f" (first {r['n']} of {run['cases']})" if r["n"] < run["cases"] else ""
                    row[key] = number(r, 2, ci=True) + part
        order = [k for k in FINDINGS_SETS if k in columns] + [k for k in columns if k not in FINDINGS_SETS]
        rows = [[method, *(row.get(k, "") for k in order)] for method, row in cells.items()]
        return markdown(["method", *(FINDINGS_SETS.get(k, k) for k in order)], rows)

    return table


#: every table a README may mark, by name
def segmentation() -> str:
    """``segmentation.json``: each method on the shipped segmenters' cue task, 2D and 3D."""
    results = load("segmentation.json")["results"]
    rows = []
    for dims, entry in results.items():
        methods = [k for k, v in entry.items() if isinstance(v, dict)]
        area = f"cue {number(entry['cue_area'], 3)}, lesion {number(entry['target_area'], 3)}"
        rows.append([f"**{dims.upper()}** ({entry['cases']} cases; area {area})", "", "", "", "", "", ""])
        for name in methods:
            row = entry[name]
            keys = ("cue_share", "target_share", "peak_on_cue", "sanity", "sanity_whole_image")
            cells = [number(row[k], 3) if k in row else "" for k in keys]
            rows.append([METHOD_NAMES.get(name, name), *cells, f"{row['images']:.0f}"])
    header = ["method", "map on the cue", "map on the lesion", "peak on the cue", "sanity (bands)", "sanity (image)"]
    header.append("images")
    return markdown(header, rows)


# --- issue 24: the focused map --------------------------------------------------------------------------------

FOCUS_QUALITY = (("pointing_game", 2), ("energy_in_lesion", 2), ("auroc", 3), ("lesion_hit_rate_multi", 2))
FOCUS_DEFAULTS = {2: "focus 0.5, contrast 1.5", 3: "focus 1, contrast 2"}


def focus_ablation() -> str:
    """``hdm_focus_31_77.json`` (tuning seeds): per focus weight and contrast exponent, pointing / energy in
    lesion / pixel AUROC / lesions hit in 2-3-lesion cases on each set, then Gradient x Input."""
    runs = load("hdm_focus_31_77.json")["runs"]
    sets = list(runs)
    summaries = {key: by_method(runs[key]["summary"]) for key in sets}
    names = [n for n in summaries[sets[0]] if n.startswith("focus ")] + ["GradientInput"]
    rows = []
    for name in names:
        label = METHOD_NAMES.get(name, name)
        marks = [f"{d}D default" for d, v in FOCUS_DEFAULTS.items() if v == name]
        label = f"**{label}** ({', '.join(marks)})" if marks else label
        label = f"{label} (the map before)" if name == "focus 0, contrast 1" else label
        cells = [" / ".join(number(summaries[k][name][m], d) for m, d in FOCUS_QUALITY) for k in sets]
        rows.append([label, *cells])
    header = ["setting", *(f"{k.split('/')[0].upper()} seed {k.split('/')[1]}" for k in sets)]
    return markdown(header, rows)


FOCUS_ROWS = (("HDM defaults", "**HDM defaults (focused)**"), ("HDM before (focus 0, contrast 1)", "HDM before"))


def focus_floor() -> str:
    """``focus_floor_<d>d_31_77.json`` (tuning seeds): the map before the focus term, the focused map with one
    exponent and with the peak floor at each focus weight ``f``, stage-weight power ``q`` and exponent
    ``beta`` below the floor; pointing / energy in lesion / pixel AUROC / lesions hit in 2-3-lesion cases."""
    chosen = {2: "f 0.5, q 1, gamma 1, beta 8", 3: "f 1, q 0.5, gamma 1, beta 8"}  # the best, not kept
    rows = []
    for dims in (2, 3):
        sets = load(f"focus_floor_{dims}d_31_77.json")["sets"]
        for name in sets["31"]:
            if name.startswith("f 1.5") or " beta 6" in name:
                continue  # in the JSON; the table keeps the rows that decided
            label = f"**{name}** (best on the tuning seeds, fails continuity)" if chosen[dims] == name else name
            cells = [" / ".join(number(sets[k][name][m], d) for m, d in FOCUS_QUALITY) for k in ("31", "77")]
            rows.append([f"{dims}D", label, *cells])
    return markdown(["dims", "map", "seed 31", "seed 77"], rows)


def focus_held_out() -> str:
    """``hdm_focus_4242_9999.json`` and the files' runs (``quality_files_<d>d_HDM_HDMfocus0_GradientInput.json``):
    HDM's defaults, the map before the focus term and Gradient x Input, with CIs and images per explanation."""
    columns = [(m, d, True) for m, d in FOCUS_QUALITY]
    rows = []
    runs = load("hdm_focus_4242_9999.json")["runs"]
    for key, run in runs.items():
        summary = by_method(run["summary"])
        where = f"{key.split('/')[0].upper()} seed {key.split('/')[1]} ({load('hdm_focus_4242_9999.json')['cases']})"
        for name, label in (*FOCUS_ROWS, ("GradientInput", "Gradient x Input")):
            rows.append([where, label, *metric_cells(summary[name], columns), number(summary[name]["images"], 0)])
    for dims in (2, 3):
        if not (RESULTS / f"quality_files_{dims}d_HDM_HDMfocus0_GradientInput.json").is_file():
            continue  # the 3D files' run did not finish by the deadline (benchmarks/README.md)
        result = load(f"quality_files_{dims}d_HDM_HDMfocus0_GradientInput.json")
        summary = by_method(result["summary"])
        for name, label in (
            ("HDM", FOCUS_ROWS[0][1]),
            ("HDM focus=0", "HDM before"),
            ("GradientInput", "Gradient x Input"),
        ):
            cells = [number(summary[name][m], d, True) for m, d, _ in columns[:3]]
            cells.append(number(summary[name]["lesion_hit_rate"], 2, True) + " (all cases)")
            rows.append([f"{dims}D LesionBench files ({result['cases']})", label, *cells, "-"])
    header = ["set", "method", "pointing", "energy in lesion", "pixel AUROC", "lesions hit (2-3 lesions)", "images"]
    return markdown(header, rows)


#: the knee's tables (issue 24, follow-up): hits at the hit count's floor of 0.2, 0.1 and 0.3 of the maximum
KNEE_QUALITY = (
    ("pointing_game", 2),
    ("energy_in_lesion", 2),
    ("auroc", 3),
    ("lesion_hit_rate_multi", 2),
    ("lesion_hit_rate_multi_01", 2),
    ("lesion_hit_rate_multi_03", 2),
)
KNEE_ROWS = (
    ("HDM defaults", "**HDM defaults (knee 0.3, slope 2)**"),
    ("HDM focused, one exponent (f 0.5, gamma 1.5 in 2D; f 1, gamma 2 in 3D)", "one exponent (the defaults before)"),
    ("HDM before (focus 0, contrast 1)", "before the focus term"),
    ("GradientInput", "Gradient x Input"),
)


def held_out_rows(file: str, maps, columns) -> list[list[str]]:
    """Per set of ``hdm_focus.py``'s results ``file`` and per ``(name, label)`` of ``maps``: the set, the label, the
    ``columns``' cells and the images per explanation."""
    rows = []
    result = load(file)
    for key, run in result["runs"].items():
        summary = by_method(run["summary"])
        where = f"{key.split('/')[0].upper()} seed {key.split('/')[1]} ({result['cases']})"
        for name, label in maps:
            rows.append([where, label, *metric_cells(summary[name], columns), number(summary[name]["images"], 0)])
    return rows


def files_held_out_rows(suffix: str, methods, columns, hits: Callable[[dict, dict, str], str]) -> list[list[str]]:
    """Per dimension and per ``(name, label)`` of ``methods``, a row of the LesionBench files' run
    ``quality_files_<d>d_<suffix>.json`` (when written): the set, the label, the first three ``columns``' cells, the
    cell ``hits(files, summary, name)`` and three empty cells."""
    rows = []
    for dims in (2, 3):
        if not (RESULTS / f"quality_files_{dims}d_{suffix}.json").is_file():
            continue
        files = load(f"quality_files_{dims}d_{suffix}.json")
        summary = by_method(files["summary"])
        for name, label in methods:
            cells = [number(summary[name][m], d, True) for m, d, _ in columns[:3]]
            where = f"{dims}D LesionBench files ({files['cases']})"
            rows.append([where, label, *cells, hits(files, summary, name), "-", "-", "-"])
    return rows


def _hits_all_cases(files: dict, summary: dict, name: str) -> str:
    """The files' lesions hit over all cases, with their CI."""
    return number(summary[name]["lesion_hit_rate"], 2, True) + " (all cases)"


def focus_knee() -> str:
    """``hdm_focus_knee_31_77.json`` (tuning seeds): the knee at each knee / slope / exponent above it, one exponent,
    the map before the focus term and Gradient x Input; pointing / energy / AUROC / lesions hit at 0.2, 0.1, 0.3."""
    runs = load("hdm_focus_knee_31_77.json")["runs"]
    rows = []
    for key, run in runs.items():
        summary = by_method(run["summary"])
        names = [*(n for n, _ in KNEE_ROWS[1:]), *(n for n in summary if ", knee " in n)]
        labels = dict(KNEE_ROWS)
        for name in names:
            cells = " / ".join(number(summary[name][m], d) for m, d in KNEE_QUALITY)
            label = labels.get(name, name)
            label = f"**{label}** (default)" if name.endswith("knee 0.3, slope 2, contrast 1") else label
            rows.append([f"{key.split('/')[0].upper()} seed {key.split('/')[1]}", label, cells])
    return markdown(["set", "map", "pointing / energy / AUROC / hit at 0.2 / at 0.1 / at 0.3"], rows)


def focus_knee_held_out() -> str:
    """``hdm_focus_knee_4242_9999.json`` and the files' runs (``quality_files_<d>d_knee.json``): HDM's defaults
    (the knee), the one-exponent map, the map before the focus term and Gradient x Input."""
    columns = [(m, d, True) for m, d in KNEE_QUALITY[:4]] + [(m, d, False) for m, d in KNEE_QUALITY[4:]]
    rows = held_out_rows("hdm_focus_knee_4242_9999.json", KNEE_ROWS, columns)
    methods = (("HDM", KNEE_ROWS[0][1]), ("HDM focus=0", "before the focus term"), *KNEE_ROWS[3:])
    rows += files_held_out_rows("knee", methods, columns, _hits_all_cases)
    header = ["set", "map", "pointing", "energy in lesion", "pixel AUROC", "lesions hit (2-3 lesions)"]
    return markdown([*header, "hit at 0.1", "hit at 0.3", "images"], rows)


#: the gradient magnitude's tables (issue 24, second follow-up)
MAGNITUDE_ROWS = (
    ("HDM defaults", "**HDM defaults (gradient magnitude 0.2, knee 0.2 in 2D and 0.3 in 3D)**"),
    ("HDM knee, no magnitude (the defaults of 2026-12-05)", "knee, no magnitude (the defaults before)"),
    ("HDM before (focus 0, contrast 1)", "before the focus term (the defaults of 2026-11-28)"),
    ("GradientInput", "Gradient x Input"),
)
#: the defaults' rows of the tuning runs: the default gradient magnitude at the default knee
DEFAULT_MAGNITUDE_ROWS = {2: "magnitude 0.2, knee 0.2", 3: "magnitude 0.2, knee 0.3"}


MAGNITUDE_TUNING = ("hdm_focus_magnitude_tuning_a.json", "hdm_focus_magnitude_tuning_b.json")


def _tuning_runs() -> dict:
    """The tuning seeds' runs of ``hdm_focus.py`` with the gradient magnitude, by set (``"2d/31"``)."""
    runs = {}
    for name in MAGNITUDE_TUNING:
        runs.update(load(name)["runs"])
    return runs


def focus_magnitude() -> str:
    """``hdm_focus_magnitude_tuning_{a,b}.json`` (six tuning seeds): per setting, the mean over the seeds of
    pointing / energy / AUROC / lesions hit at 0.2, 0.1, 0.3 in 2D and in 3D: the knee with the gradient magnitude
    at each weight, the default weight at each knee, the defaults before, the map before the focus term and
    Gradient x Input."""
    runs = _tuning_runs()
    by_dims: dict[int, list] = {2: [], 3: []}
    for key, run in runs.items():
        by_dims[int(key[0])].append(by_method(run["summary"]))
    magnitudes = [n for dims in (2, 3) for n in by_dims[dims][0] if n.startswith("magnitude ")]
    names = [*dict.fromkeys(magnitudes), *(n for n, _ in MAGNITUDE_ROWS[1:])]
    rows = []
    for name in names:
        label = dict(MAGNITUDE_ROWS).get(name, name)
        cells = []
        for dims in (2, 3):
            summaries = [s for s in by_dims[dims] if name in s]
            means = [math.fsum(s[name][m]["mean"] for s in summaries) / max(1, len(summaries)) for m, _ in KNEE_QUALITY]
            cells.append(" / ".join(number(v, d) for v, (_, d) in zip(means, KNEE_QUALITY)) if summaries else "-")
        marks = [f"{d}D" for d in (2, 3) if name == DEFAULT_MAGNITUDE_ROWS[d]]
        label = f"**{label}** (default {', '.join(marks)})" if marks else label
        rows.append([label, *cells])
    seeds = ", ".join(sorted({k.split("/")[1] for k in runs}, key=int))
    return markdown(["map", f"2D (mean of seeds {seeds})", f"3D (mean of seeds {seeds})"], rows)


def focus_magnitude_sets() -> str:
    """``hdm_focus_magnitude_tuning_{a,b}.json``: per tuning set, energy in lesion / pixel AUROC / lesions hit in
    2-3-lesion cases of HDM's defaults, the defaults before, the map before the focus term and Gradient x Input."""
    rows = []
    for key, run in sorted(_tuning_runs().items(), key=lambda kv: (kv[0][0], int(kv[0].split("/")[1]))):
        summary = by_method(run["summary"])
        cells = [
            " / ".join(number(summary[n][m], d) for m, d in (("energy_in_lesion", 2), ("auroc", 3), *KNEE_QUALITY[3:4]))
            for n, _ in MAGNITUDE_ROWS
        ]
        rows.append([f"{key.split('/')[0].upper()} seed {key.split('/')[1]}", *cells])
    return markdown(["set", *(label.strip("*") for _, label in MAGNITUDE_ROWS)], rows)


def focus_magnitude_choice() -> str:
    """``hdm_focus_magnitude_31_77.json`` (tuning seeds 31 and 77, the knee at 0.3 then): per weight of the gradient
    magnitude, energy in lesion / pixel AUROC / lesions hit in 2-3-lesion cases on each set, and Gradient x Input."""
    runs = load("hdm_focus_magnitude_31_77.json")["runs"]
    summaries = {key: by_method(run["summary"]) for key, run in runs.items()}
    names = [n for n in next(iter(summaries.values())) if n.startswith("magnitude ") and ", knee" not in n]
    quality = (("energy_in_lesion", 2), ("auroc", 3), ("lesion_hit_rate_multi", 2))
    rows = []
    for name in [*names, "GradientInput"]:
        cells = [" / ".join(number(summary[name][m], d) for m, d in quality) for summary in summaries.values()]
        rows.append([METHOD_NAMES.get(name, name), *cells])
    header = [f"{k.split('/')[0].upper()} seed {k.split('/')[1]}" for k in summaries]
    return markdown(["map (knee 0.3)", *header], rows)


def magnitude_sanity(file: str = "magnitude_sanity.json") -> str:
    """``file`` (``magnitude_sanity.py``'s results): per network, the model-randomisation Spearman of HDM at each weight
    of the gradient magnitude."""
    result = load(file)
    magnitudes = [f"{m:g}" for m in result["magnitudes"]]
    rows = []
    for name, entry in result["networks"].items():
        rows.append([f"{entry['dims']}D", name, *(number(entry[m]["mean"]) for m in magnitudes)])
    return markdown(["dims", "network", *(f"magnitude {m}" for m in magnitudes)], rows)


def auroc_signals() -> str:
    """``auroc_signals.json``: per set, the pixel AUROC of single signals with the trained and a randomised model."""
    sets = load("auroc_signals.json")["sets"]
    names = list(next(iter(sets.values())))
    rows = [[name, *(number(sets[key][name], 3) for key in sets)] for name in names]
    return markdown(["signal", *(f"{k.split('/')[0].upper()} seed {k.split('/')[1]}" for k in sets)], rows)


def focus_magnitude_held_out() -> str:
    """``hdm_focus_magnitude_4242_9999.json`` and the files' runs (``quality_files_<d>d_magnitude.json``): HDM's
    defaults, the knee without the magnitude, the map before the focus term and Gradient x Input."""
    columns = [(m, d, True) for m, d in KNEE_QUALITY[:4]] + [(m, d, False) for m, d in KNEE_QUALITY[4:]]
    rows = held_out_rows("hdm_focus_magnitude_4242_9999.json", MAGNITUDE_ROWS, columns)
    names = ("HDM", "HDM knee=0.3 magnitude=0", "HDM focus=0", "GradientInput")
    methods = [(name, label) for name, (_, label) in zip(names, MAGNITUDE_ROWS)]
    rows += files_held_out_rows("magnitude", methods, columns, _hits_all_cases)
    header = ["set", "map", "pointing", "energy in lesion", "pixel AUROC", "lesions hit (2-3 lesions)"]
    return markdown([*header, "hit at 0.1", "hit at 0.3", "images"], rows)


#: the focus signal's tables (issue 24, third follow-up)
SIGNAL_ROWS = (
    ("HDM defaults", "**HDM defaults (the focus term on the stages' refinement signals)**"),
    (
        "HDM magnitude, focus on the positive gradient (the defaults of 2026-12-05, second)",
        "the focus term on the positive gradient (the defaults before)",
    ),
    ("HDM before (focus 0, contrast 1)", "before the focus term (the defaults of 2026-11-28)"),
    ("GradientInput", "Gradient x Input"),
)


def focus_signal_sets() -> str:
    """``hdm_focus_signal_tuning.json`` (six tuning seeds): per set and the mean over the seeds per dimension,
    energy in lesion / pixel AUROC / lesions hit in 2-3-lesion cases of each map of :data:`SIGNAL_ROWS`."""
    runs = load("hdm_focus_signal_tuning.json")["runs"]
    quality = (("energy_in_lesion", 3), ("auroc", 4), ("lesion_hit_rate_multi", 3))
    rows = []
    for dims in (2, 3):
        summaries = {k: by_method(r["summary"]) for k, r in runs.items() if k.startswith(f"{dims}d/")}
        for key, summary in summaries.items():
            cells = [" / ".join(number(summary[n][m], d) for m, d in quality) for n, _ in SIGNAL_ROWS]
            rows.append([f"{dims}D seed {key.split('/')[1]}", *cells])
        means = [
            " / ".join(
                number(math.fsum(s[n][m]["mean"] for s in summaries.values()) / len(summaries), d) for m, d in quality
            )
            for n, _ in SIGNAL_ROWS
        ]
        rows.append([f"**{dims}D mean of {len(summaries)} seeds**", *means])
    return markdown(["set", *(label.strip("*") for _, label in SIGNAL_ROWS)], rows)


def focus_weights() -> str:
    """``hdm_focus_signal_tuning.json`` and ``hdm_focus_signal_4242_9999.json``: per focus weight and focus signal
    (at the default knee and gradient magnitude), energy in lesion / pixel AUROC / lesions hit in 2-3-lesion cases,
    the mean over the tuning seeds per dimension and each held-out set."""
    quality = (("energy_in_lesion", 3), ("auroc", 4), ("lesion_hit_rate_multi", 3))
    columns: dict[str, list[dict]] = {}
    for file, kind in (("hdm_focus_signal_tuning.json", "tuning"), ("hdm_focus_signal_4242_9999.json", "held out")):
        for key, run in load(file)["runs"].items():
            dims, seed = key.split("/")
            name = f"{dims.upper()} {'tuning mean' if kind == 'tuning' else 'seed ' + seed}"
            columns.setdefault(name, []).append(by_method(run["summary"]))
    names = [n for n in columns["2D tuning mean"][0] if n.startswith("focus ") and " on the " in n]
    rows = []
    for name in names:
        label = name.split(", knee")[0]
        cells = []
        for summaries in columns.values():
            full = next((n for n in summaries[0] if n.split(", knee")[0] == label), None)
            means = [math.fsum(s[full][m]["mean"] for s in summaries) / len(summaries) for m, _ in quality]
            cells.append(" / ".join(number(v, d) for v, (_, d) in zip(means, quality)))
        rows.append([label, *cells])
    return markdown(["focus weight and signal", *columns], rows)


def focus_signal_held_out() -> str:
    """``hdm_focus_signal_4242_9999.json`` and the files' runs (``quality_files_<d>d_signal.json``): HDM's defaults,
    the focus term on the positive gradient, the map before the focus term and Gradient x Input."""
    columns = [(m, d, True) for m, d in KNEE_QUALITY[:4]] + [(m, d, False) for m, d in KNEE_QUALITY[4:]]
    rows = held_out_rows("hdm_focus_signal_4242_9999.json", SIGNAL_ROWS, columns)

    def hits(files: dict, summary: dict, name: str) -> str:  # 2-3-lesion cases, then all cases
        multi = [r["lesion_hit_rate"] for r in files["rows"] if r["method"] == name and r["n_lesions"] >= 2]
        return f"{number(math.fsum(multi) / len(multi))} (all cases {number(summary[name]['lesion_hit_rate'])})"

    names = ("HDM", "HDM focus_signal=positive_gradient", "HDM focus=0", "GradientInput")
    methods = [(name, label) for name, (_, label) in zip(names, SIGNAL_ROWS)]
    rows += files_held_out_rows("signal", methods, columns, hits)
    header = ["set", "map", "pointing", "energy in lesion", "pixel AUROC", "lesions hit (2-3 lesions)"]
    return markdown([*header, "hit at 0.1", "hit at 0.3", "images"], rows)


def sanity_networks() -> str:
    """``sanity_networks_*.json`` (by name): per network, its held-out accuracy and the model-randomisation
    Spearman of HDM's defaults, the map before the focus term, the masks alone and Gradient x Input."""
    networks = {}
    for path in sorted(RESULTS.glob("sanity_networks_*.json")):
        networks.update(load(path.name)["networks"])
    rows = []
    for name, entry in networks.items():
        held = entry.get("held_out") or {}
        methods = [k for k in entry if k not in ("dims", "held_out")]
        cells = [number(entry[m]["mean"]) for m in methods]
        rows.append([f"{entry['dims']}D", name, f"{number(held.get('accuracy', math.nan))}", *cells])
    methods = [k for k in next(iter(networks.values())) if k not in ("dims", "held_out")]
    return markdown(["dims", "network", "held-out accuracy", *(METHOD_NAMES.get(m, m) for m in methods)], rows)


#: the pixel AUROC margin under Gradient x Input that issue 24 allows, per dimension
AUROC_MARGIN = {2: 0.005, 3: 0.01}


def focus_frontier(*files: str) -> Callable[[], str]:
    """``focus_frontier.py``'s runs in ``files``: per map and dimension, over the sets, the mean energy in lesion (and
    the sets where it is under Gradient x Input's), pixel AUROC (sets more than :data:`AUROC_MARGIN` under it),
    pointing (sets under the map before the focus term) and lesions hit in 2-3-lesion cases, with the lesions gained
    and lost against the map before, counted per case, and the sets that lost one."""

    def cells(figures: list[dict], gi: list[dict], before: list[dict], dims: int) -> list[str]:
        def mean(key: str) -> float:
            return math.fsum(f[key] for f in figures) / len(figures)

        under = sum(f["energy_in_lesion"] < g["energy_in_lesion"] for f, g in zip(figures, gi))
        short = sum(f["auroc"] < g["auroc"] - AUROC_MARGIN[dims] for f, g in zip(figures, gi))
        pointing = sum(f["pointing_game"] < b["pointing_game"] - 1e-9 for f, b in zip(figures, before))
        hits = number(mean("lesion_hit_rate_multi"), 3)
        if "lesions_lost" in figures[0]:
            losing = sum(f["lesions_lost"] > 0 for f in figures)
            gained, lost = (sum(f[k] for f in figures) for k in ("lesions_gained", "lesions_lost"))
            hits += f", +{gained} / -{lost} ({losing})"
        return [
            f"{number(mean('energy_in_lesion'), 3)} ({under})",
            f"{number(mean('auroc'), 4)} ({short})",
            f"{number(mean('pointing_game'), 3)} ({pointing})",
            hits,
        ]

    def table() -> str:
        runs: dict[str, dict] = {}
        for file in files:
            runs |= load(file)["runs"]
        per_dims = {d: [r for k, r in runs.items() if k.startswith(f"{d}d/")] for d in (2, 3)}
        per_dims = {d: r for d, r in per_dims.items() if r}
        names = [n for n, v in next(iter(per_dims.values()))[0].items() if isinstance(v, dict)]  # the maps
        defaults = {d: sets[0]["defaults"] for d, sets in per_dims.items()}
        rows = []
        for name in names:
            label = {"GradientInput": "Gradient x Input"}.get(name, name)
            label += "".join(f" **(default {d}D)**" for d, n in defaults.items() if n == name)
            row = [label]
            for dims, sets in per_dims.items():
                before, gi = [r["before the focus term"] for r in sets], [r["GradientInput"] for r in sets]
                row += cells([r[name] for r in sets], gi, before, dims)
            rows.append(row)
        header = ["map"]
        for dims, sets in per_dims.items():
            n = len(sets)
            header += [
                f"{dims}D energy (sets < GxI, of {n})",
                f"{dims}D pixel AUROC (sets short)",
                f"{dims}D pointing (sets < before)",
                f"{dims}D lesions hit, 2-3 lesions, +gained / -lost (sets losing)",
            ]
        return markdown(header, rows)

    return table


def _frontier_differences(file: str) -> dict[int, list[float]]:
    """Per dimension, the defaults' lesions hit minus the map before the focus term's in each 2-3-lesion case of
    ``focus_frontier.py``'s runs in ``file``."""
    out: dict[int, list[float]] = {2: [], 3: []}
    for key, run in load(file)["runs"].items():
        dims = int(key[0])
        before, defaults = run["before the focus term"], run[run["defaults"]]
        for n, a, b in zip(before["lesions"], defaults["hits"], before["hits"]):
            if n >= 2 and a is not None and b is not None:
                out[dims].append((a - b) / n)
    return out


def focus_frontier_pooled() -> str:
    """HDM's defaults minus the map before the focus term, lesions hit per 2-3-lesion case, pooled over sets: the
    tuning runs and the held-out runs of ``focus_frontier.py`` and the LesionBench files' runs
    (``quality_files_<d>d_signal.json``); mean and bootstrap 95 % CI."""
    tuning = {d: _frontier_differences(f"focus_frontier_tuning_{d}d.json")[d] for d in (2, 3)}
    held = _frontier_differences("focus_frontier_4242_9999.json")
    files = []
    for dims in (2, 3):
        rows = load(f"quality_files_{dims}d_signal.json")["rows"]
        before = {r["case"]: r["lesion_hit_rate"] for r in rows if r["method"] == "HDM focus=0"}
        multi = [r for r in rows if r["method"] == "HDM" and r["n_lesions"] >= 2]
        files += [r["lesion_hit_rate"] - before[r["case"]] for r in multi]
    groups = {
        "2D tuning sets (10 seeds)": tuning[2],
        "3D tuning sets (10 seeds)": tuning[3],
        "held out: in-memory sets, 2D and 3D (seeds 4242, 9999)": held[2] + held[3],
        "held out: LesionBench files, 2D and 3D": files,
        "**held out, all six sets**": held[2] + held[3] + files,
    }
    rows = []
    for name, diffs in groups.items():
        mean, low, high = bootstrap_ci(diffs, 2000, 0)
        rows.append([name, str(len(diffs)), f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"])
    return markdown(["sets", "2-3-lesion cases", "defaults minus before, lesions hit per case (95 % CI)"], rows)


TABLES: dict[str, Callable[[], str]] = {
    "results": results,
    "quality_2d": quality_2d,
    "quality_2d_seed9999": quality_2d_seed9999,
    "hdm_settings_2d": functools.partial(hdm_settings, 2),
    "hdm_settings_3d": functools.partial(hdm_settings, 3),
    "files_defaults": files_defaults,
    "input_noise": input_noise,
    "sanity": sanity,
    "stability": stability("stability"),
    "stability_eps1e-05": stability("stability_eps1e-05"),
    "quality_files_2d": functools.partial(quality_files, 2),
    "quality_files_3d": functools.partial(quality_files, 3),
    "faithfulness_2d": functools.partial(faithfulness, 2),
    "faithfulness_3d": functools.partial(faithfulness, 3),
    "cost_curve_4242": cost_curve("4242"),
    "cost_curve_9999": cost_curve("9999"),
    "files_budgets": files_budgets,
    "resolution_classifiers": resolution_classifiers,
    "resolution": resolution,
    "realistic": realistic,
    "speed": speed,
    "cohort": cohort,
    "decode_syntaxes": decode_syntaxes,
    "segmentation": segmentation,
    "findings_demo": findings_demo,
    "findings_cpm": findings("cpm"),
    "findings_sens1": findings("froc_sens@1"),
    "focus_ablation": focus_ablation,
    "focus_held_out": focus_held_out,
    "focus_floor": focus_floor,
    "focus_knee": focus_knee,
    "focus_knee_held_out": focus_knee_held_out,
    "focus_magnitude_choice": focus_magnitude_choice,
    "magnitude_sanity": magnitude_sanity,
    "auroc_signals": auroc_signals,
    "focus_magnitude": focus_magnitude,
    "focus_magnitude_sets": focus_magnitude_sets,
    "focus_magnitude_held_out": focus_magnitude_held_out,
    "input_noise_magnitude": input_noise_sets("input_noise_magnitude", NOISE_MAGNITUDE),
    "focus_signal_sets": focus_signal_sets,
    "focus_signal_held_out": focus_signal_held_out,
    "focus_weights": focus_weights,
    "input_noise_signal": input_noise_sets("input_noise_signal", NOISE_SIGNAL),
    "sanity_networks": sanity_networks,
    "focus_frontier_tuning": focus_frontier("focus_frontier_tuning_2d.json", "focus_frontier_tuning_3d.json"),
    "focus_frontier_held_out": focus_frontier("focus_frontier_4242_9999.json"),
    "focus_frontier_pooled": focus_frontier_pooled,
    "magnitude_sanity_signal": functools.partial(magnitude_sanity, "magnitude_sanity_signal.json"),
}


# --- the marked regions -----------------------------------------------------------------------------------------


def rewrite(text: str, where: str, seen: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """``text`` with every marked table rendered again, and the names of the tables that changed.

    ``where`` names the document in errors; ``seen`` (name -> document) catches a table marked twice
    across documents. Raises ValueError for a marker naming no table, a table marked twice, or a
    marker without its end.
    """
    seen = {} if seen is None else seen
    lines = text.split("\n")
    out, changed, i = [], [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        match = OPEN.fullmatch(line.strip())
        if match is None:
            if line.strip() == CLOSE:
                raise ValueError(f"{where}: line {i}: {CLOSE} without a table marker before it")
            continue
        name = match.group(1)
        if name not in TABLES:
            raise ValueError(f"{where}: line {i}: unknown table {name!r}; expected one of {sorted(TABLES)}")
        if name in seen:
            raise ValueError(f"{where}: line {i}: table {name!r} is marked twice (also in {seen[name]})")
        seen[name] = where
        try:
            end = next(j for j in range(i, len(lines)) if lines[j].strip() == CLOSE or OPEN.fullmatch(lines[j].strip()))
        except StopIteration:
            raise ValueError(f"{where}: line {i}: table {name!r} has no {CLOSE}") from None
        if lines[end].strip() != CLOSE:
            raise ValueError(f"{where}: line {i}: table {name!r} has no {CLOSE} before the next table marker")
        table = ["", *TABLES[name]().split("\n"), ""]  # blank lines: a comment line next to a table joins it
        if lines[i:end] != table:
            changed.append(name)
        out += [*table, lines[end]]
        i = end + 1
    return "\n".join(out), changed


def display(path: Path) -> str:
    """``path`` relative to the repository where it lies in it."""
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or with ``--check`` compare) the marked tables; 0 done or all equal, 1 some differ, 2 an error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("documents", nargs="*", type=Path, help="the files (default: README.md, benchmarks/README.md)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a marked table differs")
    parser.add_argument("--diff", action="store_true", help="with --check: show the differences")
    args = parser.parse_args(argv)
    seen: dict[str, str] = {}
    rewritten = {}
    try:
        for path in args.documents or DOCUMENTS:
            text = path.read_text()
            rewritten[path] = (text, *rewrite(text, display(path), seen))
    except (OSError, ValueError) as error:
        print(f"tables.py: {error}", file=sys.stderr)
        return 2
    differ = 0
    for path, (old, new, changed) in rewritten.items():
        for table in changed:
            differ += 1
            print(
                f"{display(path)}: table {table!r} "
                + ("differs from benchmarks/results" if args.check else "rewritten")
            )
        if args.check and args.diff and changed:
            name = display(path)
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), name, name))
        if not args.check and changed:
            atomic_write(path, new.encode())
    print(f"{len(seen)} marked tables, {differ} {'differ' if args.check else 'rewritten'}")
    return 1 if args.check and differ else 0


if __name__ == "__main__":
    sys.exit(main())
