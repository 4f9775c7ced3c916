"""Reading DICOM images and series: slice order by geometry, geometry kept, bad series refused."""

from __future__ import annotations

import re

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from medhdm.data.dicom_series import write_series
from medhdm.io import read_dicom
from medhdm.io.dicom import LPS_TO_RAS
from medhdm.testing import ct_volume


@pytest.fixture
def ct_series(tmp_path):
    template, volume = ct_volume()
    folder = tmp_path / "series"
    paths = write_series(template, volume, folder, slice_spacing=2.5, file_order_seed=3)
    return folder, paths, volume


def test_single_files_keep_pixels_and_provenance():
    for name in ("CT_small.dcm", "MR_small.dcm"):
        path = get_testdata_file(name)
        ds = pydicom.dcmread(path)
        src = read_dicom(path)
        assert src.shape == (ds.Rows, ds.Columns) and not src.is_series
        np.testing.assert_array_equal(src.pixels[0], apply_modality_lut(ds.pixel_array, ds))
        assert src.first.StudyInstanceUID == ds.StudyInstanceUID
        assert src.first.SOPInstanceUID == ds.SOPInstanceUID


def test_series_sorted_by_geometry_not_file_name(ct_series):
    folder, paths_in_slice_order, volume = ct_series
    file_names = sorted(p.name for p in paths_in_slice_order)
    assert [p.name for p in paths_in_slice_order] != file_names  # the fixture shuffles names
    src = read_dicom(folder)
    assert src.shape == volume.shape
    np.testing.assert_allclose(src.pixels, volume)
    assert [p.name for p in src.paths] == [p.name for p in paths_in_slice_order]
    assert src.spacing[0] == pytest.approx(2.5)


