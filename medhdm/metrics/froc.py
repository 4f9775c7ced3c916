"""Lesion-level scoring of findings: hits, the FROC curve and its CPM, with bootstrap CIs over images.

Definitions (as LUNA16 and the lesion-detection literature score candidates):

- **Lesions** are the connected components of an image's lesion mask (full connectivity).
- **Hit**: a finding hits a lesion when its ``peak`` lies in the lesion dilated by
  ``tolerance_mm`` (default :data:`DEFAULT_TOLERANCE_MM` = 5 mm; in voxels when the spacing
  is unknown): the distance from the peak to the lesion's nearest voxel, in mm, is at most the
  tolerance. A peak within tolerance of two lesions hits the nearest.
- **FROC**: all images' findings pooled and ranked by score. At each score threshold, the
  sensitivity is the share of all lesions hit by a finding at or above it, and the false
  findings per image are the findings at or above it that hit no lesion, over the number of
  images (lesion-free images count). A second finding on a lesion already hit is neither a
  true nor a false finding. The sensitivity at a rate ``r`` is the highest reached with at
  most ``r`` false findings per image; :data:`FROC_RATES` are 1/8, 1/4, 1/2, 1, 2, 4 and 8.
- **CPM** (competition performance metric): the mean sensitivity at those seven rates.
- **CIs**: percentile bootstrap over images (images resampled with replacement, the FROC
  computed again), 95 %.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "DEFAULT_TOLERANCE_MM",
    "FROC_RATES",
    "ImageHits",
    "froc",
    "froc_summary",
    "image_hits",
]

#: the hit tolerance around a lesion, mm (voxels when the spacing is unknown)
DEFAULT_TOLERANCE_MM = 5.0
#: false findings per image at which the FROC's sensitivity is read; the CPM is their mean
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class ImageHits:
    """One image's findings against its lesions.

    Attributes:
        scores: the findings' scores ``(N,)``.
        lesion: the lesion each finding hits, 1..``n_lesions``, or 0 for none ``(N,)``.
        n_lesions: the image's lesion count.
    """

    scores: np.ndarray
    lesion: np.ndarray
    n_lesions: int


def image_hits(
    peaks: Sequence[Sequence[int]],
    scores: Sequence[float],
    lesion_mask,
    spacing: Sequence[float] | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> ImageHits:
    """Which lesion each finding of one image hits (see the module docstring).

    Args:
        peaks: the findings' peak voxels, each a ``d``-tuple index into ``lesion_mask``.
        scores: their scores, one per peak.
        lesion_mask: the lesion mask ``S`` (nonzero: lesion).
        spacing: mm per axis (None: voxels).
        tolerance_mm: the dilation of each lesion, mm.
    """
    mask = np.asarray(lesion_mask) != 0
    if len(peaks) != len(scores):
        raise ValueError(f"scores: expected one per peak ({len(peaks)}), got {len(scores)}")
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm: expected a distance >= 0, got {tolerance_mm}")
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    hit = np.zeros(len(peaks), dtype=np.int64)
    if n and len(peaks):
        sampling = None if spacing is None else tuple(float(v) for v in spacing)
        distance, nearest = ndimage.distance_transform_edt(labels == 0, sampling=sampling, return_indices=True)
        for k, peak in enumerate(peaks):
            index = tuple(int(v) for v in peak)
            if len(index) != mask.ndim or any(not 0 <= v < s for v, s in zip(index, mask.shape)):
                raise ValueError(f"peaks: {index} lies outside the lesion mask of shape {mask.shape}")
            if distance[index] <= tolerance_mm:
                hit[k] = labels[tuple(nearest[(slice(None), *index)])]
    return ImageHits(np.asarray(scores, dtype=np.float64).reshape(-1), hit, int(n))


def froc(images: Sequence[ImageHits], rates: Sequence[float] = FROC_RATES) -> dict:
    """The FROC of ``images`` (see the module docstring).

    Returns ``{"rates", "sensitivity" (one per rate), "cpm", "curve_fp", "curve_sensitivity",
    "n_images", "n_lesions"}``; the curve as its steps (false findings per image, sensitivity).
    NaN sensitivities when there are no lesions.
    """
    n_images = len(images)
    total = sum(im.n_lesions for im in images)
    order_scores, tp_flags, fp_flags = [], [], []
    for i, im in enumerate(images):
        for s, les in zip(im.scores, im.lesion):
            order_scores.append(s)
            tp_flags.append((i, int(les)) if les else None)
    order = np.argsort(-np.asarray(order_scores, dtype=np.float64), kind="stable")
    seen: set = set()
    fp, tp = 0, 0
    curve_fp, curve_sens = [0.0], [0.0]
    for k in order:
        key = tp_flags[k]
        if key is None:
            fp += 1
        elif key not in seen:
            seen.add(key)
            tp += 1
        else:
            continue
        curve_fp.append(fp / max(n_images, 1))
        curve_sens.append(tp / total if total else float("nan"))
    fp_flags = np.asarray(curve_fp)
    sens = np.asarray(curve_sens)
    at = [float(sens[fp_flags <= r].max()) if total else float("nan") for r in rates]
    return {
        "rates": [float(r) for r in rates],
        "sensitivity": at,
        "cpm": float(np.mean(at)) if total else float("nan"),
        "curve_fp": fp_flags.tolist(),
        "curve_sensitivity": sens.tolist(),
        "n_images": n_images,
        "n_lesions": int(total),
    }


def froc_summary(
    method: str, images: Sequence[ImageHits], n_boot: int = 1000, seed: int = 0, rates: Sequence[float] = FROC_RATES
) -> list[dict]:
    """The CPM and the sensitivity at each rate of one method's images, in the summary shape of
    :func:`medhdm.evaluation.summarise` (``method, metric, n, mean, median, ci_low, ci_high``; ``n``
    the images; ``mean`` and ``median`` the pooled value; the CI a percentile bootstrap over images).

    Metrics: ``"cpm"`` and ``"froc_sens@<rate>"`` (``"froc_sens@1"`` at one false finding per image).
    """
    point = froc(images, rates)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot if images else 0):
        pick = rng.integers(0, len(images), size=len(images))
        result = froc([images[i] for i in pick], rates)
        boots.append([result["cpm"], *result["sensitivity"]])
    boots = np.asarray(boots, dtype=np.float64).reshape(-1, 1 + len(rates))
    names = ["cpm", *(f"froc_sens@{r:g}" for r in rates)]
    values = [point["cpm"], *point["sensitivity"]]
    out = []
    for j, (name, value) in enumerate(zip(names, values)):
        column = boots[:, j][~np.isnan(boots[:, j])] if len(boots) else np.array([])
        out.append(
            {
                "method": method,
                "metric": name,
                "n": len(images),
                "mean": value,
                "median": value,
                "ci_low": float(np.percentile(column, 2.5)) if column.size else float("nan"),
                "ci_high": float(np.percentile(column, 97.5)) if column.size else float("nan"),
            }
        )
    return out
