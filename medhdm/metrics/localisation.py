"""How well saliency maps overlap annotated lesions.

Every function takes one map and one lesion mask of the same spatial shape
``S`` (2D or 3D; NumPy arrays or torch tensors; a leading ``(1,)`` channel axis
is dropped) and returns a plain float. :func:`score` computes them all.
Undefined values (an empty lesion mask, a constant map) are NaN, never a crash.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, stats

__all__ = [
    "LOCALISATION_KEYS",
    "auprc",
    "auroc",
    "dice_top",
    "energy_in_lesion",
    "hit_peaks",
    "iou_top",
    "lesion_hit_rate",
    "pointing_game",
    "rank_accuracy",
    "score",
    "score_batch",
]

LOCALISATION_KEYS = (
    "pointing_game",
    "energy_in_lesion",
    "rank_accuracy",
    "auroc",
    "auprc",
    "dice_top",
    "iou_top",
    "lesion_hit_rate",
)


def _as_map(saliency) -> np.ndarray:
    """``saliency`` as a float64 2D or 3D array (a leading channel of 1 dropped), finite."""
    s = np.asarray(saliency.detach().cpu() if hasattr(saliency, "detach") else saliency, dtype=np.float64)
    if s.ndim in (3, 4) and s.shape[0] == 1:
        s = s[0]
    if s.ndim not in (2, 3):
        raise ValueError(
            f"saliency: expected a 2D or 3D map (optionally with a leading channel of 1), got shape {s.shape}"
        )
    if not np.isfinite(s).all():
        raise ValueError("saliency: the map has NaN or infinite values")
    return s


def _as_arrays(saliency, lesion_mask) -> tuple[np.ndarray, np.ndarray]:
    s = _as_map(saliency)
    m = np.asarray(lesion_mask.detach().cpu() if hasattr(lesion_mask, "detach") else lesion_mask)
    if m.ndim in (3, 4) and m.shape[0] == 1 and m.ndim == s.ndim + 1:
        m = m[0]
    if s.shape != m.shape:
        raise ValueError(f"lesion_mask: expected the saliency map's shape {s.shape}, got {m.shape}")
    return s, m > 0


def _undefined(s: np.ndarray, m: np.ndarray) -> bool:
    return not m.any() or float(s.max() - s.min()) <= 0


def pointing_game(saliency, lesion_mask, spacing: Sequence[float] | None = None, tolerance_mm: float = 0.0) -> float:
    """1.0 if the map's maximum lies in a lesion (within ``tolerance_mm``), else 0.0.

    With ties for the maximum, every voxel attaining it is checked and the hit counts
    only if all of them are within tolerance (a flat map cannot score by luck).
    ``spacing`` gives the voxel size in mm per axis (default 1). NaN for an empty mask
    or a constant map.
    """
    s, m = _as_arrays(saliency, lesion_mask)
    if _undefined(s, m):
        return float("nan")
    peaks = s >= s.max()
    if tolerance_mm > 0:
        sampling = tuple(spacing) if spacing is not None else (1.0,) * s.ndim
        distance = ndimage.distance_transform_edt(~m, sampling=sampling)
        inside = distance <= tolerance_mm
    else:
        inside = m
    return float(inside[peaks].all())


def energy_in_lesion(saliency, lesion_mask) -> float:
    """Share of the map's mass inside lesions, ``sum(S * L) / sum(S)`` (relevance mass accuracy).

    NaN for an empty mask or an all-zero map.
    """
    s, m = _as_arrays(saliency, lesion_mask)
    total = float(s.sum())
    if not m.any() or total <= 0:
        return float("nan")
    return float(s[m].sum() / total)


def rank_accuracy(saliency, lesion_mask) -> float:
    """Share of the top-``K`` voxels of the map inside lesions, ``K`` = lesion voxel count.

    Ties at the cut are broken by voxel order (stable sort). NaN for an empty mask or a
    constant map.
    """
    s, m = _as_arrays(saliency, lesion_mask)
    if _undefined(s, m):
        return float("nan")
    return float(m[_top_k(s, int(m.sum()))].mean())


def auroc(saliency, lesion_mask) -> float:
    """Area under the ROC curve of the map as a voxel classifier of the lesion mask.

    Computed exactly from ranks (Mann-Whitney U, ties counted as one half). NaN when
    the mask is empty or covers the whole image.
    """
    s, m = _as_arrays(saliency, lesion_mask)
    n_pos = int(m.sum())
    n_neg = m.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s.ravel())
    u = ranks[m.ravel()].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def auprc(saliency, lesion_mask) -> float:
    """Area under the precision-recall curve as average precision, ``sum_n (R_n - R_{n-1}) P_n``.

    Thresholds run over the distinct map values from the highest down; tied voxels enter
    together (as in scikit-learn's ``average_precision_score``). NaN when the mask is empty.
    A map that ranks every lesion voxel first scores 1; the chance level is the lesion's
    share of the image.
    """
    s, m = _as_arrays(saliency, lesion_mask)
    n_pos = int(m.sum())
    if n_pos == 0:
        return float("nan")
    values = s.ravel()
    order = np.argsort(-values, kind="stable")
    sorted_values, hits = values[order], m.ravel()[order]
    last_of_group = np.r_[sorted_values[1:] != sorted_values[:-1], True]
    true_pos = np.cumsum(hits)[last_of_group]
    predicted = (np.arange(1, values.size + 1))[last_of_group]
    precision = true_pos / predicted
    recall = true_pos / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _top_k(s: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` highest voxels (ties at the cut broken by voxel order, as in :func:`rank_accuracy`)."""
    top = np.zeros(s.size, dtype=bool)
    top[np.argsort(-s.ravel(), kind="stable")[:k]] = True
    return top.reshape(s.shape)


def dice_top(saliency, lesion_mask) -> float:
    """Dice of the map's top-``K`` voxels (``K`` = lesion voxel count) with the lesion mask.

    Since both sets hold ``K`` voxels, this equals :func:`rank_accuracy`; it is reported
    under its segmentation name for readers who compare with segmentation Dice. NaN for an
    empty mask or a constant map.
    """
    s, m = _as_arrays(saliency, lesion_mask)
    if _undefined(s, m):
        return float("nan")
    top = _top_k(s, int(m.sum()))
    return float(2.0 * (top & m).sum() / (top.sum() + m.sum()))


def iou_top(saliency, lesion_mask) -> float:
    """Intersection over union of the map's top-``K`` voxels with the lesion mask (``K`` as in :func:`dice_top`).

    NaN for an empty mask or a constant map.
    """
    s, m = _as_arrays(saliency, lesion_mask)
    if _undefined(s, m):
        return float("nan")
    top = _top_k(s, int(m.sum()))
    return float((top & m).sum() / (top | m).sum())


def hit_peaks(saliency, radius: int | None = None, min_peak: float = 0.2) -> list[tuple[float, tuple[int, ...]]]:
    """The peaks :func:`lesion_hit_rate` chooses from: ``(value, position)``, highest first.

    Local maxima of the map over a cube of half-width ``radius`` voxels (default ``max(1, max(S) // 32)``), one
    voxel per plateau, with value at least ``min_peak`` times the map's maximum.
    """
    return _peaks(_as_map(saliency), radius, min_peak)


def _peaks(s: np.ndarray, radius: int | None, min_peak: float) -> list[tuple[float, tuple[int, ...]]]:
    radius = max(1, max(s.shape) // 32) if radius is None else int(radius)
    footprint = np.ones((2 * radius + 1,) * s.ndim, dtype=bool)
    local = (s == ndimage.maximum_filter(s, footprint=footprint, mode="nearest")) & (s >= min_peak * s.max())
    labels, n = ndimage.label(local)
    if n == 0:
        return []
    positions = ndimage.maximum_position(s, labels, index=np.arange(1, n + 1))
    found = [(float(s[p]), tuple(int(v) for v in p)) for p in positions]
    return sorted(found, key=lambda t: -t[0])


def lesion_hit_rate(
    saliency, lesion_mask, n_peaks: int | None = None, radius: int | None = None, min_peak: float = 0.2
) -> float:
    """Share of connected lesion components that hold one of the map's top peaks.

    Definition: lesion components are the connected components of the mask (full
    connectivity). Peaks are those of :func:`hit_peaks` (the map's local maxima over a cube
    of half-width ``radius`` voxels, at least ``min_peak`` times its maximum). The ``n_peaks``
    highest peaks are kept (default: the number of lesion components, so a peak spent on a
    distractor costs a lesion). A component is hit if a kept peak lies inside it. NaN for an
    empty mask or a constant map.
    """
    s, m = _as_arrays(saliency, lesion_mask)
    if _undefined(s, m):
        return float("nan")
    labels, n_lesions = ndimage.label(m, structure=np.ones((3,) * s.ndim))
    keep = n_lesions if n_peaks is None else int(n_peaks)
    hit = {labels[p] for _, p in _peaks(s, radius, min_peak)[:keep]} - {0}
    return len(hit) / n_lesions


def score(saliency, lesion_mask, spacing: Sequence[float] | None = None, tolerance_mm: float = 0.0) -> dict[str, float]:
    """All localisation metrics of one map against one lesion mask, keyed by :data:`LOCALISATION_KEYS`."""
    return {
        "pointing_game": pointing_game(saliency, lesion_mask, spacing=spacing, tolerance_mm=tolerance_mm),
        "energy_in_lesion": energy_in_lesion(saliency, lesion_mask),
        "rank_accuracy": rank_accuracy(saliency, lesion_mask),
        "auroc": auroc(saliency, lesion_mask),
        "auprc": auprc(saliency, lesion_mask),
        "dice_top": dice_top(saliency, lesion_mask),
        "iou_top": iou_top(saliency, lesion_mask),
        "lesion_hit_rate": lesion_hit_rate(saliency, lesion_mask),
    }


def score_batch(
    saliency, lesion_masks, spacing: Sequence[float] | None = None, tolerance_mm: float = 0.0
) -> list[dict[str, float]]:
    """:func:`score` for each image of a batch.

    Maps ``(B, 1, *S)`` or ``(B, *S)``, masks ``(B, 1, *S)`` or ``(B, *S)``.
    """
    s = saliency.detach().cpu().numpy() if hasattr(saliency, "detach") else np.asarray(saliency)
    m = lesion_masks.detach().cpu().numpy() if hasattr(lesion_masks, "detach") else np.asarray(lesion_masks)
    if len(s) != len(m):
        raise ValueError(f"lesion_masks: expected {len(s)} masks for {len(s)} maps, got {len(m)}")
    return [score(a, b, spacing=spacing, tolerance_mm=tolerance_mm) for a, b in zip(s, m)]
