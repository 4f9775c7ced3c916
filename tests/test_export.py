"""Export into the source study: validated by dciodvfy and dcmdump, referenced, pixels right, safe."""

from __future__ import annotations

import copy
import hashlib
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from validators import dciodvfy_errors
from validators import tool as _tool

from medhdm.cli import main
from medhdm.data.dicom_series import write_series
from medhdm.export import (
    OverlayStyle,
    export,
    export_nifti,
    export_png,
    export_secondary_capture,
)
from medhdm.export.deidentify import pseudonym, remap_uid
from medhdm.io import read_dicom
from medhdm.io.dicom import DicomSource
from medhdm.testing import ct_volume


def gaussian_map(shape, centre, sigma) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return np.exp(-d2 / (2 * sigma**2))


def _md5(paths) -> dict:
    return {str(p): hashlib.md5(open(p, "rb").read()).hexdigest() for p in paths}


@pytest.fixture
def sources(tmp_path):
    """The four sources the issue names: CT_small, MR_small, a series, a 2D image without window."""
    out = {"CT_small": get_testdata_file("CT_small.dcm"), "MR_small": get_testdata_file("MR_small.dcm")}
    template, volume = ct_volume(depth=4)
    write_series(template, volume, tmp_path / "series", file_order_seed=1)
    out["series"] = tmp_path / "series"
    no_window = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del no_window.WindowCenter, no_window.WindowWidth
    no_window.SOPInstanceUID = pydicom.uid.generate_uid()
    no_window.file_meta.MediaStorageSOPInstanceUID = no_window.SOPInstanceUID
    (tmp_path / "nowindow").mkdir()
    no_window.save_as(tmp_path / "nowindow" / "mr.dcm")
    out["no_window"] = tmp_path / "nowindow" / "mr.dcm"
    return out