def test_series_affine_matches_simpleitk(ct_series):
    """The RAS affine agrees with SimpleITK's reading of the same series (LPS origin/direction/spacing)."""
    folder, _, _ = ct_series
    src = read_dicom(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * np.asarray(image.GetSpacing())
    affine_lps[:3, 3] = image.GetOrigin()
    np.testing.assert_allclose(src.affine_ras, LPS_TO_RAS @ affine_lps, atol=1e-3)
    np.testing.assert_allclose(src.pixels, sitk.GetArrayFromImage(image), atol=1e-3)


def _rewrite(path, **changes):
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_two_series_in_one_folder_is_an_error(ct_series):
    folder, paths, _ = ct_series
    _rewrite(paths[2], SeriesInstanceUID=pydicom.uid.generate_uid())
    with pytest.raises(ValueError, match="expected one series, found 2"):
        read_dicom(folder)


def test_missing_slice_is_an_error_naming_the_files(ct_series):
    folder, paths, _ = ct_series
    paths[2].unlink()
    with pytest.raises(ValueError, match=rf"{paths[1].name} -> .*{paths[3].name}.*missing slice"):
        read_dicom(folder)


def test_duplicate_position_is_an_error(ct_series):
    folder, paths, _ = ct_series
    _rewrite(paths[3], ImagePositionPatient=pydicom.dcmread(paths[2]).ImagePositionPatient)
    with pytest.raises(ValueError, match="duplicate slice"):
        read_dicom(folder)


def test_mixed_orientation_is_an_error(ct_series):
    folder, paths, _ = ct_series
    _rewrite(paths[1], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.raises(ValueError, match="mixed orientations"):
        read_dicom(folder)


def test_unreadable_file_is_an_error_naming_it(ct_series):
    folder, _, _ = ct_series
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.txt: not a DICOM file"):
        read_dicom(folder)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_dicom(tmp_path / "nothing")
    with pytest.raises(ValueError, match="holds no files"):
        read_dicom(tmp_path)


def test_enhanced_multiframe_reads_as_the_same_volume(ct_series, tmp_path):
    import highdicom as hd

    folder, _, volume = ct_series
    series = read_dicom(folder)
    frames_reversed = series.datasets[::-1]  # frame order must not matter either
    multiframe = hd.legacy.LegacyConvertedEnhancedCTImage(
        frames_reversed,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=9,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    multiframe.save_as(tmp_path / "enhanced.dcm")
    source = read_dicom(tmp_path / "enhanced.dcm")
    assert source.multiframe and source.shape == volume.shape
    np.testing.assert_allclose(source.pixels, volume)
    np.testing.assert_allclose(source.affine_ras, series.affine_ras, atol=1e-4)


def test_multiframe_without_plane_geometry_is_refused():
    path = get_testdata_file("examples_ybr_color.dcm")  # ultrasound cine, 30 frames, no patient geometry
    with pytest.raises(ValueError, match="without per-frame plane geometry is not supported"):
        read_dicom(path)


@pytest.mark.parametrize(
    ("attribute", "value", "label"),
    [
        ("PatientID", "ANOTHER-PATIENT", "Patient ID"),
        ("PatientName", "Another^Patient", "Patient's Name"),
        ("StudyInstanceUID", None, "Study Instance UID"),
        ("FrameOfReferenceUID", None, "Frame of Reference UID"),
        ("Modality", "MR", "Modality"),
    ],
)
def test_a_slice_that_disagrees_on_a_series_attribute_is_refused_naming_both_files(ct_series, attribute, value, label):
    """One slice of another patient, study or frame of reference: refused, naming that file and the
    first slice's file and the attribute, never the values (they may be names or IDs)."""
    folder, paths, _ = ct_series
    value = value or pydicom.uid.generate_uid()
    _rewrite(paths[4], **{attribute: value})
    with pytest.raises(ValueError, match=rf"series/IM\d+\.dcm and .*series/IM\d+\.dcm: {re.escape(label)}") as err:
        read_dicom(folder)
    assert paths[4].name in str(err.value)
    assert str(value) not in str(err.value)


def test_an_attribute_present_on_one_slice_only_is_a_mismatch(ct_series):
    folder, paths, _ = ct_series
    ds = pydicom.dcmread(paths[0])
    assert "IssuerOfPatientID" not in ds
    _rewrite(paths[2], IssuerOfPatientID="HOSPITAL-B")
    with pytest.raises(ValueError, match="Issuer of Patient ID"):
        read_dicom(folder)


def test_a_subfolder_inside_a_series_folder_is_an_error(ct_series):
    folder, paths, _ = ct_series
    (folder / "extra").mkdir()
    with pytest.raises(ValueError, match=r"extra: a subfolder inside the series folder"):
        read_dicom(folder)
    (folder / "extra").rmdir()
    (folder / ".hidden").mkdir()  # hidden entries are ignored, as hidden files are
    assert read_dicom(folder).shape[0] == len(paths)


@pytest.mark.parametrize("attribute", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_a_file_without_its_identifying_uids_is_refused(tmp_path, attribute):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    delattr(ds, attribute)
    ds.save_as(tmp_path / "x.dcm")
    with pytest.raises(ValueError, match=r"x\.dcm: no .*Instance UID.*Type 1"):
        read_dicom(tmp_path / "x.dcm")


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("ImageOrientationPatient", [0, 0, 0, 0, 0, 0], "degenerate orientation"),
        ("ImageOrientationPatient", [1, 0, 0, 1, 0, 0], "degenerate orientation"),
        ("ImageOrientationPatient", [1, 0, 0, 0, 1], "has 5 values, expected 6"),
        ("ImagePositionPatient", [0, 0], "has 2 values, expected 3"),
        ("PixelSpacing", [0, 0], "must be two positive numbers"),
        ("PixelSpacing", [0.7, -0.7], "must be two positive numbers"),
    ],
)
def test_degenerate_geometry_is_refused_naming_the_file(tmp_path, attribute, value, message):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    setattr(ds, attribute, value)
    ds.save_as(tmp_path / "geometry.dcm")
    with pytest.raises(ValueError, match=rf"geometry\.dcm: .*{message}"):
        read_dicom(tmp_path / "geometry.dcm")
