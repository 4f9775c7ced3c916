"""Evaluate explanation methods over an annotated manifest, and write a report people can read.

:func:`evaluate_manifest` explains every case of a manifest with every method (on the
source grid, through :func:`medhdm.pipeline.explain_image`), scores each map against the
case's lesion annotation (:func:`medhdm.metrics.score`, spacing from the image) and,
optionally, its faithfulness to the model on the classifier's grid (deletion/insertion
with the explainer's own reference). :func:`write_report` turns the rows into
``per_case.csv``, ``summary.csv``, ``summary.json`` (mean, median, bootstrap 95% CI per
method and metric; paired comparisons of every method with the first one), figures
(overlay grid case x method with the lesion outline, mean deletion/insertion curves,
box plots per metric) and one self-contained ``report.html`` with the figures embedded.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .io.atomic import atomic_write
from .evaluation import aggregate, paired_comparison
from .io.annotations import ImageGrid, load_annotation
from .io.axes import monai_to_dicom
from .metrics.faithfulness import deletion_curve
from .metrics.localisation import LOCALISATION_KEYS, score

__all__ = ["FAITHFULNESS_KEYS", "evaluate_manifest", "write_report"]

FAITHFULNESS_KEYS = ("deletion_auc", "insertion_auc")


def _spacing(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    return tuple(float(np.linalg.norm(affine[:3, i])) for i in range(ndim))


def evaluate_manifest(
    entries: Sequence[dict],
    methods: dict[str, object],
    spec,
    faithfulness: bool = True,
    n_steps: int = 64,
    log: Callable[[str], None] | None = print,
) -> tuple[list[dict], dict]:
    """Explain and score every case with every method.

    Args:
        entries: manifest entries (``load_manifest``), each with ``image`` and ``lesion``.
        methods: display name -> explainer.
        spec: the classifier's :class:`~medhdm.pipeline.InputSpec`.
        faithfulness: also compute deletion/insertion AUC (``n_steps`` shares).

    Returns:
        the rows (one per case and method) and the material for the figures: per case the
        image, lesion and maps on the source grid, and per method the mean curves.
    """
    from .pipeline import explain_image, load_image

    missing = [e["id"] for e in entries if "lesion" not in e]
    if missing:
        raise ValueError(f"manifest: cases without a 'lesion' annotation cannot be scored: {', '.join(missing)}")
    rows: list[dict] = []
    figures: dict = {"cases": [], "curves": {name: {"deletion": [], "insertion": []} for name in methods}}
    total = len(entries) * len(methods)
    done = 0
    for entry in entries:
        case_fig = {"id": entry["id"], "maps": {}}
        image = load_image(entry["image"])  # read once, explained by every method
        for name, explainer in methods.items():
            start = time.perf_counter()
            result = explain_image(image, explainer, spec, class_idx=entry.get("class_idx"))
            seconds = time.perf_counter() - start
            if "lesion_array" not in case_fig:
                grid = ImageGrid.from_meta(result.saliency.shape, result.affine, result.meta)
                case_fig["lesion_array"] = load_annotation(entry["lesion"], grid)
                case_fig["image"] = result.image
            lesion = case_fig["lesion_array"]
            row = {"case": entry["id"], "method": name, "label": entry.get("label", ""),
                   "class_idx": result.class_idx, "score": round(result.score, 4),
                   "n_lesions": len(np.unique(lesion[lesion > 0]))}
            row.update(score(result.saliency, lesion > 0, spacing=_spacing(result.affine, lesion.ndim)))
            if faithfulness:
                ref = getattr(explainer, "reference", "blur")
                for mode in ("deletion", "insertion"):
                    curve = deletion_curve(explainer.model, result.model_input, result.model_saliency,
                                           result.class_idx, mode=mode, n_steps=n_steps, reference=ref)[0]
                    row[f"{mode}_auc"] = float(np.trapezoid(curve, np.linspace(0, 1, len(curve))))
                    figures["curves"][name][mode].append(curve)
            row["seconds"] = round(seconds, 3)
            rows.append(row)
            case_fig["maps"][name] = result.saliency
            done += 1
            if log:
                log(f"[{done}/{total}] {entry['id']} {name}: pointing {row['pointing_game']:.0f}, "
                    f"AUROC {row['auroc']:.3f}, {seconds:.1f} s")
        figures["cases"].append(case_fig)
    return rows, figures


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _display_slice(image: np.ndarray, lesion: np.ndarray, maps: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """2D: the arrays as (rows, columns); 3D: the slice with the most lesion (or the first map's maximum)."""
    if image.ndim == 2:
        return monai_to_dicom(image), monai_to_dicom(lesion), {k: monai_to_dicom(v) for k, v in maps.items()}
    area = (lesion > 0).sum(axis=(0, 1))
    if area.max() > 0:
        k = int(area.argmax())
    else:
        first = next(iter(maps.values()))
        k = int(np.unravel_index(first.argmax(), first.shape)[2])
    return (monai_to_dicom(image[..., k]), monai_to_dicom(lesion[..., k]),
            {name: monai_to_dicom(v[..., k]) for name, v in maps.items()})


def _overlay_grid(figures: dict, methods: Sequence[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = figures["cases"]
    fig, axes = plt.subplots(len(cases), len(methods) + 1, figsize=(2.2 * (len(methods) + 1), 2.2 * len(cases)),
                             squeeze=False)
    for r, case in enumerate(cases):
        image, lesion, maps = _display_slice(case["image"], case["lesion_array"], case["maps"])
        lo, hi = np.percentile(image, [1, 99.5])
        for c, title in enumerate(["image", *methods]):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
            if c > 0:
                ax.imshow(np.ma.masked_less(maps[title], 0.2), cmap="inferno", vmin=0, vmax=1, alpha=0.6)
            if lesion.any():
                ax.contour(lesion > 0, levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(case["id"], fontsize=8)
    return _png(fig)


def _curves(figures: dict) -> bytes | None:
    import matplotlib.pyplot as plt

    curves = figures["curves"]
    if not any(v["deletion"] for v in curves.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, mode in zip(axes, ("deletion", "insertion")):
        for name, by_mode in curves.items():
            if by_mode[mode]:
                mean = np.mean(by_mode[mode], axis=0)
                ax.plot(np.linspace(0, 1, len(mean)), mean, label=name)
        ax.set_xlabel(f"fraction of voxels {'removed' if mode == 'deletion' else 'inserted'} (most salient first)")
        ax.set_ylabel("class probability")
        ax.set_title(f"{mode} ({'lower' if mode == 'deletion' else 'higher'} is better)")
    axes[1].legend(fontsize=8)
    return _png(fig)


def _boxplots(rows: Sequence[dict], methods: Sequence[str], metrics: Sequence[str]) -> bytes:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        data = [[r[metric] for r in rows if r["method"] == m and not math.isnan(r[metric])] for m in methods]
        ax.boxplot(data, tick_labels=list(methods))
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    fig.tight_layout()
    return _png(fig)


def _csv_bytes(rows: Sequence[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _fmt(v) -> str:
    return "" if isinstance(v, float) and math.isnan(v) else (f"{v:.3f}" if isinstance(v, float) else html.escape(str(v)))


def write_report(rows: Sequence[dict], figures: dict, out_dir: str | os.PathLike, title: str = "medhdm report") -> Path:
    """Write the CSVs, JSON, figures and ``report.html`` into ``out_dir``; return the HTML's path."""
    if not rows:
        raise ValueError("rows: nothing to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    metrics = [k for k in (*LOCALISATION_KEYS, *FAITHFULNESS_KEYS) if k in rows[0]]
    summary = aggregate(rows, metrics)
    comparisons = [paired_comparison(rows, m, methods[0], metric) for m in methods[1:] for metric in metrics]
    atomic_write(out / "per_case.csv", _csv_bytes(rows))
    atomic_write(out / "summary.csv", _csv_bytes(summary))
    atomic_write(out / "summary.json", (json.dumps({"summary": summary, "paired_vs_first": comparisons},
                                                   indent=2) + "\n").encode())
    images = {"overlays.png": _overlay_grid(figures, methods), "boxplots.png": _boxplots(rows, methods, metrics)}
    curves = _curves(figures)
    if curves is not None:
        images["curves.png"] = curves
    for name, data in images.items():
        atomic_write(out / name, data)

    def embed(name: str, alt: str) -> str:
        if name not in images:
            return ""
        data = base64.b64encode(images[name]).decode()
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    table = ["<table><tr><th>method</th>" + "".join(f"<th>{m}</th>" for m in metrics) + "</tr>"]
    for method in methods:
        cells = []
        for metric in metrics:
            s = next(x for x in summary if x["method"] == method and x["metric"] == metric)
            cells.append(f"<td>{_fmt(s['mean'])}<br><small>[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]</small></td>")
        table.append(f"<tr><th>{html.escape(method)}</th>{''.join(cells)}</tr>")
    table.append("</table>")
    pairs = ["<table><tr><th>method - " + html.escape(methods[0]) + "</th><th>metric</th><th>pairs</th>"
             "<th>mean difference [95% CI]</th><th>Wilcoxon p</th></tr>"]
    for c in comparisons:
        pairs.append(f"<tr><td>{html.escape(c['a'])}</td><td>{c['metric']}</td><td>{c['pairs']}</td>"
                     f"<td>{_fmt(c['mean_difference'])} [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]</td>"
                     f"<td>{_fmt(c['wilcoxon_p'])}</td></tr>")
    pairs.append("</table>")
    n_cases = len({r["case"] for r in rows})
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;}} table{{border-collapse:collapse;margin:1em 0;}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right;}} img{{max-width:100%;}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{n_cases} cases, {len(methods)} methods: {", ".join(html.escape(m) for m in methods)}.
Files: <a href="per_case.csv">per_case.csv</a>, <a href="summary.csv">summary.csv</a>,
<a href="summary.json">summary.json</a>.</p>
<h2>Summary (mean [bootstrap 95% CI] over cases)</h2>
<p>pointing_game: map maximum inside a lesion; energy_in_lesion: share of the map inside lesions; rank_accuracy,
dice_top, iou_top: the map's top voxels (as many as lesion voxels) against the lesions; auroc, auprc: the map as a
voxel classifier of the lesion mask; lesion_hit_rate: share of lesions holding one of the map's top peaks;
deletion_auc (lower is better), insertion_auc (higher is better): faithfulness to the model.</p>
{"".join(table)}
<h2>Overlays (lesion outline in cyan; 3D: the slice with the most lesion)</h2>
{embed("overlays.png", "overlay grid, cases by methods")}
<h2>Deletion and insertion curves (mean over cases)</h2>
{embed("curves.png", "deletion and insertion curves") or "<p>Not computed.</p>"}
<h2>Metrics per method</h2>
{embed("boxplots.png", "box plots of every metric per method")}
<h2>Paired comparison with {html.escape(methods[0])}</h2>
{"".join(pairs)}
</body></html>
"""
    path = out / "report.html"
    atomic_write(path, page.encode())
    return path
