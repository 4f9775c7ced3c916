"""From a study on disk to a map on its original grid: load, preprocess, explain, invert.

Loading goes through ``monai.transforms.LoadImage`` (medhdm's
:class:`~medhdm.io.reader.DicomSeriesReader` for DICOM files and series folders,
MONAI's NiBabel reader for NIfTI). The preprocessing the classifier needs is an
invertible MONAI ``Compose``; the saliency map computed on the classifier's grid is
taken back onto the source grid with ``monai.transforms.Invertd``, so it overlays the
source voxels exactly (same affine, same shape).

Preprocessing (:func:`classifier_transforms`):

- layout ``"dicom"`` (default): the spatial axes reversed from MONAI's (column, row, slice)
  to (slice, row, column), the layout of DICOM pixel data (and of pydicom's and
  SimpleITK's arrays) that the shipped classifiers were trained on; layout ``"monai"``:
  reoriented to ``axcodes`` (default ``"RAS"``) in MONAI's order, as networks trained with
  MONAI's ``LoadImage`` and ``Orientation`` expect;
- intensities scaled from the ``percentiles`` to [0, 1] (clipped), or from a fixed
  ``intensity_range`` (CT numbers, for example), then resized to the classifier's ``spatial_size``.

The classifier input's voxel spacing (:func:`classifier_spacing`: the source's, times the source
size over the classifier's) goes to the explainer with the input (:func:`explain_at`), so that HDM
sizes its grids and Gaussians in millimetres (:mod:`medhdm.explain.units`); the explained image
records it (``ExplainedImage.spacing``).

A 2D classifier on a 3D series (``slices=``, :class:`SliceSelection`; layout ``"dicom"``):
the series goes through the same steps as one volume (axes reversed to (slice, row, column),
intensities scaled over the whole series, each slice resized to the classifier's input, the
slice count kept), every slice through the classifier in batches (a per-slice class
probability), the chosen slices (``all``, the ``top:K`` by the class probability, or a list)
explained in batches, and their maps stacked into a volume (unexplained slices 0) that
``Invertd`` takes back onto the series grid like any 3D map. The study-level decision is the
maximum (default) or the mean over slices of each class's probability.

A segmenter (output ``(B, K, *S')``) is explained for a target region (``region=``,
:mod:`medhdm.explain.targets`): ``"predicted"`` or ``"component:k"`` on the model's own mask,
or a mask on each source's grid (a NIfTI file or an array), taken onto the model's grid by the
image's own layout and resize (nearest neighbour). The region explained comes back onto the
source grid beside the map (``ExplainedImage.region``), for export. A 2D segmenter on a 3D series
(``slices=``) is explained slice by slice for each slice's part of the region (the model's
predicted mask per slice, the series' ``k``-th connected component across slices, or the given
mask resized slice by slice): a slice's score is the class probability of its region's mean
logits, slices whose region is empty are not explained (NaN scores; ``top:K`` and ``all`` pass
them over, a listed one is refused), and the study-level score is the maximum or mean over the
others.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    Invertd,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Transposed,
)
from torch import nn

from .explain.base import Explainer, explain_at
from .explain.checks import frozen_eval, model_device
from .explain.findings import Finding, finding_from_region
from .explain.scoring import ClassScorer
from .explain.targets import component_index, component_mask
from .io.axes import monai_to_dicom_volume, reversed_spatial_indices
from .io.dicom import DicomSource, read_dicom
from .io.reader import is_dicom_path
from .transforms import LoadStudy

__all__ = [
    "ExplainedImage",
    "InputSpec",
    "SliceSelection",
    "classifier_spacing",
    "classifier_transforms",
    "classify_image",
    "explain_at",
    "explain_image",
    "explain_images",
    "finding_position_mm",
    "load_image",
    "input_record",
    "map_to_classifier_grid",
    "region_on_model_grid",
    "slice_transforms",
]


@dataclass(frozen=True)
class InputSpec:
    """What the classifier expects.

    Attributes:
        spatial_size: the classifier's input size, in the order of ``layout``.
        layout: ``"dicom"`` (slice, row, column) or ``"monai"`` (reoriented to ``axcodes``).
        axcodes: orientation for the ``"monai"`` layout (its first 2 letters for 2D images).
        percentiles: intensity percentiles mapped to 0 and 1 (clipped), when ``intensity_range`` is not given.
        intensity_range: fixed values mapped linearly to 0 and 1 (not clipped), e.g. CT numbers;
            :data:`medhdm.data.bench_files.LESIONBENCH_INTENSITY_RANGE` for LesionBench files.
        bundle: a MONAI bundle folder whose own ``preprocessing`` replaces the steps above
            (:func:`medhdm.models.bundle_preprocessing`; :meth:`from_bundle`); ``spatial_size`` then only
            gives the dimension.
        bundle_sha256: the bundle's :func:`~medhdm.models.bundle_digest`, recorded in :meth:`record`.
    """

    spatial_size: tuple[int, ...]
    layout: str = "dicom"
    axcodes: str = "RAS"
    percentiles: tuple[float, float] = (1.0, 99.5)
    intensity_range: tuple[float, float] | None = None
    bundle: str | None = None
    bundle_sha256: str | None = None

    def record(self) -> dict:
        """Every field, as JSON: the classifier input's part of a run configuration (:func:`input_record`).

        With a bundle, its digest (every configuration file and the checkpoint) stands for the preprocessing."""
        if self.bundle is not None:
            return {"spatial_size": list(self.spatial_size), "bundle_sha256": self.bundle_sha256}
        return {
            "spatial_size": list(self.spatial_size),
            "layout": self.layout,
            "axcodes": self.axcodes,
            "percentiles": list(self.percentiles),
            "intensity_range": list(self.intensity_range) if self.intensity_range else None,
        }

    @classmethod
    def from_bundle(cls, bundle) -> InputSpec:
        """The input of a loaded bundle (:class:`medhdm.models.Bundle`): its own preprocessing and digest."""
        return cls(spatial_size=tuple(bundle.spatial_shape), bundle=str(bundle.path), bundle_sha256=bundle.digest)

    @classmethod
    def for_model(cls, model: nn.Module, spatial_size: tuple[int, ...] | None = None) -> InputSpec:
        """From ``spatial_size`` or from the card of a shipped model (``model.medhdm_card``)."""
        if spatial_size is None:
            card = getattr(model, "medhdm_card", None)
            if card is None:
                raise ValueError("spatial_size: the model has no medhdm card; give the classifier's input size")
            spatial_size = tuple(card["recipe"]["spatial_size"])
        spatial_size = tuple(int(s) for s in spatial_size)
        if len(spatial_size) not in (2, 3) or min(spatial_size) < 1:
            raise ValueError(f"spatial_size: expected 2 or 3 positive sizes, got {spatial_size}")
        return cls(spatial_size=spatial_size)

    def __post_init__(self) -> None:
        if self.layout not in ("dicom", "monai"):
            raise ValueError(f"layout: expected 'dicom' or 'monai', got {self.layout!r}")
        codes = str(self.axcodes).upper()
        if len(codes) != 3 or set(codes) - set("LRAPSI") or sorted("LRAPSI".index(c) // 2 for c in codes) != [0, 1, 2]:
            raise ValueError(
                f"axcodes: expected three letters naming each axis once, from L/R, A/P, S/I "
                f"(e.g. RAS, LPS), got {self.axcodes!r}"
            )
        if self.intensity_range is not None:
            low, high = (float(v) for v in self.intensity_range)
            if not (np.isfinite(low) and np.isfinite(high) and low < high):
                raise ValueError(f"intensity_range: expected two finite values low < high, got {self.intensity_range}")
        lower, upper = (float(v) for v in self.percentiles)
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"percentiles: expected 0 <= lower < upper <= 100, got {self.percentiles}")


@dataclass(frozen=True)
class SliceSelection:
    """Which slices of a series a 2D classifier explains, and how the study-level decision is made.

    Attributes:
        mode: ``"all"``, ``"top"`` (the ``k`` slices with the highest class probability) or
            ``"list"`` (``indices``, 0-based along the series' slice order).
        k: for ``"top"``.
        indices: for ``"list"``.
        reduce: study-level probability of a class from its slice probabilities, ``"max"`` or ``"mean"``.
    """

    mode: str = "all"
    k: int = 0
    indices: tuple[int, ...] = ()
    reduce: str = "max"

    def __post_init__(self) -> None:
        if self.mode not in ("all", "top", "list"):
            raise ValueError(f"slices: expected mode 'all', 'top' or 'list', got {self.mode!r}")
        if self.mode == "top" and self.k < 1:
            raise ValueError(f"slices: top:K needs K >= 1, got {self.k}")
        if self.mode == "list" and (not self.indices or min(self.indices) < 0):
            raise ValueError(f"slices: expected one or more slice indices >= 0, got {list(self.indices)}")
        if self.reduce not in ("max", "mean"):
            raise ValueError(f"slice_reduce: expected 'max' or 'mean', got {self.reduce!r}")

    def record(self) -> dict:
        """Every field, as JSON (:func:`input_record`)."""
        return {"mode": self.mode, "k": self.k, "indices": list(self.indices), "reduce": self.reduce}

    @classmethod
    def parse(cls, text: str, reduce: str = "max") -> SliceSelection:
        """From ``"all"``, ``"top:K"`` or ``"I,J,..."`` (as ``--slices`` takes it)."""
        text = str(text).strip().lower()
        try:
            if text == "all":
                return cls("all", reduce=reduce)
            if text.startswith("top:"):
                return cls("top", k=int(text[4:]), reduce=reduce)
            return cls("list", indices=tuple(sorted({int(v) for v in text.split(",") if v.strip()})), reduce=reduce)
        except ValueError as err:
            if str(err).startswith("slice"):
                raise
            raise ValueError(f"slices: expected 'all', 'top:K' or slice indices like 3,4,5, got {text!r}") from None

    def choose(self, scores: np.ndarray) -> tuple[int, ...]:
        """The chosen slice indices (ascending) given the per-slice class probabilities ``(D,)``."""
        n = len(scores)
        if self.mode == "all":
            return tuple(range(n))
        if self.mode == "top":
            order = np.argsort(-np.asarray(scores), kind="stable")[: min(self.k, n)]
            return tuple(sorted(int(i) for i in order))
        if max(self.indices) >= n:
            raise ValueError(f"slices: index {max(self.indices)} is outside the series' {n} slices (0..{n - 1})")
        return self.indices


def input_record(spec: InputSpec, slices: SliceSelection | str | None = None) -> dict:
    """What decides the classifier's input, for every run configuration whose hash names results
    (the cohort records, the archive's derived UIDs): ``spec`` and the slice selection, every field."""
    if isinstance(slices, str):
        slices = SliceSelection.parse(slices)
    return {**spec.record(), "slices": None if slices is None else slices.record()}


@dataclass
class ExplainedImage:
    """One explained study.

    Attributes:
        saliency: the map on the source grid in MONAI/NIfTI array order
            (``(W, H)`` or ``(W, H, D)`` for DICOM, the file's order for NIfTI), values in [0, 1].
        affine: ``(4, 4)`` RAS affine of the source grid.
        class_idx, score: the explained class and its probability on the preprocessed input.
        dicom: the DICOM source (for export) when asked for with ``keep_dicom``, else ``None``.
        meta: the loaded image's metadata (provenance for DICOM).
        image: the loaded image ``(1, *S)`` on the source grid (MONAI order).
        model_input: the classifier's input ``(1, C, *S')`` (for faithfulness metrics).
        model_saliency: the map on the classifier's grid ``(1, 1, *S')``.
        slice_scores: 2D classifier on a series only: the class probability of every slice
            ``(D,)``, slice ``k`` being index ``k`` of the last (NIfTI/MONAI) axis, which is the
            series' slice order; ``score`` is then the study-level decision over slices.
        explained_slices: the slices explained (ascending); the map is 0 on the others.
            ``model_input`` and ``model_saliency`` then hold these slices ``(k, C, H', W')``.
        slice_reduce: ``"max"`` or ``"mean"``, how ``score`` was made from the slices.
        model_spacing: the classifier input's voxel spacing in mm, in its axis order
            (:func:`classifier_spacing`; per slice ``(H', W')`` with ``slices``).
        spacing: the spacing the explainer read its sizes in mm from (HDM: ``model_spacing``);
            None for a method that works in voxels.
        region: a segmenter's target region on the source grid (same order and shape as
            ``saliency``, uint8 0/1); None for a classifier.
        region_spec: what the region was asked as: ``"predicted"``, ``"component:k"`` or ``"mask"``.
        findings: the explanation's :class:`~medhdm.explain.findings.Finding` list on the source grid
            (highest score first): each region taken back like the map (linear, kept at 0.5), its
            peak, map-weighted centroid (voxels, the source array's order, as ``saliency``) and size
            (mm^2 / mm^3 from the source's spacing) measured there; evidence, share and score as
            explained. :func:`finding_position_mm` gives a centroid in mm.
    """

    saliency: np.ndarray
    affine: np.ndarray
    class_idx: int
    score: float
    dicom: DicomSource | None
    meta: dict
    image: np.ndarray | None = None
    model_input: torch.Tensor | None = None
    model_saliency: torch.Tensor | None = None
    slice_scores: np.ndarray | None = None
    explained_slices: tuple[int, ...] | None = None
    slice_reduce: str | None = None
    model_spacing: tuple[float, ...] | None = None
    spacing: tuple[float, ...] | None = None
    region: np.ndarray | None = None
    region_spec: str | None = None
    findings: list[Finding] = field(default_factory=list)

    def saliency_in_dicom_order(self) -> np.ndarray:
        """The map as ``(D, H, W)`` in the DICOM source's slice order (for :mod:`medhdm.export`)."""
        return monai_to_dicom_volume(self.saliency)

    def region_in_dicom_order(self) -> np.ndarray | None:
        """The target region as ``(D, H, W)`` in the DICOM source's slice order; None for a classifier."""
        return None if self.region is None else monai_to_dicom_volume(self.region)


def load_image(path: str | os.PathLike) -> MetaTensor:
    """``(1, *S)`` MetaTensor with affine and metadata, through :class:`~medhdm.transforms.LoadStudy`."""
    return LoadStudy()(path)


def _intensity(keys, spec: InputSpec):
    if spec.intensity_range is not None:
        a_min, a_max = spec.intensity_range
        return ScaleIntensityRanged(keys, a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=False)
    lower, upper = spec.percentiles
    return ScaleIntensityRangePercentilesd(keys, lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True)


def _check_dimension(spatial_dims: int, spec: InputSpec, what: str | None = None) -> None:
    """``ValueError`` unless an image of ``spatial_dims`` fits the classifier; 2D models on series: slices."""
    if spatial_dims == len(spec.spatial_size):
        return
    what = what or f"image: a {spatial_dims}D image"
    hint = (
        "; explain a series slice by slice with slices= ('all', 'top:K' or 'I,J,...')"
        if spatial_dims == 3 and len(spec.spatial_size) == 2
        else ""
    )
    raise ValueError(f"{what} for a {len(spec.spatial_size)}D classifier of input size {spec.spatial_size}{hint}")


def classifier_transforms(spatial_dims: int, spec: InputSpec, keys: str | list[str] = "image") -> Compose:
    """The invertible preprocessing from a loaded ``(1, *S)`` image to the classifier's input (a bundle's own,
    on key ``"image"`` only)."""
    if spec.bundle is not None:  # its own steps may change the dimension (SqueezeDimd): checked on the result
        from .models.bundle import bundle_preprocessing

        if keys not in ("image", ["image"]):
            raise ValueError(f"keys: a bundle's preprocessing works on 'image', got {keys!r}")
        return bundle_preprocessing(spec.bundle)
    _check_dimension(spatial_dims, spec)
    if spec.layout == "dicom":
        layout = [Transposed(keys, indices=reversed_spatial_indices(spatial_dims))]
    else:
        layout = [Orientationd(keys, axcodes=spec.axcodes[:spatial_dims])]
    return Compose(
        [
            *layout,
            _intensity(keys, spec),
            Resized(keys, spatial_size=spec.spatial_size, mode="bilinear" if spatial_dims == 2 else "trilinear"),
        ]
    )


def _check_fits(image: MetaTensor, spec: InputSpec, name: str) -> None:
    """The loaded image ``(1, *S)`` has the classifier's dimension and, for a 3D classifier, more than one slice."""
    shape = tuple(image.shape[1:])
    _check_dimension(len(shape), spec, f"{name}: a {len(shape)}D image of shape {shape}")
    if len(shape) == 3 and min(shape) == 1 and min(spec.spatial_size) > 1:
        raise ValueError(
            f"{name}: a single-slice volume of shape {shape} for a 3D classifier of input size "
            f"{spec.spatial_size}; give the whole series (or use a 2D classifier on a 2D image)"
        )


def slice_transforms(spec: InputSpec, keys: str | list[str] = "image", intensity: bool = True) -> Compose:
    """The invertible preprocessing of a 3D series ``(1, W, H, D)`` for a 2D classifier: ``(1, D, H', W')``.

    The axes are reversed to DICOM order (slice, row, column), intensities scaled over the
    series as :func:`classifier_transforms` does (left out with ``intensity=False``, for maps),
    and each slice resized to the classifier's ``spatial_size`` (the slice count kept: a
    trilinear resize that keeps one axis is the bilinear resize of every slice).
    """
    if spec.bundle is not None:
        raise ValueError("slices: a bundle's preprocessing is for whole images; slice by slice needs --model")
    if len(spec.spatial_size) != 2:
        raise ValueError(f"slices: need a 2D classifier, got input size {spec.spatial_size}")
    if spec.layout != "dicom":
        raise ValueError("slices: a 2D classifier over a series needs layout 'dicom' (slice, row, column)")
    steps = [Transposed(keys, indices=reversed_spatial_indices(3))]
    if intensity:
        steps.append(_intensity(keys, spec))
    steps.append(Resized(keys, spatial_size=(-1, *spec.spatial_size), mode="trilinear"))
    return Compose(steps)


def map_to_classifier_grid(
    saliency: np.ndarray, image: MetaTensor, spec: InputSpec, by_slice: bool = False
) -> torch.Tensor:
    """A map on ``image``'s source grid (MONAI order, ``image.shape[1:]``) on the classifier's grid.

    The same layout and resize steps as the image's preprocessing (no intensity scaling):
    ``(1, 1, *S')``, or ``(D, 1, H', W')`` with ``by_slice`` (a 2D classifier over a series).
    """
    meta = copy.deepcopy(dict(image.meta))
    item = MetaTensor(torch.as_tensor(np.asarray(saliency, dtype=np.float32))[None], meta=meta)
    if by_slice:
        return slice_transforms(spec, "map", intensity=False)({"map": item})["map"].as_tensor()[0][:, None]
    if spec.bundle is not None:  # its steps less those of monai.transforms.intensity
        steps = classifier_transforms(image.ndim - 1, spec).transforms
        spatial = Compose([t for t in steps if not type(t).__module__.startswith("monai.transforms.intensity")])
        return spatial({"image": item})["image"].as_tensor()[None]
    steps = classifier_transforms(image.ndim - 1, spec, "map").transforms
    spatial = Compose([t for t in steps if isinstance(t, (Transposed, Orientationd, Resized))])
    return spatial({"map": item})["map"].as_tensor()[None]


def classifier_spacing(image: MetaTensor, spec: InputSpec, by_slice: bool = False) -> tuple[float, ...]:
    """The voxel spacing in mm of the classifier's input made from ``image`` ``(1, *S)``, in its axis order.

    The source spacing (the lengths of the affine's columns, MONAI order) brought into the
    layout's axis order, times the source size over the classifier's size on each axis (the resize
    keeps the field of view). With a bundle: read from the affine of the image its preprocessing made, as
    :class:`~medhdm.transforms.Explaind` reads it in a bundle's own run. Otherwise computed here rather than read
    from the transformed image's affine:
    MONAI's ``Transposed`` leaves the affine in the source's axis order, so the ``Resized`` after it
    scales the wrong columns. ``by_slice``: a series for a 2D classifier, the spacing of one slice ``(H', W')``.
    """
    dims = image.ndim - 1
    if spec.bundle is not None:  # MONAI's spatial transforms keep the affine right
        done = classifier_transforms(dims, spec)({"image": image.clone()})["image"]
        affine = np.asarray(done.affine, dtype=np.float64)
        return tuple(float(v) for v in np.linalg.norm(affine[:-1, : done.ndim - 1], axis=0))
    affine = np.asarray(image.affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:-1, :dims], axis=0)
    shape = np.asarray(image.shape[1:], dtype=np.float64)
    if spec.layout == "monai" and not by_slice:
        oriented = classifier_transforms(dims, spec).transforms[0]({"image": image.clone()})["image"]
        spacing = np.linalg.norm(np.asarray(oriented.affine, dtype=np.float64)[:-1, :dims], axis=0)
        shape = np.asarray(oriented.shape[1:], dtype=np.float64)
    else:
        spacing, shape = spacing[::-1], shape[::-1]  # DICOM order (slice, row, column)
    if by_slice:
        spacing, shape = spacing[1:], shape[1:]
    return tuple(float(v) for v in spacing * shape / np.asarray(spec.spatial_size, dtype=np.float64))


def explain_image(
    source: str | os.PathLike | MetaTensor,
    explainer: Explainer,
    spec: InputSpec,
    class_idx: int | None = None,
    keep_dicom: bool = False,
    slices: SliceSelection | str | None = None,
    batch_size: int = 16,
    region=None,
) -> ExplainedImage:
    """Explain one image with ``explainer`` and return the map on the source grid.

    ``source`` is a path, or an image already returned by :func:`load_image` (so that
    explaining one image with several methods reads it once; it is not modified).
    ``keep_dicom`` also returns the DICOM source datasets (for export; a second read of
    the files, so it needs the path). ``slices`` (a :class:`SliceSelection` or its text,
    ``"all"``, ``"top:K"``, ``"I,J,..."``) explains a 3D series with a 2D classifier slice by
    slice (see the module docstring), ``batch_size`` slices at a time. ``region``: a segmenter's target,
    ``"predicted"`` (None), ``"component:k"`` or a mask (a NIfTI path or an array on the source grid).
    """
    regions = region if region is None or isinstance(region, str) else [region]
    return explain_images([source], explainer, spec, [class_idx], keep_dicom, slices, batch_size, regions)[0]


@dataclass
class _Prepared:
    """A loaded image and its classifier input (the transformed dict), before explaining."""

    image: MetaTensor
    path: str | os.PathLike | None
    data: dict
    transforms: Compose
    class_idx: int | None
    spacing: tuple[float, ...]  # of the classifier input, mm
    region: torch.Tensor | None = None  # a mask region on the model's grid (1, *S'), bool


def _load(source: str | os.PathLike | MetaTensor, keep_dicom: bool) -> tuple[MetaTensor, str | os.PathLike | None]:
    """``source`` loaded (unless it already is) and its path (None for a loaded image)."""
    if isinstance(source, MetaTensor):
        if keep_dicom:
            raise ValueError("keep_dicom: needs the image's path, not an image already loaded")
        image, path = source, None
    else:
        image, path = load_image(source), source
    return image, path


def _classifier_input(image: MetaTensor, path, spec: InputSpec, class_idx: int | None) -> _Prepared:
    """The classifier's input of a loaded image, refused if it does not fit or is constant after scaling."""
    name = str(path if path is not None else image.meta.get("filename_or_obj", "image"))
    if spec.bundle is None:
        _check_fits(image, spec, name)
    transforms = classifier_transforms(image.ndim - 1, spec)
    data = transforms({"image": image.clone()})
    scaled = data["image"].as_tensor()
    if scaled.ndim - 1 != len(spec.spatial_size):
        raise ValueError(
            f"{name}: the bundle's preprocessing makes a {scaled.ndim - 1}D image of shape {tuple(scaled.shape[1:])} "
            f"for a {len(spec.spatial_size)}D network"
        )
    if float(scaled.max() - scaled.min()) <= 0:
        raise ValueError(
            f"{name}: the image is constant after intensity scaling "
            f"({'range ' + str(spec.intensity_range) if spec.intensity_range else 'percentiles'}): "
            "nothing to explain; check intensity_range="
        )
    return _Prepared(image, path, data, transforms, class_idx, classifier_spacing(image, spec))


def _region_mask(mask, image: MetaTensor, name: str = "region") -> MetaTensor:
    """A region ``mask`` on ``image``'s source grid (a NIfTI path, or an array ``image.shape[1:]`` or ``(1, *S)`` in
    MONAI order), checked (shape, 0/1 values), as a float ``MetaTensor`` ``(1, *S)`` with the image's metadata."""
    if isinstance(mask, str | os.PathLike):
        name = str(mask)
        mask = load_image(mask)
    values = np.asarray(mask)
    given = values.shape
    if values.shape == tuple(image.shape[1:]):
        values = values[None]
    if values.shape != tuple(image.shape):
        raise ValueError(f"{name}: a region of shape {given} for an image of shape {tuple(image.shape[1:])}")
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"{name}: expected a binary mask (0/1 values)")
    return MetaTensor(torch.from_numpy(values.astype(np.float32)), meta=copy.deepcopy(dict(image.meta)))


