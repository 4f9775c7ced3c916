"""Statistics over cases: one summary shape and paired comparisons.

Every evaluation (files through :func:`~medhdm.evaluation.run.evaluate_manifest`, tensors
through :func:`~medhdm.evaluation.run.compare_methods`) yields rows, one per case and
method; :func:`summarise` turns them into *the* summary shape, one record per method and
metric (``method, metric, n, mean, median, ci_low, ci_high``), which
:func:`~medhdm.evaluation.tables.format_table` prints and :mod:`medhdm.report` renders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_ci", "compare_with_first", "paired_comparison", "summarise"]


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap 95% CI of the mean over cases (NaNs dropped; all NaN -> NaNs)."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(rows: Sequence[dict], metrics: Sequence[str], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Per method and metric over cases: ``n`` (non-NaN cases), mean, median, bootstrap 95% CI.

    A metric a method's rows do not carry gets ``n = 0`` and NaNs.
    """
    out = []
    for name in dict.fromkeys(r["method"] for r in rows):
        for metric in metrics:
            values = [float(r[metric]) for r in rows if r["method"] == name and metric in r]
            finite = [v for v in values if not math.isnan(v)]
            mean, low, high = bootstrap_ci(finite, n_boot, seed)
            out.append(
                {
                    "method": name,
                    "metric": metric,
                    "n": len(finite),
                    "mean": mean,
                    "median": float(np.median(finite)) if finite else float("nan"),
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return out


def paired_comparison(
    rows: Sequence[dict], method_a: str, method_b: str, metric: str, n_boot: int = 2000, seed: int = 0
) -> dict:
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
    return {
        "metric": metric,
        "a": method_a,
        "b": method_b,
        "pairs": len(diffs),
        "mean_difference": mean,
        "ci_low": low,
        "ci_high": high,
        "wilcoxon_p": p,
    }


def compare_with_first(rows: Sequence[dict], metrics: Sequence[str]) -> list[dict]:
    """:func:`paired_comparison` of every other method with the first one in ``rows``, on every metric."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    return [paired_comparison(rows, m, methods[0], metric) for m in methods[1:] for metric in metrics]
