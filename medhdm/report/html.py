"""A report people can read: ``report.html`` with its tables and figures, and the CSV/JSON beside it.

:func:`write_report` takes the rows of an evaluation run (:mod:`medhdm.evaluation.run`) and
writes ``per_case.csv``, ``summary.csv``, ``summary.json`` (mean, median, bootstrap 95% CI
per method and metric; paired comparisons of every method with the first one), figures
(overlay grid case x method with the lesion outline, mean deletion/insertion curves, box
plots per metric) and one self-contained ``report.html`` with the figures embedded.
Rendering only: the numbers come from :mod:`medhdm.evaluation`.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from ..evaluation import FAITHFULNESS_KEYS, compare_with_first, summarise
from ..io.atomic import atomic_write
from ..metrics.localisation import LOCALISATION_KEYS
from .figures import boxplots_png, curves_png, overlay_grid_png

__all__ = ["write_report"]


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
    summary = summarise(rows, metrics)
    comparisons = compare_with_first(rows, metrics)
    atomic_write(out / "per_case.csv", _csv_bytes(rows))
    atomic_write(out / "summary.csv", _csv_bytes(summary))
    atomic_write(out / "summary.json", (json.dumps({"summary": summary, "paired_vs_first": comparisons},
                                                   indent=2) + "\n").encode())
    images = {"overlays.png": overlay_grid_png(figures, methods), "boxplots.png": boxplots_png(rows, methods, metrics)}
    curves = curves_png(figures)
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