def _region_spec(region) -> str:
    """How the SR names a segmenter's target ``region=``: ``"mask"`` (given), else ``"predicted"``/``"component:k"``."""
    return "mask" if region is not None and not isinstance(region, str) else (region or "predicted")


def region_on_model_grid(mask, image: MetaTensor, spec: InputSpec, name: str = "region") -> torch.Tensor:
    """A region ``mask`` on ``image``'s source grid (a NIfTI path, or an array ``image.shape[1:]`` or
    ``(1, *S)`` in MONAI order) on the model's grid ``(1, *S')`` (bool): the image's layout, then a
    nearest-neighbour resize."""
    region = _region_mask(mask, image, name)
    dims = image.ndim - 1
    keys = "region"
    layout = (
        Transposed(keys, indices=reversed_spatial_indices(dims))
        if spec.layout == "dicom"
        else Orientationd(keys, axcodes=spec.axcodes[:dims])
    )
    out = Compose([layout, Resized(keys, spatial_size=spec.spatial_size, mode="nearest")])({keys: region})[keys]
    return out.as_tensor() > 0.5


def _group_region(members: list[int], prepared: list[_Prepared], region):
    """The ``region=`` of one batch: the string as given, or the members' masks ``(B, 1, *S')``."""
    if region is None or isinstance(region, str):
        return region
    return torch.stack([prepared[i].region for i in members])


