"""Reading deletion and insertion curves: where to sample them, their areas, and the half-evidence point.

Pure functions on curves already computed (no model): :mod:`medhdm.metrics.faithfulness`
runs the model, :mod:`medhdm.evaluation` and ``benchmarks/cost_curve.py`` read the curves
with these.

A curve is sampled at ``fractions`` ``(F,)``: increasing shares of the voxels, from 0 (nothing
changed) to 1 (every voxel changed), most salient first. On lesion images everything happens
in the first per cent of the voxels (a lesion is a few per cent of the image), so:

- :func:`curve_fractions` ``(None)`` = :func:`log_fractions`: 0 and 41 log-spaced shares from
  0.01 % to 100 % (ten per decade); ``(n)``: ``n`` equal shares (``n + 1`` samples, the RISE
  paper's sampling). Why from 0.01 %: on the shipped 3D model (24 x 48 x 48 = 55,296 voxels)
  deleting or inserting the top 0.1-0.3 % of a method's voxels takes away or restores half
  of the evidence (``benchmarks/faithfulness_grids.py``), so on a grid from 0.1 % insertion
  read 0.98-0.996 for every method; on 96 x 96 images the curves change from about 0.5 %
  (half the evidence at 1-9 %) and the first decade (1-9 voxels) is flat;
- :func:`area_log_share`: the area under the curve over ``log10(share)`` from the first non-zero
  share to 1, divided by that span (a curve that stays at ``p`` reads ``p``; in ``[0, 1]`` for
  probabilities). Each decade of shares weighs the same, so the first per cent counts for half
  of the area on the default grid instead of 1/100;
- :func:`area_linear`: the area over the share 0..1 (trapezoids), the classic AUC;
- :func:`half_point`: from a curve in log-odds, the share at which half of the evidence
  ``o(x) - o(r)`` (image against reference) is removed (deletion) or restored (insertion).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "area_linear",
    "area_log_share",
    "auc_key",
    "check_fractions",
    "curve_fractions",
    "half_point",
    "log_fractions",
]


def log_fractions(smallest: float = 1e-4, n: int = 41) -> np.ndarray:
    """``0`` then ``n`` log-spaced fractions from ``smallest`` to 1 (default 0.01 % to 100 %, ten per
    decade), ``(n + 1,)``: where deletion/insertion curves change on lesion images, the first per cent."""
    if not 0 < smallest < 1 or n < 2:
        raise ValueError(f"log_fractions: expected 0 < smallest < 1 and n >= 2, got {smallest}, {n}")
    return np.concatenate([[0.0], np.geomspace(smallest, 1.0, n)])


def curve_fractions(steps: int | None = None) -> np.ndarray:
    """The shares a curve is sampled at, ``(F,)``: :func:`log_fractions` for ``None``, else ``steps`` equal shares."""
    if steps is None:
        return log_fractions()
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"curve steps: expected None (log-spaced shares) or an int >= 1, got {steps!r}")
    return np.linspace(0.0, 1.0, int(steps) + 1)


def auc_key(mode: str, steps: int | None) -> str:
    """The column of a curve's area: ``deletion_auc_log`` (log-spaced grid, :func:`area_log_share`) or
    ``deletion_auc`` (``steps`` equal shares, :func:`area_linear`); ``insertion_...`` likewise."""
    return f"{mode}_auc_log" if steps is None else f"{mode}_auc"


def check_fractions(fractions: Sequence[float]) -> np.ndarray:
    """``fractions`` as a float array ``(F,)``, checked: increasing shares from 0 to 1 (a ``ValueError`` otherwise)."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or f.size < 2 or f[0] != 0 or f[-1] != 1 or np.any(np.diff(f) <= 0):
        raise ValueError(f"fractions: expected increasing shares from 0 to 1, got {f.tolist()}")
    return f


def _check(curves, fractions: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    f = check_fractions(fractions)
    c = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    if c.ndim != 2 or c.shape[-1] != f.size:
        raise ValueError(f"curves: expected (B, {f.size}) samples for {f.size} fractions, got {c.shape}")
    return c, f


def area_linear(curves, fractions: Sequence[float]) -> np.ndarray:
    """Area under each curve over the share 0..1 (trapezoids): curves ``(B, F)`` -> ``(B,)``."""
    c, f = _check(curves, fractions)
    return np.trapezoid(c, f, axis=-1)


def area_log_share(curves, fractions: Sequence[float]) -> np.ndarray:
    """Area under each curve over ``log10(share)``, from the first non-zero share to 1, divided by
    that span (trapezoids in log-share; the sample at share 0 is not used): ``(B, F)`` -> ``(B,)``."""
    c, f = _check(curves, fractions)
    log_share = np.log10(f[1:])
    return np.trapezoid(c[:, 1:], log_share, axis=-1) / np.ptp(log_share)


def half_point(log_odds, fractions: Sequence[float], mode: str) -> np.ndarray:
    """The share at which half of the evidence is removed (``"deletion"``) or restored (``"insertion"``).

    ``log_odds`` ``(B, F)``: the class log-odds after changing each share; the image's ``o(x)``
    and the reference's ``o(r)`` are the curve's ends (deletion: ``o(x)`` at share 0; insertion:
    at share 1). The first sample past half of ``o(x) - o(r)`` taken away (restored) is found
    and the share interpolated linearly in log-share between it and the sample before (linearly
    in share on the first segment, from 0). Returns ``(B,)``, NaN where ``o(x) <= o(r)`` (no
    evidence above the reference).
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode: expected 'deletion' or 'insertion', got {mode!r}")
    curves, grid = _check(log_odds, fractions)
    out = np.full(curves.shape[0], np.nan)
    for b, curve in enumerate(curves):
        o_x, o_r = (curve[0], curve[-1]) if mode == "deletion" else (curve[-1], curve[0])
        if not o_x > o_r:
            continue
        target = 0.5 * (o_x - o_r)
        gain = (o_x - curve) if mode == "deletion" else (curve - o_r)  # evidence removed / restored
        i = int(np.argmax(gain >= target))
        if i == 0:
            out[b] = 0.0
            continue
        lo, hi, g0, g1 = grid[i - 1], grid[i], gain[i - 1], gain[i]
        t = 0.0 if g1 == g0 else float(np.clip((target - g0) / (g1 - g0), 0, 1))
        out[b] = t * hi if lo == 0 else np.exp(np.log(lo) + t * (np.log(hi) - np.log(lo)))
    return out
