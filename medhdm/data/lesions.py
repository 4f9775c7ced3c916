"""Synthetic lesions on real anatomy: annotated cases built without downloads.

Backgrounds are real scans that installed packages ship: pydicom's
``CT_small.dcm`` and ``MR_small.dcm`` (2D) and nibabel's ``anatomical.nii`` and
``example4d.nii.gz`` (3D), windowed to ``[0, 1]``, resampled to the requested
size and varied by flips, crops and intensity jitter. Into them go:

- **lesions**: irregular blobs (a few overlapping Gaussians, thresholded, soft
  edges, multiplicative texture), of varied size and contrast, bright against
  the tissue; their union is the annotation, each component one lesion;
- **distractors**: bright, thin, elongated structures (vessel- or
  calcification-like), at least as bright as the lesions, so that "brightest
  spot" is not the answer and a classifier has to learn shape.

The **cue task** (:func:`make_cue_case`) is a segmentation task whose right
explanation is known: one lesion per case, and in half of the cases a cue, a
small bright square marker a short way from it; the segmentation target is the
lesion when the cue is there and nothing otherwise. A segmenter that solves it
marks the lesion because of the cue, so the explanation of its mask must show
the cue as well as the lesion.

Everything is drawn from a seeded ``numpy.random.Generator``: the same seed
gives the same cases.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from scipy import ndimage

from ..io.axes import monai_to_dicom

__all__ = ["LesionCase", "anatomy", "make_case", "make_cue_case", "make_cue_dataset", "make_dataset", "stack_cases"]


@dataclass
class LesionCase:
    """One synthetic case.

    Attributes:
        image: ``(1, *S)`` float32 in about ``[0, 1.5]``.
        lesions: ``(1, *S)`` int16 label map, 0 background, ``1..n`` one label per lesion.
        label: 1 if any lesion, else 0 (the cue task: 1 if the cue is present).
        n_lesions: number of lesions.
        cue: the cue task's marker ``(1, *S)`` bool (all False where there is none); None for
            the other cases.
    """

    image: np.ndarray
    lesions: np.ndarray
    label: int
    n_lesions: int
    cue: np.ndarray | None = None

    @property
    def target(self) -> np.ndarray:
        """The segmentation target ``(1, *S)`` uint8: the lesions, but in a cue task case only with its cue."""
        if self.cue is None:
            return (self.lesions > 0).astype(np.uint8)
        return ((self.lesions > 0) & bool(self.cue.any())).astype(np.uint8)


def _window(a: np.ndarray, lo_q: float = 1.0, hi_q: float = 99.5) -> np.ndarray:
    lo, hi = np.percentile(a, [lo_q, hi_q])
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


@cache
def _raw_anatomy(spatial_dims: int) -> tuple[np.ndarray, ...]:
    if spatial_dims == 2:
        import pydicom
        from pydicom.data import get_testdata_file

        scans = []
        for name in ("CT_small.dcm", "MR_small.dcm"):
            ds = pydicom.dcmread(get_testdata_file(name))
            scans.append(_window(ds.pixel_array.astype(np.float32)))
        return tuple(scans)
    import nibabel

    folder = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data")
    vols = []
    for name in ("anatomical.nii", "example4d.nii.gz"):
        data = np.asarray(nibabel.load(os.path.join(folder, name)).dataobj, dtype=np.float32)
        if data.ndim == 4:
            data = data[..., 0]
        vols.append(_window(monai_to_dicom(data)))  # (D, H, W)
    return tuple(vols)


def anatomy(spatial_size: tuple[int, ...]) -> list[np.ndarray]:
    """The real scans, windowed to ``[0, 1]`` and resampled to ``spatial_size`` (2 or 3 axes)."""
    out = []
    for scan in _raw_anatomy(len(spatial_size)):
        zoom = [t / s for t, s in zip(spatial_size, scan.shape)]
        out.append(np.clip(ndimage.zoom(scan, zoom, order=1), 0, 1)[tuple(slice(0, t) for t in spatial_size)])
    return out


def _background(rng: np.random.Generator, spatial_size: tuple[int, ...], kind: str) -> np.ndarray:
    if kind == "noise":
        field = ndimage.gaussian_filter(rng.normal(size=spatial_size), sigma=max(spatial_size) / 16)
        return (0.3 + 0.1 * field / (field.std() + 1e-6)).astype(np.float32)
    scans = anatomy(tuple(int(round(s * 1.25)) for s in spatial_size))
    scan = scans[rng.integers(len(scans))]
    start = [rng.integers(0, b - s + 1) for b, s in zip(scan.shape, spatial_size)]
    crop = scan[tuple(slice(a, a + s) for a, s in zip(start, spatial_size))].copy()
    for axis in range(crop.ndim):
        if rng.random() < 0.5:
            crop = np.flip(crop, axis)
    crop = crop * rng.uniform(0.8, 1.1) + rng.uniform(-0.05, 0.05)
    return np.ascontiguousarray(crop, dtype=np.float32)


def _grid(spatial_size: tuple[int, ...]) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in spatial_size], indexing="ij"))


def _blob(rng: np.random.Generator, coords: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """A soft irregular blob in ``[0, 1]``: a few overlapping Gaussians, thresholded with a soft edge."""
    nd = coords.shape[0]
    field = np.zeros(coords.shape[1:], dtype=np.float32)
    for _ in range(rng.integers(2, 5)):
        offset = rng.normal(scale=0.3 * radius, size=nd)
        sigma = radius * rng.uniform(0.5, 0.9, size=nd)
        d2 = sum(((coords[i] - centre[i] - offset[i]) / sigma[i]) ** 2 for i in range(nd))
        field = np.maximum(field, np.exp(-0.5 * d2))
    return np.clip((field - 0.45) / 0.15, 0, 1)


def _rod(rng: np.random.Generator, coords: np.ndarray, centre: np.ndarray, length: float) -> np.ndarray:
    """A thin bright segment (vessel-like) of half-width about 1 voxel."""
    nd = coords.shape[0]
    direction = rng.normal(size=nd)
    direction /= np.linalg.norm(direction)
    rel = coords - centre.reshape((nd,) + (1,) * nd)
    along = sum(rel[i] * direction[i] for i in range(nd))
    perp2 = sum(rel[i] ** 2 for i in range(nd)) - along**2
    width = rng.uniform(0.7, 1.2)
    return (np.exp(-0.5 * np.maximum(perp2, 0) / width**2) * (np.abs(along) <= length / 2)).astype(np.float32)


def make_case(
    rng: np.random.Generator,
    spatial_size: tuple[int, ...] = (96, 96),
    n_lesions: int = 1,
    n_distractors: int | None = None,
    background: str = "anatomy",
    radius_range: tuple[float, float] | None = None,
    contrast_range: tuple[float, float] = (0.25, 0.5),
    noise: float = 0.03,
) -> LesionCase:
    """Draw one case.

    Args:
        rng: the random generator (seeded by the caller).
        spatial_size: ``S``, 2 or 3 axes.
        n_lesions: lesions to insert (0 for a healthy case).
        n_distractors: bright elongated non-lesion structures (default: 1 to 3 at random).
        background: ``"anatomy"`` (real scans) or ``"noise"`` (smooth noise, for quick tests).
        radius_range: lesion radius in voxels (default ``max(S) / 24`` to ``max(S) / 12``).
        contrast_range: lesion intensity added on the ``[0, 1]`` scale.
        noise: std of the white noise added last.
    """
    spatial_size = tuple(int(s) for s in spatial_size)
    if len(spatial_size) not in (2, 3):
        raise ValueError(f"spatial_size: expected 2 or 3 axes, got {spatial_size}")
    if n_lesions < 0:
        raise ValueError(f"n_lesions: expected >= 0, got {n_lesions}")
    image = _background(rng, spatial_size, background)
    coords = _grid(spatial_size)
    big = max(spatial_size)
    r_lo, r_hi = radius_range or (big / 24, big / 12)
    labels = np.zeros(spatial_size, dtype=np.int16)
    margin = np.array([max(3, int(r_hi * 1.2)) for _ in spatial_size])
    placed: list[tuple[np.ndarray, float]] = []
    for lesion in range(1, n_lesions + 1):
        for _ in range(200):
            radius = rng.uniform(r_lo, r_hi)
            centre = np.array([rng.uniform(m, s - m) for m, s in zip(margin, spatial_size)], dtype=np.float32)
            if all(np.linalg.norm(centre - c) > 1.6 * (radius + r) + 2 for c, r in placed):
                break
        placed.append((centre, radius))
        shape = _blob(rng, coords, centre, radius)
        texture = 1 + 0.15 * ndimage.gaussian_filter(rng.normal(size=spatial_size), 1.0).astype(np.float32)
        image += rng.uniform(*contrast_range) * shape * texture
        labels[(shape > 0.5) & (labels == 0)] = lesion
    n_distractors = int(rng.integers(1, 4)) if n_distractors is None else int(n_distractors)
    for _ in range(n_distractors):
        centre = np.array([rng.uniform(4, s - 4) for s in spatial_size], dtype=np.float32)
        image += rng.uniform(0.4, 0.7) * _rod(rng, coords, centre, rng.uniform(big / 8, big / 4))
    image += rng.normal(scale=noise, size=spatial_size).astype(np.float32)
    # Relabel so that label k is the k-th connected lesion component actually present.
    components, n = ndimage.label(labels > 0, structure=np.ones((3,) * len(spatial_size)))
    return LesionCase(
        image=image[None].astype(np.float32),
        lesions=components[None].astype(np.int16),
        label=int(n > 0),
        n_lesions=int(n),
    )


def make_cue_case(rng: np.random.Generator, spatial_size: tuple[int, ...], with_cue: bool) -> LesionCase:
    """One case of the cue task (see the module docstring): one lesion, at most one distractor, and
    with ``with_cue`` a square marker (side ``max(3, max(S) / 16)``, +0.7) ``0.15`` to ``0.25 max(S)`` from the
    lesion's centre, in a direction drawn at random; :attr:`LesionCase.target` is the mask to learn."""
    spatial_size = tuple(int(s) for s in spatial_size)
    big = max(spatial_size)
    case = make_case(rng, spatial_size, 1, n_distractors=int(rng.integers(0, 2)), radius_range=(big / 20, big / 12))
    cue = np.zeros((1, *spatial_size), dtype=bool)
    draw = rng.normal(size=(200, len(spatial_size)))  # drawn either way: the cases do not depend on with_cue
    distance = rng.uniform(0.15 * big, 0.25 * big, size=200)
    if with_cue:
        side = max(3, big // 16)
        centre = np.argwhere(case.lesions[0] > 0).mean(0)
        for d, r in zip(draw, distance):
            corner = np.round(centre + r * d / np.linalg.norm(d) - side / 2).astype(int)
            if all(1 <= c <= s - side - 1 for c, s in zip(corner, spatial_size)):
                box = (0, *(slice(c, c + side) for c in corner))
                if not case.lesions[box].any():
                    cue[box] = True
                    break
        case.image[cue] += 0.7
    return LesionCase(case.image, case.lesions, int(cue.any()), case.n_lesions, cue)


def make_cue_dataset(seed: int, n_cases: int, spatial_size: tuple[int, ...] = (64, 64)) -> list[LesionCase]:
    """``n_cases`` cue task cases (:func:`make_cue_case`), the cue in every second one."""
    rng = np.random.default_rng(seed)
    return [make_cue_case(rng, spatial_size, with_cue=i % 2 == 0) for i in range(n_cases)]


def make_dataset(
    seed: int,
    n_cases: int,
    spatial_size: tuple[int, ...] = (96, 96),
    lesion_counts: tuple[int, ...] = (0, 1, 2, 3),
    weights: tuple[float, ...] | None = (0.5, 0.25, 0.125, 0.125),
    **kwargs,
) -> list[LesionCase]:
    """``n_cases`` cases with lesion counts drawn from ``lesion_counts`` (probabilities ``weights``)."""
    rng = np.random.default_rng(seed)
    p = None if weights is None else np.asarray(weights, dtype=float) / np.sum(weights)
    counts = rng.choice(lesion_counts, size=n_cases, p=p)
    return [make_case(rng, spatial_size, int(k), **kwargs) for k in counts]


def stack_cases(cases: Sequence[LesionCase]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, *S)``, lesion label maps ``(N, 1, *S)`` and labels ``(N,)`` as tensors."""
    x = torch.from_numpy(np.stack([c.image for c in cases]))
    m = torch.from_numpy(np.stack([c.lesions for c in cases]).astype(np.int64))
    y = torch.tensor([c.label for c in cases], dtype=torch.long)
    return x, m, y
