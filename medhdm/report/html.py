"""A report people can read: ``report.html`` with its tables and figures, and the CSV/JSON beside it.

:func:`write_report` takes the rows of an evaluation run (:mod:`medhdm.evaluation.run`) and
writes ``per_case.csv``, ``summary.csv``, ``summary.json`` (mean, median, bootstrap 95% CI
per method and metric; paired comparisons of every method with the first one), figures
(overlay grid case x method with the lesion outline, mean deletion/insertion curves over a
log axis of the share of voxels, box plots per metric) and one self-contained ``report.html`` with the figures embedded.
Rendering only: the numbers come from :mod:`medhdm.evaluation`.

``report.html`` opens from disk, without a server or the network: every image is a data
URI and its own JavaScript is inline; the multiplanar viewer of each case (:mod:`medhdm.report.niivue`)
loads NiiVue from the file written beside it, its volumes embedded. The case table links to one section per
case (``#case-<id>``): a viewer with the image, the map of the method chosen in a selector
and the lesion outline, a slider over all slices of a volume, and the case's scores. The
address fragment ``#case-<id>/slice=<k>/method=<name>`` opens a case at a slice and method
(``k`` 0-based, the series' slice order). Below the viewer, each method's findings of the case (rank, HDM stage,
centroid, size, evidence share and log-odds), outlined and numbered in green on that method's frames; a
finding's row links to the viewer at its slice (its peak's) with its method.
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

import numpy as np

from ..evaluation import FAITHFULNESS_KEYS, compare_with_first, froc_curves, froc_from_rows, summarise
from ..io.atomic import atomic_write
from ..metrics.localisation import LOCALISATION_KEYS
from .figures import (
    boxplots_png,
    case_frames,
    curves_png,
    default_slice,
    finding_slice,
    froc_png,
    overlay_grid_png,
)
from .niivue import _STYLE as _VIEWER_STYLE
from .niivue import case_viewer, viewer_script, write_viewer_assets

__all__ = ["write_report"]


def _csv_bytes(rows: Sequence[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _fmt(v) -> str:
    """A float with 3 decimals (3 significant digits below 0.1: half-evidence shares are small), else the text."""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.3g}" if 0 < abs(v) < 0.1 else f"{v:.3f}"
    return html.escape(str(v))


def _summary_table(summary: Sequence[dict], methods: Sequence[str], metrics: Sequence[str]) -> str:
    """The summary as an HTML table: method x metric, mean and bootstrap CI."""
    table = ["<table><tr><th>method</th>" + "".join(f"<th>{m}</th>" for m in metrics) + "</tr>"]
    for method in methods:
        cells = []
        for metric in metrics:
            s = next(x for x in summary if x["method"] == method and x["metric"] == metric)
            cells.append(f"<td>{_fmt(s['mean'])}<br><small>[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]</small></td>")
        table.append(f"<tr><th>{html.escape(method)}</th>{''.join(cells)}</tr>")
    return "".join([*table, "</table>"])


def _pairs_table(comparisons: Sequence[dict], first: str) -> str:
    """The paired comparisons with the first method as an HTML table."""
    pairs = [
        "<table><tr><th>method - " + html.escape(first) + "</th><th>metric</th><th>pairs</th>"
        "<th>mean difference [95% CI]</th><th>Wilcoxon p</th></tr>"
    ]
    for c in comparisons:
        pairs.append(
            f"<tr><td>{html.escape(c['a'])}</td><td>{c['metric']}</td><td>{c['pairs']}</td>"
            f"<td>{_fmt(c['mean_difference'])} [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]</td>"
            f"<td>{_fmt(c['wilcoxon_p'])}</td></tr>"
        )
    return "".join([*pairs, "</table>"])


def _froc_table(froc: Sequence[dict], methods: Sequence[str]) -> str:
    """The FROC summary (:func:`medhdm.evaluation.froc_from_rows`) as an HTML table; a line when there is none."""
    if not froc:
        return "<p>No findings.</p>"
    metrics = list(dict.fromkeys(r["metric"] for r in froc))
    return _summary_table(froc, [m for m in methods if any(r["method"] == m for r in froc)], metrics)


def _images(rows: Sequence[dict], figures: dict, methods: list[str], metrics: list[str]) -> dict[str, bytes]:
    """The report's PNG figures by file name (curves and FROC only when there is something to draw)."""
    images = {"overlays.png": overlay_grid_png(figures, methods), "boxplots.png": boxplots_png(rows, methods, metrics)}
    curves = curves_png(figures)
    if curves is not None:
        images["curves.png"] = curves
    froc_image = froc_png(froc_curves(rows))
    if froc_image is not None:
        images["froc.png"] = froc_image
    return images


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
    froc = froc_from_rows(rows)
    atomic_write(out / "per_case.csv", _csv_bytes(rows))
    atomic_write(out / "summary.csv", _csv_bytes(summary))
    atomic_write(
        out / "summary.json",
        (json.dumps({"summary": summary, "paired_vs_first": comparisons, "froc": froc}, indent=2) + "\n").encode(),
    )
    images = _images(rows, figures, methods, metrics)
    for name, data in images.items():
        atomic_write(out / name, data)
    write_viewer_assets(out)

    def embed(name: str, alt: str) -> str:
        if name not in images:
            return ""
        data = base64.b64encode(images[name]).decode()
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    table = _summary_table(summary, methods, metrics)
    pairs = _pairs_table(comparisons, methods[0])
    n_cases = len({r["case"] for r in rows})
    case_table, case_sections = _cases(rows, figures, methods, metrics)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}
{_VIEWER_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{n_cases} cases, {len(methods)} methods: {", ".join(html.escape(m) for m in methods)}.
Files: <a href="per_case.csv">per_case.csv</a>, <a href="summary.csv">summary.csv</a>,
<a href="summary.json">summary.json</a>, <a href="overlays.png">overlays.png</a>.</p>
<h2 id="summary">Summary (mean [bootstrap 95% CI] over cases)</h2>
<p>pointing_game: map maximum inside a lesion; energy_in_lesion: share of the map inside lesions; rank_accuracy,
dice_top, iou_top: the map's top voxels (as many as lesion voxels) against the lesions; auroc, auprc: the map as a
voxel classifier of the lesion mask; lesion_hit_rate: share of lesions holding one of the map's top peaks.
Faithfulness to the model, on its grid, voxels removed (inserted) towards (from) the explainer's reference, most
salient first: deletion_half, insertion_half: share of voxels whose deletion takes away / whose insertion
restores half of the log-odds evidence (lower is better); deletion_auc_log (lower is better), insertion_auc_log
(higher is better): area under the probability curve sampled at log-spaced shares from 0.01 %, over log10(share),
scaled to [0, 1]; deletion_auc, insertion_auc (with <code>--curve-steps N</code>): the same over N equal shares
and the share 0..1.</p>
{table}
<h2 id="froc">Findings: FROC (lesion level)</h2>
<p>Each method's findings (HDM's from its stages, the others' from their maps' peaks); a finding hits a lesion when
its peak lies within 5 mm of it. cpm: mean share of lesions found at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false findings
per image; froc_sens@r: at r false findings per image (pooled over cases; bootstrap 95% CI over cases).</p>
{_froc_table(froc, methods)}
{embed("froc.png", "FROC curves")}
<h3>Cases (pointing game / AUROC per method; open a case)</h3>
{case_table}
<h2>Deletion and insertion curves (mean over cases, log share axis)</h2>
{embed("curves.png", "deletion and insertion curves") or "<p>Not computed.</p>"}
<h2>Metrics per method</h2>
{embed("boxplots.png", "box plots of every metric per method")}
<h2>Paired comparison with {html.escape(methods[0])}</h2>
{pairs}
<h2>Cases</h2>
<p>The image with the map of the chosen method (inferno, where it reaches 0.2) and the lesion outline (cyan);
volumes: every slice on the slider.</p>
{case_sections}
<script>{_SCRIPT}</script>
{viewer_script()}
</body></html>
"""
    path = out / "report.html"
    atomic_write(path, page.encode())
    return path


_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;} table{border-collapse:collapse;margin:1em 0;}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;} img{max-width:100%;}
section.case{border-top:2px solid #888;margin-top:2em;} .viewer{display:flex;gap:1.5em;align-items:flex-start;}
.viewer img.frame{width:320px;height:auto;image-rendering:pixelated;background:#000;}
.wide{overflow-x:auto;} .controls label{display:block;margin:.5em 0;} .controls input[type=range]{width:260px;}
body.focus>*:not(.current):not(h1){display:none;} body.focus section.current{border-top:none;}"""

