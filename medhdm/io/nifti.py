"""NIfTI images with the scanner affine set as both qform and sform (what viewers read), written atomically.

Arrays are in MONAI/NIfTI order (:mod:`medhdm.io.axes`): ``(W, H, D)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .atomic import atomic_write

__all__ = ["nifti_image", "nifti_writer", "write_nifti"]


def nifti_image(array: np.ndarray, affine: np.ndarray):
    """A ``nibabel.Nifti1Image`` of ``array`` (kept in its dtype) whose qform and sform are ``affine`` (code 1, mm)."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return image


def nifti_writer(array: np.ndarray, affine: np.ndarray) -> Callable[[str | os.PathLike], None]:
    """A function that saves :func:`nifti_image` of ``array`` to the path it is given (for staged writes)."""
    import nibabel as nib

    image = nifti_image(np.ascontiguousarray(array), affine)
    return lambda path: nib.save(image, path)


def write_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> None:
    """Write :func:`nifti_image` of ``array`` to ``path`` atomically (all of it or nothing)."""
    atomic_write(path, nifti_writer(array, affine))
