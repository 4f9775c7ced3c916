"""The two array orders medhdm meets, and the one way to go between them.

- **DICOM order**: ``(D, H, W)`` = (slice, row, column), the order of DICOM pixel data,
  of :class:`~medhdm.io.dicom.DicomSource` and of pydicom's and SimpleITK's arrays;
  ``(H, W)`` for one image. The shipped classifiers take their input in this order.
- **MONAI order**: ``(W, H, D)`` = (column, row, slice), the order of NIfTI data and of
  arrays loaded by ``monai.transforms.LoadImage`` (``(W, H)`` for one image).

The two differ by reversing the spatial axes, an operation that is its own inverse, so
:func:`dicom_to_monai` and :func:`monai_to_dicom` are the same function under names
that say which way the data goes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dicom_to_monai", "monai_to_dicom", "monai_to_dicom_volume", "reversed_spatial_indices"]


def _reverse(array: np.ndarray) -> np.ndarray:
    return np.transpose(array, tuple(range(array.ndim - 1, -1, -1)))


def dicom_to_monai(array: np.ndarray) -> np.ndarray:
    """``(D, H, W) -> (W, H, D)`` or ``(H, W) -> (W, H)``: a view, axes reversed."""
    return _reverse(array)


def monai_to_dicom(array: np.ndarray) -> np.ndarray:
    """``(W, H, D) -> (D, H, W)`` or ``(W, H) -> (H, W)``: a view, axes reversed."""
    return _reverse(array)


def monai_to_dicom_volume(array: np.ndarray) -> np.ndarray:
    """A map in MONAI order, ``(W, H)`` or ``(W, H, D)``, as a volume ``(D, H, W)`` in DICOM order.

    One image gives ``D = 1``.
    """
    return monai_to_dicom(array if array.ndim == 3 else array[..., None])


def reversed_spatial_indices(spatial_dims: int) -> tuple[int, ...]:
    """Axis permutation of a channel-first array ``(C, *S)`` that reverses ``S``: ``(0, 3, 2, 1)`` in 3D.

    For ``monai.transforms.Transpose(d)``, which takes a loaded MONAI-order image to DICOM order (and back).
    """
    return (0, *range(spatial_dims, 0, -1))
