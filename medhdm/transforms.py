"""MONAI transforms: load a study through medhdm's checks, and explain an image inside a ``Compose`` or an evaluator.

**Loading** (:class:`LoadStudy`, :class:`LoadStudyd`): a DICOM file, a DICOM series folder or
a NIfTI file as a channel-first ``MetaTensor`` ``(1, *S)`` with its affine and provenance.
medhdm's checks decide: a series that medhdm's reader refuses (a missing or duplicate
slice, two series, mixed orientations, a colour or palette image, a SEG given as the
image, ...) is an error naming the file. ``LoadImage(reader=DicomSeriesReader())`` would
instead fall back to MONAI's other readers when medhdm's refuses, and load a wrong volume.

**Explaining** (:class:`Explaind`)::

    from monai.transforms import Compose, Invertd, SaveImaged
    from medhdm import HDM
    from medhdm.transforms import Explaind

    post = Compose([
        Explaind(keys="image", explainer=HDM(net), output_key="saliency"),
        Invertd(keys="saliency", transform=preprocessing, orig_keys="image", nearest_interp=False),
        SaveImaged(keys="saliency", output_dir="maps", output_postfix="saliency", resample=False),
    ])
    evaluator = SupervisedEvaluator(..., postprocessing=post)   # one map per case

The input is one channel-first image ``(C, *S)`` (a decollated batch item, as MONAI's
post-transforms see it). The map ``(1, *S)`` is stored under ``output_key`` as a
``MetaTensor`` that carries the image's metadata (affine, file name) but not its
transform history, so ``Invertd(orig_keys=<image key>)`` takes it back to the source
grid; the explained class and its probability are stored under
``<output_key>_class`` and ``<output_key>_score`` (and, with ``keep_explanation``, the
whole :class:`~medhdm.explain.base.Explanation` under ``<output_key>_explanation``).
:func:`medhdm.pipeline.explain_image` runs the same transform between MONAI's loading,
preprocessing and ``Invertd``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.image_reader import NibabelReader
from monai.transforms import EnsureChannelFirst, LoadImage, MapTransform, Transform

from .explain.base import Explainer
from .explain.checks import model_device
from .explain.units import input_spacing
from .io.reader import DicomSeriesReader, is_dicom_path

__all__ = ["Explaind", "LoadStudy", "LoadStudyd"]


def _check_nifti_header(path: Path) -> None:
    """A NIfTI file nibabel can open, with a finite, invertible affine (no silently repaired geometry)."""
    import nibabel as nib

    try:
        header_image = nib.load(path)  # lazy: the header only
    except Exception as err:  # noqa: BLE001 (nibabel's reasons are many: report them with the file)
        raise ValueError(f"{path}: unreadable NIfTI file ({type(err).__name__}: {err})") from None
    affine = np.asarray(header_image.affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise ValueError(f"{path}: the NIfTI affine holds NaN or infinite values")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError(f"{path}: the NIfTI affine is singular (no voxel geometry); fix the header")
    if len(header_image.shape) > 3 and int(np.prod(header_image.shape[3:])) > 1:
        raise ValueError(
            f"{path}: a NIfTI of shape {header_image.shape} (several volumes or channels); give one grayscale volume"
        )


class LoadStudy(Transform):
    """Load a DICOM file, a DICOM series folder or a NIfTI file as ``(1, *S)`` ``MetaTensor``.

    Through ``monai.transforms.LoadImage`` with its reader chosen at call time (medhdm's
    :class:`~medhdm.io.reader.DicomSeriesReader` for DICOM, MONAI's NiBabel reader for NIfTI),
    so no other reader is ever tried. Raises ``ValueError`` naming the file for anything
    that would give a wrong map: an image medhdm's reader refuses, an unreadable or 4D
    NIfTI, a NIfTI with a singular or non-finite affine, NaN or infinite voxels.
    """

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if is_dicom_path(path):
            reader, kind = DicomSeriesReader(), "DICOM"
        elif path.name.lower().endswith((".nii", ".nii.gz")):
            _check_nifti_header(path)
            reader, kind = NibabelReader(), "NIfTI"
        else:
            raise ValueError(f"{path}: expected a DICOM file, a DICOM series folder or a NIfTI file")
        try:
            image = EnsureChannelFirst()(LoadImage(image_only=True)(path, reader=reader))
        except (ValueError, TypeError, FileNotFoundError):
            raise
        except Exception as err:  # noqa: BLE001 (a truncated file fails deep in a decoder)
            raise ValueError(f"{path}: unreadable {kind} file ({type(err).__name__}: {err})") from None
        if image.shape[0] != 1:
            raise ValueError(f"{path}: expected one channel, got {image.shape[0]} (a 4D or colour image)")
        if not bool(torch.isfinite(image.as_tensor()).all()):
            raise ValueError(f"{path}: the image holds NaN or infinite voxel values")
        return image


class LoadStudyd(MapTransform):
    """Dictionary version of :class:`LoadStudy`: ``data[key]`` is a path, replaced by the loaded image."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadStudy()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


class Explaind(MapTransform):
    """Explain ``data[key]`` with ``explainer`` and store the map under ``output_key``.

    Args:
        keys: the image key(s).
        explainer: any medhdm explainer (``HDM(net)``, ``GradCAM(net)``, ...).
        output_key: where the map goes; one per key for several keys
            (default ``"<key>_saliency"``).
        class_idx: the class to explain (``None``: the predicted class).
        class_idx_key: read the class per item from this key instead (an int or a
            one-element tensor), e.g. the label.
        keep_explanation: also store the explainer's full record (on the classifier's grid)
            under ``<output_key>_explanation``.
        spacing_key: read the image's voxel spacing in mm (one value per spatial axis, in the
            array's axis order) from this key. Without it the spacing is a ``MetaTensor`` image's
            (its affine, see :func:`medhdm.explain.units.input_spacing`; after a ``Transposed`` the
            affine is in the old axis order, so give the key then). The spacing used is stored under
            ``<output_key>_spacing`` (None when the method works in voxels).
        allow_missing_keys: skip keys that are absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        explainer: Explainer,
        output_key: str | Sequence[str] | None = None,
        class_idx: int | None = None,
        class_idx_key: str | None = None,
        keep_explanation: bool = False,
        spacing_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not isinstance(explainer, Explainer):
            raise TypeError(f"explainer: expected a medhdm Explainer, got {type(explainer).__name__}")
        if output_key is None:
            output_keys = [f"{k}_saliency" for k in self.keys]
        elif isinstance(output_key, str):
            output_keys = [output_key]
        else:
            output_keys = list(output_key)
        if len(output_keys) != len(self.keys):
            raise ValueError(f"output_key: expected {len(self.keys)} names (one per key), got {len(output_keys)}")
        self.explainer = explainer
        self.output_keys = output_keys
        self.class_idx = class_idx
        self.class_idx_key = class_idx_key
        self.keep_explanation = bool(keep_explanation)
        self.spacing_key = spacing_key

    def _spacing(self, data: Mapping[Hashable, object], image: torch.Tensor):
        """The image's spacing: ``data[spacing_key]``, else a ``MetaTensor``'s (its affine), else None."""
        if self.spacing_key is None:
            return input_spacing(image, spatial_dims=image.ndim - 1) if isinstance(image, MetaTensor) else None
        if self.spacing_key not in data:
            raise KeyError(f"spacing_key: {self.spacing_key!r} is not in the data (keys: {list(data)})")
        return data[self.spacing_key]

    def _target(self, data: Mapping[Hashable, object]) -> int | None:
        if self.class_idx_key is None:
            return self.class_idx
        if self.class_idx_key not in data:
            raise KeyError(f"class_idx_key: {self.class_idx_key!r} is not in the data (keys: {list(data)})")
        value = torch.as_tensor(data[self.class_idx_key])
        if value.numel() != 1:
            raise ValueError(
                f"class_idx_key: expected one class index in {self.class_idx_key!r}, "
                f"got shape {tuple(value.shape)} (one-hot labels need argmax first)"
            )
        return int(value.reshape(()).item())

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key, out_key in zip(self.key_iterator(d), self.output_keys):
            image = d[key]
            if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
                raise ValueError(
                    f"{key}: expected a channel-first image tensor (C, H, W) or (C, D, H, W), "
                    f"got {type(image).__name__} of shape {tuple(getattr(image, 'shape', ()))}"
                )
            spacing = self._spacing(d, image)
            x = torch.as_tensor(image).detach()[None].to(device=model_device(self.explainer.model), dtype=torch.float32)
            if isinstance(x, MetaTensor):
                x = x.as_tensor()  # the spacing is read above, from the image's own affine
            result = self.explainer.explain(x, self._target(d), spacing=spacing)  # every method's findings read it
            saliency = result.saliency[0].detach().to(image.device)
            if isinstance(image, MetaTensor):
                meta = copy.deepcopy(dict(image.meta))  # holds the affine
                saliency = MetaTensor(saliency, meta=meta)
            d[out_key] = saliency
            d[f"{out_key}_class"] = int(result.class_idx[0])
            d[f"{out_key}_score"] = float(result.score[0])
            d[f"{out_key}_spacing"] = None if result.spacing is None else tuple(float(v) for v in result.spacing[0])
            if self.keep_explanation:
                d[f"{out_key}_explanation"] = result
        return d