def explain_images(
    sources: Sequence[str | os.PathLike | MetaTensor],
    explainer: Explainer,
    spec: InputSpec,
    class_idx: Sequence[int | None] | None = None,
    keep_dicom: bool = False,
    slices: SliceSelection | str | None = None,
    batch_size: int = 16,
    region: str | Sequence | None = None,
) -> list[ExplainedImage]:
    """:func:`explain_image` of several images, those of one classifier input shape explained in one batch.

    The images are loaded and preprocessed one by one; their classifier inputs ``(C, *S')``
    that share a shape (and an explicit or predicted class, and a spacing: :func:`classifier_spacing`,
    passed to the explainer) go through ``explainer`` as one batch ``(B, C, *S')``, so a
    method's passes serve the whole batch; each map is then
    inverted onto its own source grid. A batch equals its images one by one (the explainers'
    contract). With ``slices`` each series is explained alone (its slices are the batch).
    ``class_idx``: one per source (None: predicted). An error in any image raises.
    ``region`` (segmenters): ``"predicted"`` (None), ``"component:k"``, or one mask per source on
    its own grid (:func:`region_on_model_grid`).
    """
    classes = list(class_idx) if class_idx is not None else [None] * len(sources)
    if len(classes) != len(sources):
        raise ValueError(f"class_idx: expected one per image ({len(sources)}), got {len(classes)}")
    if region is not None and not isinstance(region, str) and len(region) != len(sources):
        raise ValueError(f"region: expected one mask per image ({len(sources)}), got {len(region)}")
    if slices is not None:
        if isinstance(slices, str):
            slices = SliceSelection.parse(slices)
        results = []
        for i, (source, cls) in enumerate(zip(sources, classes)):
            image, path = _load(source, keep_dicom)
            name = str(path if path is not None else image.meta.get("filename_or_obj", "image"))
            if image.ndim != 4 or len(spec.spatial_size) != 2:
                raise ValueError(
                    f"{name}: slices: for a 2D classifier on a 3D series; got a {image.ndim - 1}D image and "
                    f"a classifier of input size {spec.spatial_size}"
                )
            target = region if region is None or isinstance(region, str) else region[i]
            result = _explain_by_slice(image, explainer, spec, cls, slices, batch_size, target)
            result.dicom = read_dicom(path) if keep_dicom and is_dicom_path(path) else None
            results.append(result)
        return results
    prepared = [_classifier_input(*_load(s, keep_dicom), spec, c) for s, c in zip(sources, classes)]
    if region is not None and not isinstance(region, str):
        for item, mask in zip(prepared, region):
            item.region = region_on_model_grid(mask, item.image, spec)
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(prepared):
        key = (tuple(item.data["image"].shape), item.class_idx is None, tuple(round(v, 9) for v in item.spacing))
        groups.setdefault(key, []).append(i)
    explained: dict[int, tuple] = {}
    device = model_device(explainer.model)
    for members in groups.values():
        x = torch.stack([prepared[i].data["image"].as_tensor().detach() for i in members])
        x = x.to(device=device, dtype=torch.float32)
        targets = None if prepared[members[0]].class_idx is None else [prepared[i].class_idx for i in members]
        result = explain_at(
            explainer, x, targets, [prepared[i].spacing for i in members], _group_region(members, prepared, region)
        )
        for j, i in enumerate(members):
            explained[i] = (result, j, x[j : j + 1])
    return [_finish(prepared[i], *explained[i], keep_dicom, _region_spec(region)) for i in range(len(prepared))]


