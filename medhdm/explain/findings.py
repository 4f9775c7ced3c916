"""Findings: an explanation as a short list of lesion-level regions, each with its place, size and evidence.

A :class:`Finding` is one region of an image that an explanation points at. Every explainer fills
:attr:`Explanation.findings <medhdm.explain.base.Explanation.findings>` (per image a list, highest
``score`` first):

- **HDM** (:func:`hdm_regions`): its map's places, each found by a stage. The local maxima of HDM's
  fused (refined) map of at least :data:`HDM_MIN_PEAK` of its maximum, thinned within ``NMS_RADIUS_MM``
  and grown to their basins as for the other methods (:func:`map_regions`), are the candidate regions;
  each is credited to the stage that found it (:func:`peak_stages`: the first whose removed region
  ``R_l`` covers its peak, else the one whose contribution ``M_l (1 - R_{l-1})`` is largest there).
  The model decides which become findings and in which order: a candidate's ``score`` is
  :func:`hdm_score`, its ``evidence`` plus ``max(0, rest)``, what it carries once the image's other
  candidates are removed; those of at least :data:`EVIDENCE_FLOOR` become findings, highest score
  first, and a finding whose peak lies within ``NMS_RADIUS_MM`` of a stronger one's is dropped (one
  finding per place). A stage's region often spans several lesions (its coarse mask), so the places
  come from the fused map and the stages only name who found them. A lesion whose evidence shows in
  the image scores about twice it (removing it takes about as much with the others removed); one that
  another lesion masks (``drop`` near 0) still has its ``rest``; a region whose evidence shows only
  out of context (one that keeps log-odds alone over the reference while removing it takes next to
  nothing, with or without the others, such as a broad region at a low peak) scores little more than
  that evidence, so it ranks below the lesions.
- **Every other method** (:func:`map_regions`): its map. Local maxima of at least :data:`MIN_PEAK`
  of the map's maximum, thinned by non-maximum suppression within ``radius_mm``
  (:data:`NMS_RADIUS_MM`; a voxel counts as 1 mm when the spacing is unknown), each grown to its
  watershed basin above half its peak value (``skimage.segmentation.watershed``), ranked by the
  map's value at the peak.

**Evidence** (:func:`region_evidence`; in log-odds ``o`` of the explained class, measured on the
input with the explanation's reference ``r``, HDM's blur in mm when its spacing is known, else a blur):
``drop = o(x) - o(phi(x, 1 - region))`` (what removing the region takes) and
``alone = o(phi(x, region)) - o(r)`` (what the region keeps on its own); a finding's ``evidence``
is ``max(0, drop, alone)`` (HDM's ``"either"`` reading: redundant lesions under a max-pooling
classifier each suffice alone, lesions whose evidence adds up each take some when removed), its
``share`` that evidence over the image's findings' total. For HDM also
``rest = o(phi(x, 1 - U_k)) - o(phi(x, 1 - U))``, with ``U`` the union of the image's candidate
regions and ``U_k`` that union without the region: what removing the region takes once the others
are removed (NaN for the other methods, whose findings do not need it). Two composites per candidate
region through the model, for HDM three and one per image, at most twice the explained batch per call.
``explain(..., findings=False)`` (and ``explainer(x)``, which returns only the map) measures none.

A finding's ``peak`` is the voxel where the explanation's map is largest inside the region, its
``centroid`` the map-weighted centre of the region, or the region's voxel nearest to that centre when
the centre falls outside a non-convex region (voxel coordinates, floats, in the input
tensor's spatial axis order), its ``size_mm`` the region's area (mm^2) or volume (mm^3) when the
spacing is known, else its voxel count (``size_unit`` says which).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import watershed

from .reference import composite

__all__ = [
    "Finding",
    "explanation_findings",
    "MAX_FINDINGS",
    "EVIDENCE_FLOOR",
    "MIN_PEAK",
    "NMS_RADIUS_MM",
    "REGION_LEVEL",
    "finding_from_region",
    "map_regions",
    "HDM_MIN_PEAK",
    "hdm_regions",
    "peak_stages",
    "region_evidence",
    "hdm_score",
]

#: the non-maximum suppression radius of map-derived findings, mm (voxels when the spacing is unknown)
NMS_RADIUS_MM = 15.0
#: a map's local maximum becomes a candidate when it reaches this share of the map's maximum
MIN_PEAK = 0.2
#: HDM's local maxima become candidates at this share of its map's maximum (their evidence decides)
HDM_MIN_PEAK = 0.05
#: regions: the voxels of a peak's basin of at least this share of the peak's value
REGION_LEVEL = 0.5
#: at most this many findings per image (every method)
MAX_FINDINGS = 10
#: HDM's candidate regions become findings when their score (:func:`hdm_score`) reaches this, log-odds
EVIDENCE_FLOOR = 0.01


@dataclass
class Finding:
    """One region that an explanation points at (see the module docstring).

    Attributes:
        stage: the HDM stage that found it (1, 2, ...); None for a map-derived finding.
        centroid: the map-weighted centre of the region, voxel coordinates (floats) in the
            input's spatial axis order (on the source grid for :attr:`ExplainedImage.findings
            <medhdm.pipeline.ExplainedImage.findings>`). When that centre falls outside the region
            (a non-convex region, such as a C or a ring: the voxel nearest the centre is not in it),
            the centroid is the region's voxel nearest to the centre (in mm when the spacing is known)
            instead, so the point that ``<case>_findings.csv`` and the SR report always lies in the
            region and the finding's SEG segment covers it.
        peak: the voxel index where the map is largest inside the region.
        size_mm: the region's area in mm^2 (2D) or volume in mm^3 (3D), or its voxel count.
        size_unit: ``"mm^2"``, ``"mm^3"`` or ``"voxels"``.
        evidence: ``max(0, drop, alone)``, log-odds.
        drop: the log-odds removing the region takes, ``o(x) - o(phi(x, 1 - region))``.
        alone: the log-odds the region keeps alone above the reference, ``o(phi(x, region)) - o(r)``.
        share: ``evidence`` over the image's findings' total (0 when none carries any).
        score: what the findings are ranked by: HDM's :func:`hdm_score` (``evidence + max(0, rest)``), the
            map's value at ``peak`` for the others.
        region: the region, a boolean array of the map's spatial shape (not compared, not shown).
        rest: HDM's: the log-odds removing the region takes once the image's other candidate regions are
            removed (see the module docstring); NaN when not measured (the other methods).
    """

    stage: int | None
    centroid: tuple[float, ...]
    peak: tuple[int, ...]
    size_mm: float
    size_unit: str
    evidence: float
    drop: float
    alone: float
    share: float
    score: float
    region: np.ndarray | None = field(default=None, repr=False, compare=False)
    rest: float = float("nan")

    def record(self) -> dict:
        """The finding as plain JSON values (the region left out)."""
        return {
            "stage": self.stage,
            "centroid": [float(v) for v in self.centroid],
            "peak": [int(v) for v in self.peak],
            "size": float(self.size_mm),
            "size_unit": self.size_unit,
            "evidence": float(self.evidence),
            "drop": float(self.drop),
            "alone": float(self.alone),
            "rest": float(self.rest) if np.isfinite(self.rest) else None,
            "share": float(self.share),
            "score": float(self.score),
        }


def _unit(spacing: Sequence[float] | None, ndim: int) -> tuple[float, str]:
    """The size of one voxel and its unit."""
    if spacing is None:
        return 1.0, "voxels"
    return float(np.prod(spacing)), "mm^2" if ndim == 2 else "mm^3"


def finding_from_region(
    region: np.ndarray,
    saliency: np.ndarray,
    spacing: Sequence[float] | None,
    stage: int | None = None,
    evidence: tuple[float, ...] = (0.0, 0.0),
    score: float | None = None,
) -> Finding:
    """A :class:`Finding` of a boolean ``region`` ``S`` of the map ``saliency`` ``S`` (``share`` left 0).

    ``evidence``: ``(drop, alone)`` or ``(drop, alone, rest)`` in log-odds; ``score`` None: the map's value at
    the peak.
    """
    region = np.asarray(region, dtype=bool)
    if not region.any():
        raise ValueError("region: expected at least one voxel, got an empty region")
    values = np.where(region, saliency, -np.inf)
    peak = tuple(int(v) for v in np.unravel_index(int(np.argmax(values)), region.shape))
    weights = np.where(region, np.clip(saliency, 0, None), 0.0)
    if weights.sum() <= 0:
        weights = region.astype(np.float64)
    centroid = _inside(np.asarray(ndimage.center_of_mass(weights)), region, spacing)
    voxel, unit = _unit(spacing, region.ndim)
    drop, alone, rest = (*(float(v) for v in evidence), float("nan"))[:3]
    strength = max(0.0, drop, alone)
    return Finding(
        stage=stage,
        centroid=centroid,
        peak=peak,
        size_mm=float(region.sum()) * voxel,
        size_unit=unit,
        evidence=strength,
        drop=drop,
        alone=alone,
        share=0.0,
        score=float(saliency[peak]) if score is None else float(score),
        region=region,
        rest=rest,
    )


def _inside(centre: np.ndarray, region: np.ndarray, spacing: Sequence[float] | None) -> tuple[float, ...]:
    """``centre`` when its nearest voxel lies in ``region``, else the region's voxel nearest to it (in mm when
    the spacing is known): the point of a non-convex region (a C, a ring) whose centre of mass falls outside."""
    nearest = tuple(int(v) for v in np.clip(np.round(centre), 0, np.asarray(region.shape) - 1))
    if region[nearest]:
        return tuple(float(v) for v in centre)
    step = np.ones(region.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    voxels = np.argwhere(region)
    closest = voxels[int(np.argmin((((voxels - centre) * step) ** 2).sum(axis=1)))]
    return tuple(float(v) for v in closest)


def _nms(peaks: list[tuple[float, tuple[int, ...]]], spacing: np.ndarray, radius_mm: float) -> list:
    """Peaks (value, index), highest first, without any within ``radius_mm`` of a higher one kept before."""
    kept: list[tuple[float, tuple[int, ...]]] = []
    for value, index in peaks:
        here = np.asarray(index, dtype=np.float64) * spacing
        if all(np.linalg.norm(here - np.asarray(k, dtype=np.float64) * spacing) > radius_mm for _, k in kept):
            kept.append((value, index))
    return kept


def _ball_maxima(s: np.ndarray, step: np.ndarray, half: np.ndarray, radius_mm: float, where: np.ndarray) -> np.ndarray:
    """The voxels of ``where`` whose value is the maximum of ``s`` over the ball of ``radius_mm`` around them
    (``half`` voxels per axis at most), as ``s == maximum_filter(s, footprint=ball)`` gives them.

    Only the voxels that are maxima of their own neighbourhood within the ball (its part of the 3^d cube) are
    checked against the whole ball, so the cost follows the number of local maxima, not the ball's size
    times the image's.
    """
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    ball = sum((g * d) ** 2 for g, d in zip(grids, step)) <= radius_mm**2
    near = ball[tuple(slice(h - 1, h + 2) for h in half)]
    local = where & (s == ndimage.maximum_filter(s, footprint=near, mode="nearest"))
    for index in np.argwhere(local):
        lo = np.maximum(index - half, 0)
        hi = np.minimum(index + half + 1, s.shape)
        window = s[tuple(slice(a, b) for a, b in zip(lo, hi))]
        inside = ball[tuple(slice(a - i + h, b - i + h) for a, b, i, h in zip(lo, hi, index, half))]
        if window[inside].max() > s[tuple(index)]:
            local[tuple(index)] = False
    return local


def map_regions(
    saliency: np.ndarray,
    spacing: Sequence[float] | None = None,
    radius_mm: float = NMS_RADIUS_MM,
    min_peak: float = MIN_PEAK,
    level: float = REGION_LEVEL,
    max_findings: int = MAX_FINDINGS,
) -> list[np.ndarray]:
    """The regions of a map ``saliency`` ``S`` (see the module docstring), highest peak first.

    Returns boolean arrays of shape ``S``, at most ``max_findings``; none for a map without a positive maximum.
    """
    s = np.asarray(saliency, dtype=np.float64)
    top = float(s.max()) if s.size else 0.0
    if not np.isfinite(top) or top <= 0:
        return []
    step = np.ones(s.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    half = np.maximum(1, np.floor(radius_mm / step)).astype(int)
    local = _ball_maxima(s, step, half, radius_mm, s >= min_peak * top)
    labels, n = ndimage.label(local)
    if n == 0:
        return []
    positions = ndimage.maximum_position(s, labels, index=np.arange(1, n + 1))
    peaks = sorted(((float(s[p]), tuple(int(v) for v in p)) for p in positions), key=lambda t: -t[0])
    peaks = _nms(peaks, step, radius_mm)[:max_findings]
    markers = np.zeros(s.shape, dtype=np.int32)
    for k, (_, index) in enumerate(peaks, start=1):
        markers[index] = k
    basins = watershed(-s, markers, mask=s >= level * min_peak * top)
    regions = []
    for k, (value, index) in enumerate(peaks, start=1):
        grown, _ = ndimage.label((basins == k) & (s >= level * value), structure=np.ones((3,) * s.ndim))
        regions.append(grown == grown[index])
    return regions


def peak_stages(
    peaks: Sequence[tuple[int, ...]], maps: np.ndarray, removed: np.ndarray, active: np.ndarray
) -> list[int]:
    """The HDM stage (from 1) that found each of one image's ``peaks``: the first stage whose removed region
    ``R_l`` covers the peak (at least 0.5), else the stage whose contribution ``M_l (1 - R_{l-1})`` is
    largest there.

    Args:
        peaks: voxel indices in the map's spatial shape ``S``.
        maps, removed: the stages' maps ``M_l`` and removed regions ``R_l``, ``(L, *S)``.
        active: whether each stage ran, ``(L,)``.
    """
    ran = np.flatnonzero(np.asarray(active, dtype=bool))
    if ran.size == 0:
        return [1] * len(peaks)
    before = np.concatenate([np.zeros_like(removed[:1]), removed[:-1]])
    contribution = maps * (1 - before)
    stages = []
    for peak in peaks:
        covering = [int(level) for level in ran if removed[(level, *peak)] >= 0.5]
        if covering:
            stages.append(covering[0] + 1)
        else:
            stages.append(int(ran[np.argmax(contribution[(ran, *peak)])]) + 1)
    return stages


def hdm_regions(
    saliency: np.ndarray,
    maps: torch.Tensor,
    removed: torch.Tensor,
    active: torch.Tensor,
    spacing: Sequence[Sequence[float] | None],
) -> list[list[tuple[int, np.ndarray]]]:
    """HDM's candidate regions per image (see the module docstring): the regions of its map
    (:func:`map_regions` at :data:`HDM_MIN_PEAK`), each with the stage that found it (:func:`peak_stages`).

    Args:
        saliency: HDM's maps ``(B, *S)``.
        maps: the stages' maps ``M_l``, ``(L, B, 1, *S)``.
        removed: the regions removed after each stage ``R_l``, ``(L, B, 1, *S)``.
        active: whether each stage ran for each image, ``(L, B)``.
        spacing: per image, mm per axis or None (the suppression radius in voxels).
    Returns:
        per image, ``(stage, region)`` pairs (stage from 1, region boolean ``S``), highest peak first.
    """
    maps = maps.detach().float().cpu().numpy()[:, :, 0]
    removed = removed.detach().float().cpu().numpy()[:, :, 0]
    ran = active.detach().cpu().numpy().astype(bool)
    out = []
    for b, (s, row) in enumerate(zip(saliency, spacing)):
        regions = map_regions(s, row, min_peak=HDM_MIN_PEAK)
        peaks = [np.unravel_index(int(np.argmax(np.where(r, s, -np.inf))), r.shape) for r in regions]
        out.append(list(zip(peak_stages(peaks, maps[:, b], removed[:, b], ran[:, b]), regions)))
    return out


def region_evidence(
    scorer,
    x: torch.Tensor,
    reference: torch.Tensor,
    class_idx: torch.Tensor,
    regions: Sequence[Sequence[np.ndarray]],
    o_x: torch.Tensor,
    o_r: torch.Tensor,
    context: bool = False,
) -> list[list[tuple[float, float, float]]]:
    """``(drop, alone, rest)`` in log-odds of every region of every image (see the module docstring).

    Args:
        scorer: a :class:`~medhdm.explain.scoring.ClassScorer` of the explained model.
        x, reference: the images and their reference ``(B, C, *S)``.
        class_idx: the explained class per image ``(B,)``.
        regions: per image, boolean regions ``S``.
        o_x, o_r: the class's log-odds on ``x`` and on ``reference`` ``(B,)``.
        context: also measure ``rest``, what removing a region takes once its image's other regions are
            removed (NaN when False).
    Returns:
        per image, per region, ``(drop, alone, rest)``. The composites (two per region, three and one per
        image with ``context``) go through the model ``2 B`` at a time (without gradients), so the call never
        holds more images than twice the batch explained, whatever the number of candidates.
    """
    jobs: list[tuple[int, np.ndarray]] = []  # (image, kept mask) per composite
    for b, rs in enumerate(regions):
        for k, r in enumerate(rs):
            jobs += [(b, ~r), (b, r)]
            if context:
                jobs.append((b, ~_union(rs, skip=k)))
        if context and rs:
            jobs.append((b, ~_union(rs)))
    o = _composite_log_odds(scorer, x, reference, class_idx, jobs)
    out: list[list[tuple[float, float, float]]] = [[] for _ in regions]
    at = 0
    for b, rs in enumerate(regions):
        per = 3 if context else 2
        bare = o[at + per * len(rs)] if context and rs else float("nan")
        for k in range(len(rs)):
            kept, alone = o[at + per * k], o[at + per * k + 1]
            rest = o[at + per * k + 2] - bare if context else float("nan")
            out[b].append((float(o_x[b]) - kept, alone - float(o_r[b]), rest))
        at += per * len(rs) + (1 if context and rs else 0)
    return out


def _union(regions: Sequence[np.ndarray], skip: int | None = None) -> np.ndarray:
    """The union of ``regions`` (all of the same shape), the ``skip``-th left out."""
    out = np.zeros(regions[0].shape, dtype=bool)
    for k, r in enumerate(regions):
        if k != skip:
            out |= r
    return out


def _composite_log_odds(scorer, x, reference, class_idx, jobs: Sequence[tuple[int, np.ndarray]]) -> list[float]:
    """The class's log-odds of ``phi(x_b, m)`` for every ``(b, m)`` of ``jobs``, ``2 B`` composites per model call."""
    out: list[float] = []
    chunk = 2 * max(1, int(x.shape[0]))
    with torch.no_grad():
        for lo in range(0, len(jobs), chunk):
            part = jobs[lo : lo + chunk]
            idx = torch.as_tensor([b for b, _ in part], device=x.device)
            masks = torch.from_numpy(np.stack([m for _, m in part]).astype(np.float32))
            masks = masks[:, None].to(device=x.device, dtype=x.dtype)
            o = scorer.log_odds(scorer.logits(composite(x[idx], masks, reference[idx])), class_idx[idx])
            out += o.float().cpu().tolist()
    return out


def hdm_score(finding: Finding) -> float:
    """HDM's ranking score of a finding: its ``evidence`` plus what it carries once the image's other candidate
    regions are removed, ``max(0, rest)`` (0 when ``rest`` was not measured)."""
    rest = finding.rest if np.isfinite(finding.rest) else 0.0
    return finding.evidence + max(0.0, rest)


def _ranked(
    saliency: np.ndarray,
    regions: Sequence[np.ndarray],
    stages: Sequence[int] | None,
    evidence: Sequence[tuple[float, ...]],
    spacing: Sequence[float] | None,
) -> list[Finding]:
    """One image's findings: HDM's (``stages`` given) those of :func:`hdm_score` at least :data:`EVIDENCE_FLOOR`,
    by that score; else by peak."""
    found = []
    for k, region in enumerate(regions):
        finding = finding_from_region(region, saliency, spacing, None if stages is None else stages[k], evidence[k])
        if stages is not None:
            finding.score = hdm_score(finding)
            if finding.score < EVIDENCE_FLOOR:
                continue
        found.append(finding)
    found.sort(key=lambda f: -f.score)
    if stages is not None:  # one finding per place: a weaker one peaking near a stronger one is the same place
        step = np.ones(saliency.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
        kept = {id(p) for _, p in _nms([(f.score, f.peak) for f in found], step, NMS_RADIUS_MM)}
        found = [f for f in found if id(f.peak) in kept]
    found = found[:MAX_FINDINGS]
    total = sum(f.evidence for f in found)
    for finding in found:
        finding.share = finding.evidence / total if total > 0 else 0.0
    return found


def explanation_findings(
    result,
    x: torch.Tensor,
    reference: torch.Tensor,
    scorer,
    logits: torch.Tensor,
    spacing: np.ndarray | None = None,
) -> list[list[Finding]]:
    """The findings of an :class:`~medhdm.explain.base.Explanation` ``result`` of images ``x`` ``(B, C, *S)``.

    HDM's from its stage records (``result.stages``), every other method's from its map; evidence
    measured with ``scorer`` against ``reference`` ``(B, C, *S)``; ``logits`` the model's on ``x``;
    ``spacing`` ``(B, d)`` mm per axis or None (sizes and the suppression radius in voxels).
    """
    saliency = result.saliency.detach().float().cpu().numpy()[:, 0]
    rows = [None] * len(saliency) if spacing is None else [tuple(float(v) for v in row) for row in spacing]
    if result.stages:
        candidates = hdm_regions(
            saliency,
            torch.stack([s.map for s in result.stages]),
            torch.stack([s.removed for s in result.stages]),
            torch.stack([s.active for s in result.stages]),
            rows,
        )
        regions = [[r for _, r in c] for c in candidates]
        stages = [[s for s, _ in c] for c in candidates]
    else:
        regions = [map_regions(s, row) for s, row in zip(saliency, rows)]
        stages = [None] * len(saliency)
    class_idx = result.class_idx.to(logits.device)
    with torch.no_grad():
        o_x = scorer.log_odds(logits, class_idx)
        o_r = scorer.log_odds(scorer.logits(reference), class_idx)
    evidence = region_evidence(scorer, x, reference, class_idx, regions, o_x, o_r, context=bool(result.stages))
    return [_ranked(saliency[b], regions[b], stages[b], evidence[b], rows[b]) for b in range(len(saliency))]
