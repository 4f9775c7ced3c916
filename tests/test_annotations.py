"""One lesion as a NIfTI label map, a DICOM SEG and an RTSTRUCT gives one mask on the image grid."""

from __future__ import annotations

import copy

import contourpy
import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from medhdm.data.dicom_series import write_series
from medhdm.io import read_dicom
from medhdm.io.annotations import ImageGrid, load_annotation
from medhdm.io.dicom import LPS_TO_RAS
from medhdm.pipeline import load_image
from medhdm.testing import ct_volume


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture
def study(tmp_path):
    """A 5-slice CT series and an irregular lesion over three slices, in MONAI order (W, H, D)."""
    template, volume = ct_volume(depth=5)
    write_series(template, volume, tmp_path / "series", file_order_seed=4)
    source = read_dicom(tmp_path / "series")
    w, h, d = 128, 128, 5
    cols, rows = np.meshgrid(np.arange(w), np.arange(h), indexing="ij")
    mask = np.zeros((w, h, d), dtype=np.uint8)
    for k, radius in ((1, 9), (2, 14), (3, 8)):
        blob = ((cols - 80) / radius) ** 2 + ((rows - 45) / (radius * 0.7)) ** 2 <= 1.0
        blob |= ((cols - 80 - radius) ** 2 + (rows - 45) ** 2) <= (radius * 0.4) ** 2  # a bump: not an ellipse
        mask[..., k] = blob
    return tmp_path, source, mask


def _write_seg(source, mask_monai: np.ndarray, path, frame_of_reference: str | None = None):
    datasets = source.datasets
    if frame_of_reference is not None:
        datasets = [copy.deepcopy(d) for d in datasets]
        for d in datasets:
            d.FrameOfReferenceUID = frame_of_reference
    description = hd.seg.SegmentDescription(
        1,
        "lesion",
        codes.SCT.MorphologicallyAbnormalStructure,
        codes.SCT.Lesion,
        hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        datasets,
        np.transpose(mask_monai, (2, 1, 0)).astype(bool),
        hd.seg.SegmentationTypeValues.BINARY,
        [description],
        generate_uid(),
        300,
        generate_uid(),
        1,
        "test",
        "test",
        "1",
        "1",
    )
    seg.save_as(path)


def _write_rtstruct(source, mask_monai: np.ndarray, path, roi_name="lesion"):
    """Contours of the mask (contourpy at level 0.5, per slice) in patient coordinates, as an RTSTRUCT."""
    affine_lps = LPS_TO_RAS @ source.affine_ras
    first = source.first
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for key in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID"):
        setattr(ds, key, first.get(key, ""))
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), 400
    ds.StructureSetLabel = "lesions"
    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = 1, first.FrameOfReferenceUID, roi_name
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = Sequence([roi])
    contours = []
    for k in range(mask_monai.shape[2]):
        if not mask_monai[..., k].any():
            continue
        for line in contourpy.contour_generator(z=mask_monai[..., k].astype(float)).lines(0.5):
            # contourpy's z is indexed (y, x) = (col, row) here, so its (x, y) points are (row, col).
            index = np.stack([line[:, 1], line[:, 0], np.full(len(line), k), np.ones(len(line))])
            points = (affine_lps @ index)[:3].T
            item = Dataset()
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [f"{v:.4f}" for v in points.ravel()]
            contours.append(item)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([roi_contour])
    ds.save_as(path, enforce_file_format=True)


def test_nifti_seg_and_rtstruct_give_the_same_mask(study):
    tmp_path, source, mask = study
    grid = ImageGrid.from_dicom(source)
    nib.save(nib.Nifti1Image(mask, source.affine_ras), tmp_path / "lesion.nii.gz")
    _write_seg(source, mask, tmp_path / "lesion_seg.dcm")
    _write_rtstruct(source, mask, tmp_path / "lesion_rt.dcm")
    from_nifti = load_annotation(tmp_path / "lesion.nii.gz", grid)
    from_seg = load_annotation(tmp_path / "lesion_seg.dcm", grid)
    from_rt = load_annotation(tmp_path / "lesion_rt.dcm", grid)
    np.testing.assert_array_equal(from_nifti, mask)
    np.testing.assert_array_equal(from_seg > 0, mask > 0)
    assert dice(from_rt, mask) > 0.95, dice(from_rt, mask)
    # The grid of the loaded image (LoadImage + DicomSeriesReader) is the same grid.
    image_grid = ImageGrid.from_image(load_image(tmp_path / "series"))
    np.testing.assert_array_equal(load_annotation(tmp_path / "lesion_seg.dcm", image_grid) > 0, mask > 0)


def test_nifti_on_another_grid_is_resampled_with_a_warning(study):
    tmp_path, source, mask = study
    coarse = mask[::2, ::2, :]  # the same lesion on a grid of twice the pixel size
    affine = source.affine_ras.copy()
    affine[:3, :2] *= 2
    nib.save(nib.Nifti1Image(coarse, affine), tmp_path / "coarse.nii.gz")
    with pytest.warns(UserWarning, match="resampled onto the image grid"):
        resampled = load_annotation(tmp_path / "coarse.nii.gz", ImageGrid.from_dicom(source))
    assert resampled.shape == mask.shape and dice(resampled, mask) > 0.85


def test_geometry_mismatches_are_errors(study):
    tmp_path, source, mask = study
    grid = ImageGrid.from_dicom(source)
    far = source.affine_ras.copy()
    far[:3, 3] += 1000.0
    nib.save(nib.Nifti1Image(mask, far), tmp_path / "far.nii.gz")
    with pytest.raises(ValueError, match="does not overlap the image"):
        load_annotation(tmp_path / "far.nii.gz", grid)
    _write_seg(source, mask, tmp_path / "other_for.dcm", frame_of_reference=generate_uid())
    with pytest.raises(ValueError, match="Frame of Reference .* is not the image's"):
        load_annotation(tmp_path / "other_for.dcm", grid)
    _write_rtstruct(source, mask, tmp_path / "rt.dcm")
    with pytest.raises(ValueError, match="no ROI named tumour"):
        load_annotation(tmp_path / "rt.dcm", grid, roi_names=["tumour"])
    shifted = copy.deepcopy(grid.affine)
    shifted[2, 3] += 1.1  # contours now fall between slices
    with pytest.raises(ValueError, match="lies off the image's slices"):
        load_annotation(tmp_path / "rt.dcm", ImageGrid(grid.shape, shifted, grid.frame_of_reference_uid))
    pydicom.dcmread(source.paths[0]).save_as(tmp_path / "ct.dcm")
    with pytest.raises(ValueError, match="is not an annotation"):
        load_annotation(tmp_path / "ct.dcm", grid)
    with pytest.raises(FileNotFoundError):
        load_annotation(tmp_path / "nothing.nii.gz", grid)