def _to_source(item: _Prepared, values: torch.Tensor, nearest: bool) -> np.ndarray:
    """``values`` ``(C, *S')`` on the model's grid inverted onto ``item``'s source grid ``(C, *S)``."""
    data = dict(item.data)
    data["saliency"] = MetaTensor(values.to(data["image"].device), meta=copy.deepcopy(dict(data["image"].meta)))
    inverted = Invertd(keys="saliency", transform=item.transforms, orig_keys="image", nearest_interp=nearest)(data)
    source = inverted["saliency"].numpy()
    shape = tuple(item.image.shape[1:])
    if source.shape[1:] != shape and tuple(s for s in source.shape[1:] if s != 1) == tuple(s for s in shape if s != 1):
        source = source.reshape((source.shape[0], *shape))  # a singleton axis dropped by a step (SqueezeDimd)
    return source


def _finish(
    item: _Prepared, result, j: int, model_input: torch.Tensor, keep_dicom: bool, region_spec: str = "predicted"
) -> ExplainedImage:
    """The ``j``-th map of ``result`` inverted onto ``item``'s source grid, as an :class:`ExplainedImage`."""
    image = item.image
    saliency = result.saliency[j].detach()
    findings = result.findings[j] if result.findings else []
    source_map = np.clip(_to_source(item, saliency, nearest=False)[0], 0.0, 1.0)
    source_regions = None
    if findings:
        regions = torch.from_numpy(np.stack([f.region for f in findings]).astype(np.float32))
        source_regions = _to_source(item, regions, nearest=False)
    if source_map.shape != tuple(image.shape[1:]):
        raise RuntimeError(f"inversion gave shape {source_map.shape}, expected the source's {tuple(image.shape[1:])}")
    path = item.path
    return ExplainedImage(
        saliency=source_map,
        affine=np.asarray(image.affine, dtype=np.float64),
        class_idx=int(result.class_idx[j]),
        score=float(result.score[j]),
        dicom=read_dicom(path) if keep_dicom and is_dicom_path(path) else None,
        meta=dict(image.meta),
        image=image[0].numpy(),
        model_input=model_input,
        model_saliency=saliency[None],
        model_spacing=item.spacing,
        spacing=None if result.spacing is None else tuple(float(v) for v in result.spacing[j]),
        region=None if result.region is None else _source_region(item, result.region[j]),
        region_spec=None if result.region is None else region_spec,
        findings=_source_findings(findings, source_regions, source_map, image),
    )