# Inline and small: each viewer reads its frames (data URIs) from a JSON script element and shows the
# frame of the chosen method and slice; the fragment #case-<id>/slice=<k>/method=<name> selects them
# and shows that case alone, as its own page ("back to the summary" shows everything again).
_SCRIPT = """(function(){
function setup(v){
  var frames=JSON.parse(v.querySelector('script.frames').textContent);
  var img=v.querySelector('img.frame'),sel=v.querySelector('select.method'),
      rng=v.querySelector('input.slice'),out=v.querySelector('output');
  v.show=function(){
    var k=rng?parseInt(rng.value,10):0,m=sel.value;
    img.src=frames[m][k];img.setAttribute('data-slice',k);img.setAttribute('data-method',m);
    img.alt=m+', slice '+(k+1);if(out){out.textContent=(k+1)+' / '+frames[m].length;}
  };
  v.frames=frames;sel.addEventListener('change',v.show);if(rng){rng.addEventListener('input',v.show);}
  v.show();
}
var viewers=document.querySelectorAll('.viewer');
for(var i=0;i<viewers.length;i++){setup(viewers[i]);}
function fromHash(){
  var parts=decodeURIComponent(location.hash.slice(1)).split('/'),sec=document.getElementById(parts[0]);
  var old=document.querySelector('section.current');
  if(old){old.classList.remove('current');}
  document.body.classList.toggle('focus',!!(sec&&sec.classList.contains('case')));
  if(!sec){return;}
  if(sec.classList.contains('case')){sec.classList.add('current');}
  var v=sec.querySelector('.viewer');
  if(v){
    for(var j=1;j<parts.length;j++){
      var kv=parts[j].split('='),rng=v.querySelector('input.slice'),sel=v.querySelector('select.method');
      if(kv[0]==='slice'&&rng){rng.value=kv[1];}
      if(kv[0]==='method'&&v.frames.hasOwnProperty(kv[1])){sel.value=kv[1];}
    }
    v.show();
  }
  sec.scrollIntoView();
}
window.addEventListener('hashchange',fromHash);fromHash();
})();"""


