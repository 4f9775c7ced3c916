"""The one table formatter: a summary (:func:`~medhdm.evaluation.statistics.summarise`) as Markdown."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

__all__ = ["format_table"]


def _number(value: float, digits: int) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def format_table(
    summary: Sequence[dict],
    metrics: Sequence[str] | None = None,
    *,
    ci: bool | Collection[str] = False,
    digits: int | Mapping[str, int] = 3,
) -> str:
    """A Markdown table, one row per method, one column per metric.

    Args:
        summary: records ``{"method", "metric", "mean", "ci_low", "ci_high", ...}``.
        metrics: the columns (default: every metric, in the summary's order).
        ci: add ``[ci_low, ci_high]`` to every cell (``True``) or to the cells of these metrics.
        digits: decimals, for every metric or per metric (3 for those not named).
    """
    metrics = list(metrics or dict.fromkeys(s["metric"] for s in summary))
    cells = {(s["method"], s["metric"]): s for s in summary}
    lines = ["| method | " + " | ".join(metrics) + " |", "| --- |" + " --- |" * len(metrics)]
    for method in dict.fromkeys(s["method"] for s in summary):
        row = []
        for metric in metrics:
            s = cells.get((method, metric))
            if s is None:
                row.append("")
                continue
            d = digits if isinstance(digits, int) else digits.get(metric, 3)
            text = _number(s["mean"], d)
            if (ci is True or (not isinstance(ci, bool) and metric in ci)) and not math.isnan(s["ci_low"]):
                text += f" [{_number(s['ci_low'], d)}, {_number(s['ci_high'], d)}]"
            row.append(text)
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines)