def _source_region(item: _Prepared, region: torch.Tensor) -> np.ndarray:
    """A target region ``(1, *S')`` on the model's grid, on ``item``'s source grid (nearest neighbour), uint8."""
    return (_to_source(item, region.detach().float(), nearest=True)[0] > 0.5).astype(np.uint8)


def _source_findings(findings: list[Finding], regions, source_map: np.ndarray, image: MetaTensor) -> list[Finding]:
    """``findings`` on the source grid, from their regions taken back there ``(K, *S)`` (linear, kept at 0.5;
    a region too small to reach 0.5 keeps the voxels of at least half its largest value)."""
    spacing = tuple(float(v) for v in np.linalg.norm(np.asarray(image.affine)[:-1, :-1], axis=0))[: image.ndim - 1]
    out = []
    for finding, values in zip(findings, regions if regions is not None else []):
        top = float(values.max())
        if top <= 0:
            continue
        region = values >= min(0.5, 0.5 * top)
        evidence = (finding.drop, finding.alone, finding.rest)
        moved = finding_from_region(region, source_map, spacing, finding.stage, evidence)
        moved.share, moved.score = finding.share, finding.score
        out.append(moved)
    return out


def finding_position_mm(finding: Finding, affine: np.ndarray) -> tuple[float, ...]:
    """A finding's centroid in world mm through ``affine`` ``(4, 4)`` (an :class:`ExplainedImage`'s: RAS)."""
    affine = np.asarray(affine, dtype=np.float64)
    centroid = np.zeros(affine.shape[0] - 1)
    centroid[: len(finding.centroid)] = finding.centroid  # a 2D image's third axis at 0
    point = affine[:-1, :-1] @ centroid + affine[:-1, -1]
    return tuple(float(v) for v in point)


