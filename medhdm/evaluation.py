"""Explain a set of annotated cases with several methods and score the maps.

The comparison is only honest if every method explains the same model on the
same inputs and is scored by the same code: :func:`compare_methods` does that,
batch by batch, and times each method on the same machine in the same run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from .explain.base import Explainer
from .metrics.localisation import LOCALISATION_KEYS, score

__all__ = ["aggregate", "bootstrap_ci", "compare_methods", "format_table", "paired_comparison", "summarise"]


def compare_methods(
    methods: Mapping[str, Explainer],
    images: torch.Tensor,
    lesions: torch.Tensor,
    class_idx: int | Sequence[int] | None = None,
    batch_size: int = 8,
    log: Callable[[str], None] | None = None,
    maps: dict[str, torch.Tensor] | None = None,
) -> list[dict]:
    """Explain ``images`` ``(N, C, *S)`` with every method and score against ``lesions`` ``(N, 1, *S)``.

    Returns one row per (method, case): the localisation metrics, ``n_lesions``,
    ``seconds`` (the method's wall time for the case's batch divided by its size) and
    ``passes`` (forward passes per call). If ``maps`` is given, each method's saliency
    maps ``(N, 1, *S)`` are stored in it under the method's name.
    """
    rows = []
    n = images.shape[0]
    for name, explainer in methods.items():
        start_all = time.perf_counter()
        kept = []
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            idx = class_idx if class_idx is None or isinstance(class_idx, int) else list(class_idx[lo:hi])
            start = time.perf_counter()
            result = explainer.explain(images[lo:hi], idx)
            seconds = (time.perf_counter() - start) / (hi - lo)
            kept.append(result.saliency)
            for j in range(hi - lo):
                lesion = lesions[lo + j]
                row = {"method": name, "case": lo + j, "n_lesions": int(lesion.max()), "seconds": seconds}
                row["passes"] = result.forward_passes
                row.update(score(result.saliency[j], lesion))
                rows.append(row)
        if maps is not None:
            maps[name] = torch.cat(kept)
        if log:
            log(f"{name}: {n} cases in {time.perf_counter() - start_all:.1f} s")
    return rows


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap 95% CI of the mean over cases (NaNs dropped; all NaN -> NaNs)."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def aggregate(rows: Sequence[dict], metrics: Sequence[str], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Per method and metric over cases: ``n`` (non-NaN cases), mean, median, bootstrap 95% CI."""
    out = []
    for name in dict.fromkeys(r["method"] for r in rows):
        for metric in metrics:
            values = [float(r[metric]) for r in rows if r["method"] == name and metric in r]
            finite = [v for v in values if not math.isnan(v)]
            mean, low, high = bootstrap_ci(finite, n_boot, seed)
            out.append({"method": name, "metric": metric, "n": len(finite), "mean": mean,
                        "median": float(np.median(finite)) if finite else float("nan"), "ci_low": low, "ci_high": high})
    return out


def paired_comparison(rows: Sequence[dict], method_a: str, method_b: str, metric: str, n_boot: int = 2000,
                      seed: int = 0) -> dict:
    """``method_a - method_b`` on ``metric`` over the cases both scored (paired by ``case``).

    Returns the number of pairs, the mean difference with its bootstrap 95% CI, and the
    two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``; NaN when every
    difference is zero or there are no pairs).
    """
    from scipy import stats

    a = {r["case"]: float(r[metric]) for r in rows if r["method"] == method_a}
    b = {r["case"]: float(r[metric]) for r in rows if r["method"] == method_b}
    if not a or not b:
        raise ValueError(f"paired_comparison: no rows for {method_a if not a else method_b!r}")
    diffs = [a[c] - b[c] for c in a if c in b and not math.isnan(a[c]) and not math.isnan(b[c])]
    mean, low, high = bootstrap_ci(diffs, n_boot, seed)
    p = float("nan")
    if diffs and any(d != 0 for d in diffs):
        p = float(stats.wilcoxon(diffs).pvalue)
    return {"metric": metric, "a": method_a, "b": method_b, "pairs": len(diffs), "mean_difference": mean,
            "ci_low": low, "ci_high": high, "wilcoxon_p": p}


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Per method: the mean of every metric (NaN-skipping), lesion hit rate on cases with
    two or three lesions, seconds and passes per image."""
    out = []
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == name]
        summary = {"method": name, "cases": len(mine)}
        for key in LOCALISATION_KEYS:
            summary[key] = _mean([r[key] for r in mine])
        summary["lesion_hit_rate_multi"] = _mean([r["lesion_hit_rate"] for r in mine if r["n_lesions"] >= 2])
        summary["seconds"] = _mean([r["seconds"] for r in mine])
        summary["passes"] = _mean([r["passes"] for r in mine])
        out.append(summary)
    return out


def format_table(summary: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of :func:`summarise`'s output."""
    columns = list(columns or [k for k in summary[0] if k != "method"])
    lines = ["| method | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for s in summary:
        cells = []
        for c in columns:
            v = s[c]
            cells.append(f"{v:.3f}" if isinstance(v, float) and c != "seconds" else (f"{v:.2f}" if isinstance(v, float) else str(v)))
        lines.append(f"| {s['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
