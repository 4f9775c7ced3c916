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

__all__ = ["compare_methods", "summarise", "format_table"]


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