def _explain_by_slice(
    image: MetaTensor,
    explainer: Explainer,
    spec: InputSpec,
    class_idx: int | None,
    selection: SliceSelection,
    batch_size: int,
    region=None,
) -> ExplainedImage:
    """A 3D series ``(1, W, H, D)`` explained by a 2D classifier or segmenter slice by slice (see
    :func:`explain_image`); ``region``: a segmenter's target (:func:`_segmenter_slices`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected at least 1, got {batch_size}")
    transforms = slice_transforms(spec)
    data = transforms({"image": image.clone()})
    x = data["image"].as_tensor()[0][:, None].to(device=model_device(explainer.model), dtype=torch.float32)
    logits, segmenter = _slice_logits(explainer.model, x, batch_size)
    regions = None
    if segmenter:
        given = None if region is None or isinstance(region, str) else _region_on_slices(region, image, spec)
        probs, cls, study_score, regions = _segmenter_slices(logits, class_idx, region, given, selection.reduce)
        chosen = _chosen_with_region(selection, probs, regions, image)
    else:
        if region is not None:
            raise ValueError("region: for a segmentation model; this model is a classifier (output (B, K))")
        probs, cls, study_score = _class_decision(logits, class_idx, selection.reduce)
        chosen = selection.choose(probs)
    index = torch.tensor(chosen, dtype=torch.long, device=x.device)
    spacing = classifier_spacing(image, spec, by_slice=True)
    results = [
        explain_at(explainer, x[part], cls, spacing, None if regions is None else regions[part])
        for part in (index[lo : lo + batch_size] for lo in range(0, len(chosen), batch_size))
    ]
    maps = torch.cat([r.saliency.detach() for r in results])  # (k, 1, H', W')
    saliency = np.clip(_slices_to_source(data, transforms, index, maps, image, nearest=False), 0.0, 1.0)
    source_region = None
    if regions is not None:
        source_region = _slices_to_source(data, transforms, index, regions[index].float(), image, True) > 0.5
    return ExplainedImage(
        saliency=saliency,
        affine=np.asarray(image.affine, dtype=np.float64),
        class_idx=cls,
        score=study_score,
        dicom=None,
        meta=dict(image.meta),
        image=image[0].numpy(),
        model_input=x[index],
        model_saliency=maps,
        slice_scores=probs.astype(np.float64),
        explained_slices=chosen,
        slice_reduce=selection.reduce,
        model_spacing=spacing,
        spacing=None if results[0].spacing is None else spacing,
        region=None if source_region is None else source_region.astype(np.uint8),
        region_spec=None if regions is None else _region_spec(region),
    )


def _slices_to_source(data: dict, transforms: Compose, index, values: torch.Tensor, image: MetaTensor, nearest: bool):
    """Per-slice values ``(k, 1, H', W')`` of the slices ``index`` (0 on the others) on ``image``'s source grid."""
    volume = torch.zeros(data["image"].shape[1:], dtype=torch.float32)
    volume[index.cpu()] = values[:, 0].detach().float().cpu()
    data = dict(data)
    data["saliency"] = MetaTensor(volume[None], meta=copy.deepcopy(dict(data["image"].meta)))
    inverted = Invertd(keys="saliency", transform=transforms, orig_keys="image", nearest_interp=nearest)(data)
    out = inverted["saliency"].numpy()[0]
    if out.shape != tuple(image.shape[1:]):
        raise RuntimeError(f"inversion gave shape {out.shape}, expected the source's {tuple(image.shape[1:])}")
    return out