def _ranges(values) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    spans, start, prev = [], None, None
    for v in [int(x) for x in values]:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            spans.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = prev = v
    if start is not None:
        spans.append(f"{start}-{prev}" if prev > start else f"{start}")
    return ", ".join(spans)


def _anchor(case) -> str:
    return "case-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in str(case))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _findings_tables(findings: dict, methods: Sequence[str], anchor: str, n_slices: int) -> str:
    """Each method's findings of a case as a table (rank, stage, centroid, size, evidence share); each row links to
    the viewer at the finding's slice (its peak's) with that method; empty without findings."""
    blocks = []
    for method in methods:
        listed = findings.get(method) or []
        if not listed:
            continue
        rows = []
        for rank, f in enumerate(listed, start=1):
            k = finding_slice(f)
            where = f"slice {k + 1} / {n_slices}" if n_slices > 1 else "show"
            link = html.escape(f"#{anchor}/slice={k}/method={method}", quote=True)
            centroid = ", ".join(f"{float(v):.1f}" for v in f["centroid"])
            rows.append(
                f'<tr class="finding" data-rank="{rank}" data-slice="{k}"><th>{rank}</th>'
                f"<td>{'' if f.get('stage') is None else int(f['stage'])}</td><td>({centroid})</td>"
                f"<td>{float(f['size']):.1f} {html.escape(str(f['size_unit']))}</td>"
                f"<td>{float(f['share']):.2f}</td><td>{float(f['evidence']):.2f}</td>"
                f'<td><a class="finding-link" href="{link}">{where}</a></td></tr>'
            )
        blocks.append(
            f'<table class="findings" data-method="{html.escape(method)}"><caption>{html.escape(method)}: '
            f"findings, most evidence first (outlined and numbered in green on its frames)</caption>"
            "<tr><th>#</th><th>stage</th><th>centroid (voxel)</th><th>size</th><th>evidence share</th>"
            f"<th>evidence (log-odds)</th><th>view</th></tr>{''.join(rows)}</table>"
        )
    return f'<div class="wide">{"".join(blocks)}</div>' if blocks else ""