def _map_for(src: DicomSource) -> np.ndarray:
    d, h, w = src.pixels.shape
    return gaussian_map((d, h, w), (d // 2, int(h * 0.35), int(w * 0.6)), sigma=max(2.0, h / 12))


@pytest.mark.parametrize("name", ["CT_small", "MR_small", "series", "no_window"])
def test_sc_pm_seg_pass_dciodvfy_and_reference_the_source(sources, tmp_path, name):
    src = read_dicom(sources[name])
    before = _md5(p for p in src.paths if p is not None)
    written = export(src, _map_for(src), tmp_path / f"out_{name}", ["sc", "pm", "seg"], method="HDM", class_label=1)
    assert len(written["sc"]) == len(src.datasets)
    for path in written["sc"] + written["pm"] + written["seg"]:
        errors, report = dciodvfy_errors(path)
        assert errors == [], f"{path.name}:\n{report}"
        dump = subprocess.run([_tool("dcmdump"), str(path)], capture_output=True, text=True, check=False)
        assert dump.returncode == 0 and "E:" not in dump.stderr, dump.stderr
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == src.first.StudyInstanceUID
        assert ds.PatientID == src.first.PatientID
        assert ds.SeriesInstanceUID != src.first.SeriesInstanceUID
        assert not any(elem.tag.is_private for elem in ds.iterall())
    for k, path in enumerate(written["sc"]):  # one SC per source slice, in slice order
        sc = pydicom.dcmread(path)
        assert int(sc.InstanceNumber) == k + 1
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.datasets[k].SOPInstanceUID
        assert sc.BurnedInAnnotation == "YES" and "HDM" in sc.SeriesDescription and "class 1" in sc.SeriesDescription
    for path in written["pm"] + written["seg"]:
        ds = pydicom.dcmread(path)
        assert ds.FrameOfReferenceUID == src.first.FrameOfReferenceUID
        referenced = {
            item.ReferencedSOPInstanceUID
            for series in ds.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence
        }
        assert referenced == {d.SOPInstanceUID for d in src.datasets}
    # Each PM/SEG frame sits at a source slice position (highdicom may order frames its own way)
    # and holds that slice of the map.
    saliency = _map_for(src)
    expected = np.array([[float(v) for v in d.ImagePositionPatient] for d in src.datasets])
    for path, values in ((written["pm"][0], saliency), (written["seg"][0], saliency >= 0.5)):
        ds = pydicom.dcmread(path)
        frames = ds.pixel_array.reshape((-1,) + src.pixels.shape[1:])
        assert len(frames) == len(src.datasets)
        for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence):
            position = np.array([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient])
            k = int(np.abs(expected - position).sum(axis=1).argmin())
            np.testing.assert_allclose(expected[k], position, atol=1e-3)
            np.testing.assert_allclose(frame, values[k], atol=1e-6)
    assert _md5(p for p in src.paths if p is not None) == before  # the source is untouched


def _windowed_independently(ds: pydicom.Dataset, centre: float | None = None, width: float | None = None):
    """pydicom's own VOI LUT applied to the source, scaled to 0..255 (an independent reference)."""
    ds = copy.deepcopy(ds)
    if centre is not None:
        ds.WindowCenter, ds.WindowWidth = centre, width
    modality = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    windowed = apply_voi_lut(modality, ds)
    lo, hi = apply_voi_lut(np.array([-1e9, 1e9]), ds)  # pydicom's output range for this dataset
    return (windowed - lo) / (hi - lo) * 255.0


@pytest.mark.parametrize("name,preset", [("CT_small.dcm", (40.0, 400.0)), ("MR_small.dcm", None)])
def test_overlay_pixels_read_back(tmp_path, name, preset):
    path = get_testdata_file(name)
    source = pydicom.dcmread(path)
    h, w = source.Rows, source.Columns
    peak = (int(h * 0.3), int(w * 0.65))
    saliency = gaussian_map((h, w), peak, sigma=h / 10)
    style = OverlayStyle(threshold=0.3, alpha=0.5, legend=False)
    sc_path = export_secondary_capture(path, saliency, tmp_path / "sc", style=style)[0]
    rgb = pydicom.dcmread(sc_path).pixel_array.astype(np.float64)
    assert rgb.shape == (h, w, 3)
    gray = _windowed_independently(source, *(preset or (None, None)))
    below = saliency < 0.3
    # Under the transparent part the SC is the windowed source, on all three channels.
    assert np.abs(rgb[below] - gray[below][:, None]).max() <= 1.0
    # Where drawn, un-blending recovers the colormap entry, hence the map value.
    import matplotlib

    table = matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255
    shown = ~below
    colour = (rgb[shown] - 0.5 * gray[shown][:, None]) / 0.5
    recovered = np.linalg.norm(colour[:, None, :] - table[None], axis=-1).argmin(axis=1) / 255.0
    assert np.abs(recovered - saliency[shown]).max() < 0.06
    hottest = np.argwhere(shown)[recovered.argmax()]
    assert np.abs(hottest - np.array(peak)).max() <= 1


def test_legend_and_contour_are_burned_in_where_expected(tmp_path):
    path = get_testdata_file("CT_small.dcm")
    h = pydicom.dcmread(path).Rows
    saliency = gaussian_map((h, h), (40, 40), 10)
    lesion = gaussian_map((h, h), (40, 40), 10) > 0.7
    plain = export_png(path, saliency, tmp_path / "a", style=OverlayStyle(legend=False))[0]
    fancy = export_png(path, saliency, tmp_path / "b", lesion_mask=lesion, method="HDM", class_label=1)[0]
    import matplotlib.image

    a = (matplotlib.image.imread(plain)[..., :3] * 255).round()
    b = (matplotlib.image.imread(fancy)[..., :3] * 255).round()
    changed = np.argwhere(np.any(a != b, axis=-1))
    legend = changed[(changed[:, 0] > h // 2) & (changed[:, 1] > h // 2)]
    contour = changed[(changed[:, 0] < h // 2) & (changed[:, 1] < h // 2)]
    assert len(legend) > 50 and len(contour) > 10 and len(legend) + len(contour) == len(changed)
    np.testing.assert_array_equal(b[tuple(contour.T)], np.tile([0, 255, 255], (len(contour), 1)))


def test_nifti_has_the_source_affine_and_the_map(sources, tmp_path):
    src = read_dicom(sources["series"])
    saliency = _map_for(src)
    path = export_nifti(src, saliency, tmp_path / "nii")
    image = nib.load(path)
    np.testing.assert_allclose(image.affine, src.affine_ras, atol=1e-4)
    np.testing.assert_allclose(np.asarray(image.dataobj).transpose(2, 1, 0), saliency, atol=1e-6)
    # The map's hottest voxel sits at the same patient position in NIfTI and DICOM terms.
    k, r, c = np.unravel_index(saliency.argmax(), saliency.shape)
    ipp = np.array([float(v) for v in src.datasets[k].ImagePositionPatient])
    row_dir = np.array([float(v) for v in src.first.ImageOrientationPatient[:3]])
    col_dir = np.array([float(v) for v in src.first.ImageOrientationPatient[3:]])
    lps = ipp + c * src.spacing[2] * row_dir + r * src.spacing[1] * col_dir
    ras = image.affine @ np.array([c, r, k, 1.0])
    np.testing.assert_allclose(ras[:3], lps * np.array([-1, -1, 1]), atol=1e-3)


def test_deidentified_export_is_consistent_and_valid(sources, tmp_path):
    src = read_dicom(sources["series"])
    salt = "site-secret"
    originals = [str(d) for d in src.datasets]
    written = export(src, _map_for(src), tmp_path / "deid", ["sc", "pm", "seg"], deidentify_salt=salt)
    assert [str(d) for d in src.datasets] == originals  # the in-memory source is not de-identified
    study = remap_uid(src.first.StudyInstanceUID, salt)
    for path in written["sc"] + written["pm"] + written["seg"]:
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == study
        assert ds.PatientID == pseudonym(src.first.PatientID, salt) != src.first.PatientID
        assert not ds.PatientName and ds.PatientIdentityRemoved == "YES"
        assert ds.get("StudyDate") in ("", None, "19000101")
        text = str(ds)
        for original in (
            src.first.StudyInstanceUID,
            src.first.SeriesInstanceUID,
            str(src.first.PatientName),
            src.first.StudyDate,
            src.first.InstitutionName,
            src.first.StationName,
        ):
            assert original not in text
        assert not any(e.VR == "PN" and e.value for e in ds.iterall())
        errors, report = dciodvfy_errors(path)
        assert errors == [], report
    for k, path in enumerate(written["sc"]):
        ref = pydicom.dcmread(path).SourceImageSequence[0].ReferencedSOPInstanceUID
        assert ref == remap_uid(src.datasets[k].SOPInstanceUID, salt)
    pm = pydicom.dcmread(written["pm"][0])
    assert pm.FrameOfReferenceUID == remap_uid(src.first.FrameOfReferenceUID, salt)


def test_wrong_map_shape_or_values_write_nothing(sources, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"does not match the source grid \(128, 128\)"):
        export(sources["CT_small"], np.zeros((64, 64)), out)
    with pytest.raises(ValueError, match="NaN"):
        export(sources["CT_small"], np.full((128, 128), np.nan), out)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        export(sources["CT_small"], np.full((128, 128), 2.0), out)
    with pytest.raises(ValueError, match="formats"):
        export(sources["CT_small"], np.zeros((128, 128)), out, ["sc", "jpeg"])
    assert not out.exists()


def test_failure_midway_leaves_no_partial_files(sources, tmp_path, monkeypatch):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    src = read_dicom(sources["series"])
    calls = {"n": 0}
    original = pydicom.Dataset.save_as

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing_save)
    with pytest.raises(OSError, match="No space left"):
        export(src, _map_for(src), out, ["sc", "pm"])
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # no staged or renamed leftovers
    new = tmp_path / "new"
    calls["n"] = 0
    with pytest.raises(OSError):
        export(src, _map_for(src), new, ["sc", "pm"])
    assert not new.exists()


def test_unwritable_output_is_a_clear_error(sources, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        export(sources["CT_small"], np.zeros((128, 128)), blocker, ["sc"])
    with pytest.raises(ValueError, match="cannot create"):
        export(sources["CT_small"], np.zeros((128, 128)), blocker / "sub", ["sc"])
    assert blocker.read_text() == "x"


def test_output_inside_the_source_folder_is_refused_unless_asked(sources):
    folder = sources["series"]
    before = _md5(sorted(folder.iterdir()))
    src = read_dicom(folder)
    with pytest.raises(ValueError, match="inside the source series folder"):
        export(src, _map_for(src), folder / "maps", ["sc"])
    with pytest.raises(ValueError, match="is the source"):
        export(src, _map_for(src), folder, ["sc"])
    written = export(src, _map_for(src), folder / "maps", ["sc"], allow_inside_source=True)
    assert len(written["sc"]) == 4
    assert _md5(p for p in sorted(folder.iterdir()) if p.is_file()) == before


def test_cli_export_from_npy_and_nifti(sources, tmp_path, capsys):
    from medhdm.cli import main

    src = read_dicom(sources["series"])
    np.save(tmp_path / "map.npy", _map_for(src))
    rc = main(
        [
            "export",
            "--image",
            str(sources["series"]),
            "--map",
            str(tmp_path / "map.npy"),
            "--out",
            str(tmp_path / "cli"),
            "--format",
            "sc,nifti",
            "--method",
            "GradCAM",
        ]
    )
    assert rc == 0
    assert len(list((tmp_path / "cli").glob("SC_*.dcm"))) == 4
    assert "GradCAM" in pydicom.dcmread(tmp_path / "cli" / "SC_0001.dcm").SeriesDescription
    # The NIfTI it wrote is read back onto the same grid and exported again as a SEG.
    rc = main(
        [
            "export",
            "--image",
            str(sources["series"]),
            "--map",
            str(tmp_path / "cli" / "saliency.nii.gz"),
            "--out",
            str(tmp_path / "cli2"),
            "--format",
            "seg",
        ]
    )
    assert rc == 0
    seg = pydicom.dcmread(tmp_path / "cli2" / "SEG.dcm")
    assert seg.pixel_array.astype(bool).sum() == (_map_for(src) >= 0.5).sum()
    capsys.readouterr()
    np.save(tmp_path / "bad.npy", np.zeros((3, 128, 128)))
    rc = main(
        [
            "export",
            "--image",
            str(sources["series"]),
            "--map",
            str(tmp_path / "bad.npy"),
            "--out",
            str(tmp_path / "cli3"),
        ]
    )
    assert rc == 2 and "does not match the source grid" in capsys.readouterr().err
    assert not (tmp_path / "cli3").exists()


def test_a_source_without_patient_geometry_exports_as_secondary_capture(tmp_path, capsys):
    """OT/US/NM-like images (no orientation, no Frame of Reference): SC with an empty Patient Orientation
    passes dciodvfy; PM and SEG, which need the geometry, are refused naming the file."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "FrameOfReferenceUID", "PatientOrientation"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.Modality = "OT"
    (tmp_path / "src").mkdir()
    source = tmp_path / "src" / "ot.dcm"
    ds.save_as(source, enforce_file_format=True)
    np.save(tmp_path / "map.npy", gaussian_map((128, 128), (60, 70), 10.0))
    rc = main(
        [
            "export",
            "--image",
            str(source),
            "--map",
            str(tmp_path / "map.npy"),
            "--out",
            str(tmp_path / "sc"),
            "--format",
            "sc",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    errors, report = dciodvfy_errors(tmp_path / "sc" / "SC_0001.dcm")
    assert not errors, report
    assert pydicom.dcmread(tmp_path / "sc" / "SC_0001.dcm").PatientOrientation in ("", None, [])
    rc = main(
        [
            "export",
            "--image",
            str(source),
            "--map",
            str(tmp_path / "map.npy"),
            "--out",
            str(tmp_path / "pm"),
            "--format",
            "pm",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "ot.dcm" in err and "--format sc" in err, err


def test_pm_frames_run_along_the_slice_normal_with_the_series_spacing(tmp_path):
    """What OHIF needs of a PM and SEG of a series: frames in the order of the source volume (along the row x
    column normal; OHIF lays PM frame k onto the volume's slice k) and Spacing Between Slices as the frames lie,
    also when the source's header states another value."""
    from medhdm.export.dicom import build_parametric_map, build_segmentation

    template, volume = ct_volume(depth=5)
    template.SpacingBetweenSlices = "7.5"  # disagrees with the 2.5 mm between the written positions
    write_series(template, volume, tmp_path / "series", slice_spacing=2.5, file_order_seed=3)
    src = read_dicom(tmp_path / "series")
    saliency = _map_for(src).astype(np.float32)
    ((_, pm),) = build_parametric_map(src, saliency)
    orientation = np.array([float(v) for v in pm.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                            .ImageOrientationPatient])  # fmt: skip
    normal = np.cross(orientation[:3], orientation[3:])
    groups = pm.PerFrameFunctionalGroupsSequence
    along = [np.dot([float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient], normal) for g in groups]
    assert np.all(np.diff(along) > 0), along
    assert [int(g.FrameContentSequence[0].DimensionIndexValues) for g in groups] == [1, 2, 3, 4, 5]
    uids = [str(ds.SOPInstanceUID) for ds in src.datasets]
    stored = pydicom.dcmread(_saved(pm, tmp_path / "pm.dcm")).pixel_array
    for k, group in enumerate(groups):
        source = str(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        np.testing.assert_array_equal(stored[k], saliency[uids.index(source)])
    seg = build_segmentation(src, saliency)[0][1]
    for ds in (pm, seg):
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        assert float(measures.SpacingBetweenSlices) == pytest.approx(2.5), ds.Modality


def _saved(ds, path):
    ds.save_as(path, enforce_file_format=True)
    return path