def _slice_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, bool]:
    """The model's output on the slices ``x`` ``(D, C, H, W)``, ``batch_size`` at a time: a classifier's logits
    ``(D, K >= 2)`` or a segmenter's logit maps ``(D, K >= 2, H, W)`` (one sigmoid logit expanded to two
    classes, :class:`~medhdm.explain.scoring.ClassScorer`), and whether it is a segmenter."""
    with frozen_eval(model), torch.no_grad():
        scorer = ClassScorer(model)
        logits = torch.cat([scorer.logits(x[lo : lo + batch_size]) for lo in range(0, x.shape[0], batch_size)])
    return logits, scorer.segmenter


def _region_on_slices(mask, image: MetaTensor, spec: InputSpec) -> torch.Tensor:
    """A region ``mask`` on a series' source grid (a NIfTI path or an array, as :func:`region_on_model_grid`) on
    the slices' grid ``(D, 1, H', W')`` (bool): the series' layout, then each slice resized (nearest)."""
    region = _region_mask(mask, image)
    steps = Compose(
        [
            Transposed("region", indices=reversed_spatial_indices(3)),
            Resized("region", spatial_size=(-1, *spec.spatial_size), mode="nearest"),
        ]
    )
    return steps({"region": region})["region"].as_tensor()[0][:, None] > 0.5


