"""NIfTI images with the scanner affine set as both qform and sform (what viewers read)."""

from __future__ import annotations

import numpy as np

__all__ = ["nifti_image"]


def nifti_image(array: np.ndarray, affine: np.ndarray):
    """A ``nibabel.Nifti1Image`` of ``array`` (kept in its dtype) whose qform and sform are ``affine`` (code 1, mm)."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return image
