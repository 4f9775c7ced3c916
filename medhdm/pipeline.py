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
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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

from .explain.base import Explainer
from .io.axes import monai_to_dicom_volume, reversed_spatial_indices
from .io.dicom import DicomSource, read_dicom
from .io.reader import is_dicom_path
from .transforms import Explaind, LoadStudy

__all__ = ["ExplainedImage", "InputSpec", "classifier_transforms", "explain_image", "load_image"]


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
    """

    spatial_size: tuple[int, ...]
    layout: str = "dicom"
    axcodes: str = "RAS"
    percentiles: tuple[float, float] = (1.0, 99.5)
    intensity_range: tuple[float, float] | None = None

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
            raise ValueError(f"axcodes: expected three letters naming each axis once, from L/R, A/P, S/I "
                             f"(e.g. RAS, LPS), got {self.axcodes!r}")
        if self.intensity_range is not None:
            low, high = (float(v) for v in self.intensity_range)
            if not (np.isfinite(low) and np.isfinite(high) and low < high):
                raise ValueError(f"intensity_range: expected two finite values low < high, got {self.intensity_range}")
        lower, upper = (float(v) for v in self.percentiles)
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"percentiles: expected 0 <= lower < upper <= 100, got {self.percentiles}")


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

    def saliency_in_dicom_order(self) -> np.ndarray:
        """The map as ``(D, H, W)`` in the DICOM source's slice order (for :mod:`medhdm.export`)."""
        return monai_to_dicom_volume(self.saliency)


def load_image(path: str | os.PathLike) -> MetaTensor:
    """``(1, *S)`` MetaTensor with affine and metadata, through :class:`~medhdm.transforms.LoadStudy`."""
    return LoadStudy()(path)


def classifier_transforms(spatial_dims: int, spec: InputSpec, keys: str | list[str] = "image") -> Compose:
    """The invertible preprocessing from a loaded ``(1, *S)`` image to the classifier's input."""
    if spatial_dims != len(spec.spatial_size):
        raise ValueError(f"image: a {spatial_dims}D image for a classifier of input size {spec.spatial_size}")
    if spec.layout == "dicom":
        layout = [Transposed(keys, indices=reversed_spatial_indices(spatial_dims))]
    else:
        layout = [Orientationd(keys, axcodes=spec.axcodes[:spatial_dims])]
    if spec.intensity_range is not None:
        a_min, a_max = spec.intensity_range
        intensity = ScaleIntensityRanged(keys, a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=False)
    else:
        lower, upper = spec.percentiles
        intensity = ScaleIntensityRangePercentilesd(keys, lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True)
    return Compose(
        [
            *layout,
            intensity,
            Resized(keys, spatial_size=spec.spatial_size, mode="bilinear" if spatial_dims == 2 else "trilinear"),
        ]
    )


def _check_fits(image: MetaTensor, spec: InputSpec, name: str) -> None:
    """The loaded image ``(1, *S)`` has the classifier's dimension and, for a 3D classifier, more than one slice."""
    shape = tuple(image.shape[1:])
    if len(shape) != len(spec.spatial_size):
        raise ValueError(f"{name}: a {len(shape)}D image of shape {shape} for a {len(spec.spatial_size)}D classifier "
                         f"of input size {spec.spatial_size}")
    if len(shape) == 3 and min(shape) == 1 and min(spec.spatial_size) > 1:
        raise ValueError(f"{name}: a single-slice volume of shape {shape} for a 3D classifier of input size "
                         f"{spec.spatial_size}; give the whole series (or use a 2D classifier on a 2D image)")


def explain_image(
    source: str | os.PathLike | MetaTensor,
    explainer: Explainer,
    spec: InputSpec,
    class_idx: int | None = None,
    keep_dicom: bool = False,
) -> ExplainedImage:
    """Explain one image with ``explainer`` and return the map on the source grid.

    ``source`` is a path, or an image already returned by :func:`load_image` (so that
    explaining one image with several methods reads it once; it is not modified).
    ``keep_dicom`` also returns the DICOM source datasets (for export; a second read of
    the files, so it needs the path).
    """
    if isinstance(source, MetaTensor):
        if keep_dicom:
            raise ValueError("keep_dicom: needs the image's path, not an image already loaded")
        image, path = source, None
    else:
        image, path = load_image(source), source
    name = str(path if path is not None else image.meta.get("filename_or_obj", "image"))
    _check_fits(image, spec, name)
    transforms = classifier_transforms(image.ndim - 1, spec)
    data = transforms({"image": image.clone()})
    scaled = data["image"].as_tensor()
    if float(scaled.max() - scaled.min()) <= 0:
        raise ValueError(f"{name}: the image is constant after intensity scaling "
                         f"({'range ' + str(spec.intensity_range) if spec.intensity_range else 'percentiles'}): "
                         "nothing to explain; check --intensity-range")
    data = Explaind("image", explainer, output_key="saliency", class_idx=class_idx, keep_explanation=True)(data)
    result = data["saliency_explanation"]
    inverted = Invertd(keys="saliency", transform=transforms, orig_keys="image", nearest_interp=False)(data)
    saliency = np.clip(inverted["saliency"].numpy()[0], 0.0, 1.0)
    if saliency.shape != tuple(image.shape[1:]):
        raise RuntimeError(f"inversion gave shape {saliency.shape}, expected the source's {tuple(image.shape[1:])}")
    dicom = read_dicom(path) if keep_dicom and is_dicom_path(path) else None
    return ExplainedImage(
        saliency=saliency,
        affine=np.asarray(image.affine, dtype=np.float64),
        class_idx=int(result.class_idx[0]),
        score=float(result.score[0]),
        dicom=dicom,
        meta=dict(image.meta),
        image=image[0].numpy(),
        model_input=data["image"].as_tensor()[None].to(device=result.saliency.device, dtype=torch.float32),
        model_saliency=result.saliency.detach(),
    )
