"""Findings: an explanation as a short list of lesion-level regions, each with its place, size and evidence.

A :class:`Finding` is one region of an image that an explanation points at. Every explainer fills
:attr:`Explanation.findings <medhdm.explain.base.Explanation.findings>` (per image a list, highest
``score`` first):

- **HDM** (:func:`stage_regions`): its stages. Stage ``l`` found the region it added,
  ``M_l (1 - R_{l-1})`` (from the :class:`~medhdm.explain.base.StageRecord` maps and removed regions);
  the connected components of that contribution at half its maximum (:data:`REGION_LEVEL`), outside
  the earlier stages' regions, each cut to its core around the explanation's map peak in it (the voxels
  of at least half the peak's value connected to it, :func:`region_core`), are the candidate regions;
  those that carry evidence (:data:`EVIDENCE_FLOOR`) become findings, ranked by their evidence, and a
  finding whose peak lies within ``NMS_RADIUS_MM`` of a stronger one's is dropped (one finding per place).
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
``share`` that evidence over the image's findings' total. One batched model call per explanation
(two composites per candidate region).

A finding's ``peak`` is the voxel where the explanation's map is largest inside the region, its
``centroid`` the map-weighted centre of the region (voxel coordinates, floats, in the input
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
    "region_core",
    "region_evidence",
    "stage_regions",
]

#: the non-maximum suppression radius of map-derived findings, mm (voxels when the spacing is unknown)
NMS_RADIUS_MM = 15.0
#: a map's local maximum becomes a candidate when it reaches this share of the map's maximum
MIN_PEAK = 0.2
#: regions: voxels of at least this share of their peak (maps) or of the stage's maximum (HDM)
REGION_LEVEL = 0.5
#: at most this many findings per image (every method)
MAX_FINDINGS = 10
#: HDM's candidate regions become findings when they carry at least this evidence, log-odds
EVIDENCE_FLOOR = 0.01


@dataclass
class Finding:
    """One region that an explanation points at (see the module docstring).

    Attributes:
        stage: the HDM stage that found it (1, 2, ...); None for a map-derived finding.
        centroid: the map-weighted centre of the region, voxel coordinates (floats) in the
            input's spatial axis order (on the source grid for :attr:`ExplainedImage.findings
            <medhdm.pipeline.ExplainedImage.findings>`).
        peak: the voxel index where the map is largest inside the region.
        size_mm: the region's area in mm^2 (2D) or volume in mm^3 (3D), or its voxel count.
        size_unit: ``"mm^2"``, ``"mm^3"`` or ``"voxels"``.
        evidence: ``max(0, drop, alone)``, log-odds.
        drop: the log-odds removing the region takes, ``o(x) - o(phi(x, 1 - region))``.
        alone: the log-odds the region keeps alone above the reference, ``o(phi(x, region)) - o(r)``.
        share: ``evidence`` over the image's findings' total (0 when none carries any).
        score: what the findings are ranked by: HDM's ``evidence``, the map's value at ``peak`` for the others.
        region: the region, a boolean array of the map's spatial shape (not compared, not shown).
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
    evidence: tuple[float, float] = (0.0, 0.0),
    score: float | None = None,
) -> Finding:
    """A :class:`Finding` of a boolean ``region`` ``S`` of the map ``saliency`` ``S`` (``share`` left 0).

    ``evidence``: ``(drop, alone)`` in log-odds; ``score`` None: the map's value at the peak.
    """
    region = np.asarray(region, dtype=bool)
    if not region.any():
        raise ValueError("region: expected at least one voxel, got an empty region")
    values = np.where(region, saliency, -np.inf)
    peak = tuple(int(v) for v in np.unravel_index(int(np.argmax(values)), region.shape))
    weights = np.where(region, np.clip(saliency, 0, None), 0.0)
    if weights.sum() <= 0:
        weights = region.astype(np.float64)
    centroid = tuple(float(v) for v in ndimage.center_of_mass(weights))
    voxel, unit = _unit(spacing, region.ndim)
    drop, alone = (float(v) for v in evidence)
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
    )


def _nms(peaks: list[tuple[float, tuple[int, ...]]], spacing: np.ndarray, radius_mm: float) -> list:
    """Peaks (value, index), highest first, without any within ``radius_mm`` of a higher one kept before."""
    kept: list[tuple[float, tuple[int, ...]]] = []
    for value, index in peaks:
        here = np.asarray(index, dtype=np.float64) * spacing
        if all(np.linalg.norm(here - np.asarray(k, dtype=np.float64) * spacing) > radius_mm for _, k in kept):
            kept.append((value, index))
    return kept


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
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    footprint = sum((g * d) ** 2 for g, d in zip(grids, step)) <= radius_mm**2
    local = (s == ndimage.maximum_filter(s, footprint=footprint, mode="nearest")) & (s >= min_peak * top)
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


def region_core(region: np.ndarray, saliency: np.ndarray, level: float = REGION_LEVEL) -> np.ndarray:
    """The part of ``region`` around the map's peak in it: its voxels of at least ``level`` times the
    peak's value, connected to the peak (full connectivity); both arrays of shape ``S``."""
    values = np.where(region, saliency, -np.inf)
    peak = np.unravel_index(int(np.argmax(values)), region.shape)
    labels, _ = ndimage.label(region & (saliency >= level * saliency[peak]), structure=np.ones((3,) * region.ndim))
    return labels == labels[peak] if labels[peak] else region


def stage_regions(
    maps: torch.Tensor, removed: torch.Tensor, active: torch.Tensor, level: float = REGION_LEVEL
) -> list[list[tuple[int, np.ndarray]]]:
    """HDM's candidate regions per image: the connected components of each stage's contribution
    ``M_l (1 - R_{l-1})`` outside the earlier stages' regions (``R_{l-1} < 0.5``).

    Args:
        maps: the stages' maps ``M_l``, ``(L, B, 1, *S)``.
        removed: the regions removed after each stage ``R_l``, ``(L, B, 1, *S)``.
        active: whether each stage ran for each image, ``(L, B)``.
        level: a component's voxels reach this share of the contribution's maximum.
    Returns:
        per image, ``(stage, region)`` pairs (stage from 1, region boolean ``S``), by stage, larger first.
    """
    maps = maps.detach().float().cpu().numpy()[:, :, 0]
    removed = removed.detach().float().cpu().numpy()[:, :, 0]
    ran = active.detach().cpu().numpy().astype(bool)
    out: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(maps.shape[1])]
    for b in range(maps.shape[1]):
        before = np.zeros(maps.shape[2:])
        for level_index in range(maps.shape[0]):
            contribution = maps[level_index, b] * (1 - before) * (before < 0.5)  # outside earlier regions
            before = removed[level_index, b]
            top = float(contribution.max())
            if not ran[level_index, b] or not np.isfinite(top) or top <= 0:
                continue
            labels, n = ndimage.label(contribution >= level * top, structure=np.ones((3,) * contribution.ndim))
            sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
            for k in np.argsort(-sizes, kind="stable")[:MAX_FINDINGS]:
                out[b].append((level_index + 1, labels == k + 1))
    return out


def region_evidence(
    scorer,
    x: torch.Tensor,
    reference: torch.Tensor,
    class_idx: torch.Tensor,
    regions: Sequence[Sequence[np.ndarray]],
    o_x: torch.Tensor,
    o_r: torch.Tensor,
) -> list[list[tuple[float, float]]]:
    """``(drop, alone)`` in log-odds of every region of every image (see the module docstring).

    Args:
        scorer: a :class:`~medhdm.explain.scoring.ClassScorer` of the explained model.
        x, reference: the images and their reference ``(B, C, *S)``.
        class_idx: the explained class per image ``(B,)``.
        regions: per image, boolean regions ``S``.
        o_x, o_r: the class's log-odds on ``x`` and on ``reference`` ``(B,)``.
    Returns:
        per image, per region, ``(drop, alone)``; one model call of ``2 N`` composites for ``N`` regions.
    """
    owner = [b for b, rs in enumerate(regions) for _ in rs]
    if not owner:
        return [[] for _ in regions]
    idx = torch.as_tensor(owner, device=x.device)
    masks = torch.from_numpy(np.stack([r for rs in regions for r in rs]).astype(np.float32))
    masks = masks[:, None].to(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        batch = torch.cat([composite(x[idx], 1 - masks, reference[idx]), composite(x[idx], masks, reference[idx])])
        o = scorer.log_odds(scorer.logits(batch), class_idx[idx].repeat(2)).float().cpu()
    n = len(owner)
    drop = (o_x.float().cpu()[idx.cpu()] - o[:n]).tolist()
    alone = (o[n:] - o_r.float().cpu()[idx.cpu()]).tolist()
    out: list[list[tuple[float, float]]] = [[] for _ in regions]
    for b, d, a in zip(owner, drop, alone):
        out[b].append((d, a))
    return out


def _ranked(
    saliency: np.ndarray,
    regions: Sequence[np.ndarray],
    stages: Sequence[int] | None,
    evidence: Sequence[tuple[float, float]],
    spacing: Sequence[float] | None,
) -> list[Finding]:
    """One image's findings: HDM's (``stages`` given) those that carry evidence, by evidence; else by peak."""
    found = []
    for k, region in enumerate(regions):
        finding = finding_from_region(region, saliency, spacing, None if stages is None else stages[k], evidence[k])
        if stages is not None:
            if finding.evidence < EVIDENCE_FLOOR:
                continue
            finding.score = finding.evidence
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
        candidates = stage_regions(
            torch.stack([s.map for s in result.stages]),
            torch.stack([s.removed for s in result.stages]),
            torch.stack([s.active for s in result.stages]),
        )
        regions = [[region_core(r, s) for _, r in c] for c, s in zip(candidates, saliency)]
        stages = [[s for s, _ in c] for c in candidates]
    else:
        regions = [map_regions(s, row) for s, row in zip(saliency, rows)]
        stages = [None] * len(saliency)
    class_idx = result.class_idx.to(logits.device)
    with torch.no_grad():
        o_x = scorer.log_odds(logits, class_idx)
        o_r = scorer.log_odds(scorer.logits(reference), class_idx)
    evidence = region_evidence(scorer, x, reference, class_idx, regions, o_x, o_r)
    return [_ranked(saliency[b], regions[b], stages[b], evidence[b], rows[b]) for b in range(len(saliency))]