def _cases(rows: Sequence[dict], figures: dict, methods: Sequence[str], metrics: Sequence[str]) -> tuple[str, str]:
    """The case table (linking to the sections) and one section per case: viewer, selector, slider, scores."""
    by_case: dict = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["method"]] = r
    head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    table = [f"<table><tr><th>case</th><th>lesions</th><th>label</th>{head}</tr>"]
    for case, scored in by_case.items():
        first = next(iter(scored.values()))
        cells = "".join(
            f"<td>{_fmt(scored[m]['pointing_game'])} / {_fmt(scored[m]['auroc'])}</td>" if m in scored else "<td></td>"
            for m in methods
        )
        table.append(
            f'<tr><th><a href="#{_anchor(case)}">{html.escape(str(case))}</a></th>'
            f"<td>{first.get('n_lesions', '')}</td><td>{_fmt(first.get('label', ''))}</td>{cells}</tr>"
        )
    table.append("</table>")
    sections = []
    for case_fig in figures.get("cases", []):
        case = case_fig["id"]
        shown = [m for m in methods if m in case_fig["maps"]]
        findings = case_fig.get("findings") or {}
        frames = case_frames(case_fig["image"], case_fig["lesion_array"], case_fig["maps"], shown, findings)
        n_slices = len(frames["image"])
        start = default_slice(case_fig["lesion_array"], case_fig["maps"])
        first = shown[0] if shown else "image"
        options = "".join(
            f'<option value="{html.escape(m)}"{" selected" if m == first else ""}>{html.escape(m)}</option>'
            for m in [*shown, "image"]
        )
        slider = (
            f'<label>slice <input type="range" class="slice" min="0" max="{n_slices - 1}" value="{start}"> '
            f"<output>{start + 1} / {n_slices}</output></label>"
            if n_slices > 1
            else ""
        )
        data = json.dumps({name: [_data_uri(f) for f in pngs] for name, pngs in frames.items()}).replace("</", "<\\/")
        scored = by_case.get(case, {})
        keys = ["class_idx", "score", *metrics] + (["slices"] if any("slices" in r for r in scored.values()) else [])
        score_rows = "".join(
            f"<tr><th>{html.escape(m)}</th>" + "".join(f"<td>{_fmt(scored[m].get(k, ''))}</td>" for k in keys) + "</tr>"
            for m in shown
            if m in scored
        )
        scores = (
            f'<div class="wide"><table><tr><th>method</th>{"".join(f"<th>{k}</th>" for k in keys)}</tr>'
            f"{score_rows}</table></div>"
            if score_rows
            else ""
        )
        lesion = case_fig["lesion_array"]
        where = ""
        if lesion.ndim == 3:
            holding = np.flatnonzero((lesion > 0).any(axis=(0, 1)))
            where = (
                f"<p>lesion on slices {_ranges(holding + 1)} of {n_slices}</p>"
                if holding.size
                else "<p>no lesion annotated</p>"
            )
        sections.append(
            f'<section class="case" id="{_anchor(case)}"><h3>{html.escape(str(case))}</h3>'
            f'<div class="viewer"><img class="frame" src="{_data_uri(frames[first][start])}" '
            f'alt="{html.escape(first)}">'
            f'<div class="controls"><label>method <select class="method">{options}</select></label>{slider}'
            f'{where}<p><a href="#summary">back to the summary</a></p></div>'
            f'<script type="application/json" class="frames">{data}</script></div>{scores}'
            f"{_findings_tables(findings, shown, _anchor(case), n_slices)}"
            f"{case_viewer(case_fig, shown, _anchor(case))}</section>"
        )
    return "".join(table), "\n".join(sections)