def _segmenter_slices(
    maps: torch.Tensor, class_idx: int | None, region, given: torch.Tensor | None, reduce: str
) -> tuple[np.ndarray, int, float, torch.Tensor]:
    """A segmenter's decision over a series' slices from its logit maps ``(D, K >= 2, H, W)``.

    The class: ``class_idx``, or the foreground class with the most predicted voxels over the series
    (class 1 where none is predicted). Each slice's region: its part of the mask ``given`` ``(D, 1, H, W)``,
    of the model's predicted mask for the class (``region`` None or ``"predicted"``), or of the series'
    ``k``-th largest connected component of that mask (``"component:k"``, connected across slices). A slice's
    score is the class probability of its region's mean logits (NaN where its region is empty); the study's,
    their maximum or mean (``reduce``). Returns the scores ``(D,)``, the class, the study's score and the
    regions ``(D, 1, H, W)``.
    """
    k = int(maps.shape[1])
    labels = maps.argmax(dim=1, keepdim=True)
    if class_idx is None:
        counts = torch.bincount(labels.flatten(), minlength=k)[1:]
        cls = int(counts.argmax()) + 1 if bool((counts > 0).any()) else 1
    elif not 0 <= int(class_idx) < k:
        raise ValueError(f"class_idx: expected 0..{k - 1}, got {class_idx}")
    else:
        cls = int(class_idx)
    if given is not None:
        regions = given.to(maps.device)
    elif region is None or region == "predicted":
        regions = labels == cls
    else:
        series = (labels == cls)[:, 0][None, None]  # (1, 1, D, H, W): components across slices
        regions = component_mask(series, component_index(region))[0, 0][:, None]
    voxels = regions.flatten(1).sum(1)
    mean_logits = (maps * regions).flatten(2).sum(2) / voxels.clamp_min(1)[:, None]
    scores = torch.softmax(mean_logits, dim=1)[:, cls].cpu().numpy().astype(np.float64)
    scores[(voxels == 0).cpu().numpy()] = np.nan
    if np.isnan(scores).all():
        what = "the mask given" if given is not None else f"region {region or 'predicted'!r}"
        raise ValueError(
            f"region: {what} for class {cls} is empty in every slice; "
            "pass class_idx= for a class the model predicts, or a mask as region="
        )
    study = np.nanmax(scores) if reduce == "max" else np.nanmean(scores)
    return scores, cls, float(study), regions


def _chosen_with_region(selection: SliceSelection, scores: np.ndarray, regions: torch.Tensor, image) -> tuple:
    """A segmenter's slices to explain: ``selection`` among the slices whose region holds a voxel (NaN scores
    rank last); listed slices with an empty region are refused."""
    held = ~np.isnan(scores)
    chosen = selection.choose(np.where(held, scores, -np.inf))
    empty = [i for i in chosen if not held[i]]
    if selection.mode == "list" and empty:
        name = image.meta.get("filename_or_obj", "image")
        raise ValueError(f"slices: the target region is empty in slice(s) {empty} of {name}; nothing to explain there")
    return tuple(i for i in chosen if held[i])


def _class_decision(logits: torch.Tensor, class_idx: int | None, reduce: str) -> tuple[np.ndarray, int, float]:
    """A classifier's slice probabilities ``(D,)`` of the study's class, the class and its study-level probability."""
    probs = torch.softmax(logits, dim=1).cpu().numpy().astype(np.float64)
    study = probs.max(axis=0) if reduce == "max" else probs.mean(axis=0)
    if class_idx is None:
        cls = int(study.argmax())
    elif not 0 <= int(class_idx) < probs.shape[1]:
        raise ValueError(f"class_idx: expected 0..{probs.shape[1] - 1}, got {class_idx}")
    else:
        cls = int(class_idx)
    return probs[:, cls], cls, float(study[cls])


def _study_decision(
    model: nn.Module, x: torch.Tensor, class_idx: int | None, reduce: str, batch_size: int = 16
) -> tuple[np.ndarray, int, float]:
    """A classifier's slice probabilities ``(D,)`` of the study's class for ``x`` ``(D, C, H, W)``, the class and
    its study-level probability."""
    logits, segmenter = _slice_logits(model, x, batch_size)
    if segmenter:
        raise ValueError(
            "model: a segmentation model has no decision per image without a target region; "
            "explain it (region=) rather than scoring maps made elsewhere"
        )
    return _class_decision(logits, class_idx, reduce)


def classify_image(
    image: MetaTensor,
    model: nn.Module,
    spec: InputSpec,
    class_idx: int | None = None,
    slices: SliceSelection | str | None = None,
) -> tuple[torch.Tensor, int, float, tuple[int, ...] | None]:
    """The classifier's view of a loaded image, without explaining it (for maps made elsewhere).

    Returns the classifier's input (``(1, C, *S')``; with ``slices``, the chosen slices
    ``(k, 1, H', W')``), the class (``class_idx``, or the predicted / study-level one), its
    probability (study-level with ``slices``) and the chosen slices (``None`` without ``slices``).
    """
    device = model_device(model)
    if slices is None:
        data = classifier_transforms(image.ndim - 1, spec)({"image": image.clone()})
        x = data["image"].as_tensor()[None].to(device=device, dtype=torch.float32)
        _, cls, score = _study_decision(model, x, class_idx, "max")
        return x, cls, score, None
    if isinstance(slices, str):
        slices = SliceSelection.parse(slices)
    data = slice_transforms(spec)({"image": image.clone()})
    x = data["image"].as_tensor()[0][:, None].to(device=device, dtype=torch.float32)
    probs, cls, score = _study_decision(model, x, class_idx, slices.reduce)
    chosen = slices.choose(probs)
    return x[list(chosen)], cls, score, chosen
