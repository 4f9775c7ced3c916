"""Export into an enhanced multi-frame CT: SC per frame, PM and SEG on its frames, valid and on the right frames.

The source is a LesionBench 3D series converted by highdicom's legacy conversion into one
Legacy Converted Enhanced CT, with its frames stored in a shuffled order, so that a map
put on the wrong frame, or in the wrong order or orientation, shows. The ground truth
(which frame holds which slice, where the lesion is) comes from the series the enhanced
image was made from, not from the code under test.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from scipy import ndimage
from validators import dciodvfy_errors

from medhdm.cli import main
from medhdm.data.bench_files import write_lesionbench
from medhdm.export import OverlayStyle, export
from medhdm.export.deidentify import remap_uid
from medhdm.io import read_dicom


def _floats(values) -> np.ndarray:
    return np.array([float(v) for v in values])


def _frame_position(ds: pydicom.Dataset, f: int) -> np.ndarray:
    """Image Position (Patient) of the 1-based frame ``f``."""
    return _floats(ds.PerFrameFunctionalGroupsSequence[f - 1].PlanePositionSequence[0].ImagePositionPatient)


@pytest.fixture(scope="module")
def enhanced(tmp_path_factory):
    """A Legacy Converted Enhanced CT of a one-lesion LesionBench series, frames shuffled, and its ground truth."""
    root = tmp_path_factory.mktemp("enhanced")
    write_lesionbench(root / "bench", n_cases=1, spatial_dims=3, seed=11, lesion_weights=(0, 1, 0, 0))
    series = read_dicom(root / "bench" / "case000" / "image")
    lesion = np.asarray(nib.load(root / "bench" / "case000" / "lesion.nii.gz").dataobj).transpose(2, 1, 0) > 0
    depth = len(series.datasets)
    perm = np.random.default_rng(3).permutation(depth)  # frame f + 1 holds slice perm[f]
    mf = hd.legacy.LegacyConvertedEnhancedCTImage(
        [series.datasets[k] for k in perm],
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=9,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
        include_dimension_index=False,  # keep the shuffled order (a dimension index would sort the frames)
    )
    (root / "source").mkdir()
    path = root / "source" / "enhanced.dcm"
    mf.save_as(path)
    ds = pydicom.dcmread(path)
    for f in range(1, depth + 1):  # the ground truth holds: frame f is series slice perm[f - 1]
        np.testing.assert_allclose(_frame_position(ds, f), _floats(series.datasets[perm[f - 1]].ImagePositionPatient))
    frame_of_slice = {int(k): f + 1 for f, k in enumerate(perm)}
    # Hot over the lesion, in-plane blur only: slices without lesion get exactly 0.
    saliency = ndimage.gaussian_filter(lesion.astype(float), sigma=(0, 1.0, 1.0))
    saliency /= saliency.max()
    return {
        "path": path,
        "ds": ds,
        "series": series,
        "lesion": lesion,
        "frame_of_slice": frame_of_slice,
        "slice_of_frame": {f: k for k, f in frame_of_slice.items()},
        "saliency": saliency,
        "nifti_affine": nib.load(root / "bench" / "case000" / "lesion.nii.gz").affine,
        "root": root,
    }


def test_the_reader_gives_the_series_volume(enhanced):
    src = read_dicom(enhanced["path"])
    assert src.multiframe and src.pixels.shape == enhanced["series"].pixels.shape
    np.testing.assert_array_equal(src.pixels, enhanced["series"].pixels)
    np.testing.assert_allclose(src.affine_ras, enhanced["series"].affine_ras, atol=1e-4)


def _windowed_independently(ds: pydicom.Dataset) -> np.ndarray:
    """pydicom's VOI LUT of a single-frame dataset, scaled to 0..255."""
    ds = copy.deepcopy(ds)
    modality = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    lo, hi = apply_voi_lut(np.array([-1e9, 1e9]), ds)
    return (apply_voi_lut(modality, ds) - lo) / (hi - lo) * 255.0


def _unblend(rgb: np.ndarray, gray: np.ndarray, alpha: float, drawn: np.ndarray) -> np.ndarray:
    """The map value behind each drawn pixel: the nearest inferno entry of the un-blended colour."""
    import matplotlib

    table = matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255
    colour = (rgb[drawn] - (1 - alpha) * gray[drawn][:, None]) / alpha
    values = np.zeros(gray.shape)
    values[drawn] = np.linalg.norm(colour[:, None, :] - table[None], axis=-1).argmin(axis=1) / 255.0
    return values


def test_sc_pm_seg_pass_dciodvfy_and_land_on_the_source_frames(enhanced, tmp_path):
    ds, series, lesion = enhanced["ds"], enhanced["series"], enhanced["lesion"]
    saliency, slice_of_frame = enhanced["saliency"], enhanced["slice_of_frame"]
    style = OverlayStyle(threshold=0.3, alpha=0.5, legend=False)
    written = export(enhanced["path"], saliency, tmp_path / "out", ["sc", "pm", "seg"], style=style, method="HDM")
    depth = len(series.datasets)
    assert len(written["sc"]) == depth and len(written["pm"]) == len(written["seg"]) == 1
    for path in written["sc"] + written["pm"] + written["seg"]:
        errors, report = dciodvfy_errors(path)
        assert errors == [], f"{path.name}:\n{report}"
        out = pydicom.dcmread(path)
        assert out.StudyInstanceUID == ds.StudyInstanceUID and out.SeriesInstanceUID != ds.SeriesInstanceUID
        assert not any(elem.tag.is_private for elem in out.iterall())

    # PM and SEG: every frame derived from one source frame, at its position, holding that slice of the map.
    orientation = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    lesion_frames = {f for f, k in slice_of_frame.items() if lesion[k].any()}
    for path, expected in ((written["pm"][0], saliency), (written["seg"][0], saliency >= 0.5)):
        out = pydicom.dcmread(path)
        assert out.FrameOfReferenceUID == ds.FrameOfReferenceUID
        shared = out.SharedFunctionalGroupsSequence[0]
        np.testing.assert_allclose(_floats(shared.PlaneOrientationSequence[0].ImageOrientationPatient), orientation)
        np.testing.assert_allclose(_floats(shared.PixelMeasuresSequence[0].PixelSpacing), _floats(spacing))
        referenced = [
            i.ReferencedSOPInstanceUID for s in out.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence
        ]
        assert referenced == [ds.SOPInstanceUID]
        frames = out.pixel_array.reshape((-1, *series.pixels.shape[1:]))
        assert len(frames) == depth
        hot = set()
        for frame, group in zip(frames, out.PerFrameFunctionalGroupsSequence):
            item = group.DerivationImageSequence[0].SourceImageSequence[0]
            assert item.ReferencedSOPInstanceUID == ds.SOPInstanceUID
            f = int(item.ReferencedFrameNumber)
            position = _floats(group.PlanePositionSequence[0].ImagePositionPatient)
            np.testing.assert_allclose(position, _frame_position(ds, f), atol=1e-3)
            np.testing.assert_allclose(frame, expected[slice_of_frame[f]], atol=1e-6)
            if frame.max() > 0:
                hot.add(f)
        if path == written["pm"][0]:
            assert hot == lesion_frames
        else:  # the SEG's frames: some of the lesion's (its edge slices are below 0.5 after the blur)
            assert hot and hot <= lesion_frames

    # SC k (slice order) shows source frame f: the windowed frame where the map is transparent, and the
    # hottest colour over the lesion.
    hottest = (-1.0, None)
    for k, path in enumerate(written["sc"]):
        sc = pydicom.dcmread(path)
        f = int(sc.SourceImageSequence[0].ReferencedFrameNumber)
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert int(sc.ReferencedImageSequence[0].ReferencedFrameNumber) == f
        assert slice_of_frame[f] == k and int(sc.InstanceNumber) == k + 1
        rgb = sc.pixel_array.astype(np.float64)
        gray = _windowed_independently(series.datasets[k])
        drawn = saliency[k] >= style.threshold
        assert np.abs(rgb[~drawn] - gray[~drawn][:, None]).max() <= 1.0
        values = _unblend(rgb, gray, style.alpha, drawn)
        if drawn.any():
            assert np.abs(values[drawn] - saliency[k][drawn]).max() < 0.06
            r, c = np.unravel_index(values.argmax(), values.shape)
            if values[r, c] > hottest[0]:
                hottest = (values[r, c], (k, r, c))
    assert hottest[1] is not None and lesion[hottest[1]], f"hottest SC pixel {hottest[1]} is not over the lesion"


def test_a_frame_off_the_volume_grid_is_refused_before_writing(enhanced, tmp_path):
    src = read_dicom(enhanced["path"])
    moved = copy.deepcopy(src.first)
    position = moved.PerFrameFunctionalGroupsSequence[4].PlanePositionSequence[0]
    position.ImagePositionPatient = [*position.ImagePositionPatient[:2], float(position.ImagePositionPatient[2]) + 1.5]
    with pytest.raises(ValueError, match=r"enhanced.dcm: frame 5 at .* is not on a slice of the volume"):
        export(replace(src, datasets=[moved]), enhanced["saliency"], tmp_path / "out", ["sc", "pm", "seg"])
    assert not (tmp_path / "out").exists()


def test_highdicom_reads_the_pm_and_seg_back_on_the_source_volume(enhanced, tmp_path):
    ds, saliency = enhanced["ds"], enhanced["saliency"]
    written = export(enhanced["path"], saliency, tmp_path / "out", ["pm", "seg"])
    source_volume = hd.Image.from_dataset(ds).get_volume()
    pm_volume = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(written["pm"][0])).get_volume()
    assert pm_volume.geometry_equal(source_volume, tol=1e-3)
    # The hottest voxel, in patient coordinates, lies in the lesion (read through the lesion NIfTI's affine).
    ijk = np.unravel_index(np.asarray(pm_volume.array).argmax(), pm_volume.array.shape[:3])
    lps = pm_volume.affine @ np.r_[ijk, 1.0]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    voxel = np.round(np.linalg.inv(enhanced["nifti_affine"]) @ ras)[:3].astype(int)  # (column, row, slice)
    assert enhanced["lesion"][voxel[2], voxel[1], voxel[0]]
    seg = hd.seg.segread(written["seg"][0])
    lesion_frames = sorted(f for f, k in enhanced["slice_of_frame"].items() if enhanced["lesion"][k].any())
    masks = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=ds.SOPInstanceUID, source_frame_numbers=lesion_frames, segment_numbers=[1]
    )[..., 0]
    for f, mask in zip(lesion_frames, masks):
        np.testing.assert_array_equal(mask > 0, saliency[enhanced["slice_of_frame"][f]] >= 0.5)


def test_cli_export_and_explain_with_an_enhanced_source(enhanced, tmp_path, capsys):
    np.save(tmp_path / "map.npy", enhanced["saliency"])
    rc = main(
        [
            "export",
            "--image",
            str(enhanced["path"]),
            "--map",
            str(tmp_path / "map.npy"),
            "--out",
            str(tmp_path / "cli"),
            "--format",
            "seg",
            "--deidentify-salt",
            "site-secret",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    seg = pydicom.dcmread(tmp_path / "cli" / "SEG.dcm")
    assert seg.PatientID != enhanced["ds"].PatientID
    items = [g.DerivationImageSequence[0].SourceImageSequence[0] for g in seg.PerFrameFunctionalGroupsSequence]
    assert {i.ReferencedSOPInstanceUID for i in items} == {remap_uid(enhanced["ds"].SOPInstanceUID, "site-secret")}
    assert sorted(int(i.ReferencedFrameNumber) for i in items) == list(range(1, len(items) + 1))
    errors, report = dciodvfy_errors(tmp_path / "cli" / "SEG.dcm")
    assert errors == [], report

    rc = main(
        [
            "explain",
            "--image",
            str(enhanced["path"]),
            "--model",
            "default3d",
            "--intensity-range=-1000,0",
            "--method",
            "gradientinput",
            "--out",
            str(tmp_path / "explained"),
            "--export",
            "sc,pm,seg",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    folder = tmp_path / "explained" / "enhanced" / "enhanced_dicom"
    depth = len(enhanced["series"].datasets)
    assert len(sorted(folder.glob("SC_*.dcm"))) == depth
    for name in ("PM.dcm", "SEG.dcm", "SC_0001.dcm"):
        errors, report = dciodvfy_errors(folder / name)
        assert errors == [], f"{name}:\n{report}"
    # The map NIfTI sits on the source volume's grid; the PM holds it, frame by frame, on the source's frames.
    nifti = nib.load(tmp_path / "explained" / "enhanced" / "enhanced_saliency.nii.gz")
    np.testing.assert_allclose(nifti.affine, enhanced["series"].affine_ras, atol=1e-4)
    volume = np.asarray(nifti.dataobj).transpose(2, 1, 0)
    pm = pydicom.dcmread(folder / "PM.dcm")
    for frame, group in zip(pm.pixel_array, pm.PerFrameFunctionalGroupsSequence):
        f = int(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        np.testing.assert_allclose(frame, volume[enhanced["slice_of_frame"][f]], atol=1e-6)


def test_findings_seg_and_sr_points_on_the_source_frames(enhanced, tmp_path):
    """Two findings (the lesion, a box elsewhere) exported into the shuffled enhanced source: ``SEG_findings.dcm``
    holds each finding's region on the right frames (read back by highdicom per source frame) and covers its
    centroid; the SR's group per finding carries the centroid as an SCOORD3D point equal to the series' own
    geometry's; dciodvfy reports no error in either."""
    from medhdm.export import ReportContent, read_structured_report

    ds, series, lesion = enhanced["ds"], enhanced["series"], enhanced["lesion"]
    box = np.zeros_like(lesion)
    box[1:4, 5:12, 6:10] = True  # (slice, row, column), away from the lesion
    assert not (box & lesion).any()
    regions = np.stack([lesion, box])
    findings = []
    for region, share in zip(regions, (0.7, 0.3)):
        centroid = np.argwhere(region).mean(axis=0)  # (slice, row, column)
        findings.append(
            {"centroid": centroid[::-1].tolist(), "size": float(region.sum()), "size_unit": "voxels"}
            | {"share": share, "evidence": 2 * share}
        )
    written = export(
        enhanced["path"],
        enhanced["saliency"],
        tmp_path / "out",
        ["seg", "sr"],
        report=ReportContent(1, 0.9, findings=findings),
        finding_regions=regions,
        finding_descriptions=["evidence share 0.70", "evidence share 0.30"],
    )
    path = tmp_path / "out" / "SEG_findings.dcm"
    assert path in written["seg"]
    seg = hd.seg.segread(path)
    assert seg.number_of_segments == 2
    frames = sorted(enhanced["slice_of_frame"])
    masks = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=ds.SOPInstanceUID, source_frame_numbers=frames, segment_numbers=[1, 2]
    )
    for f, mask in zip(frames, masks):
        np.testing.assert_array_equal(mask > 0, regions[:, enhanced["slice_of_frame"][f]].transpose(1, 2, 0))
    groups = read_structured_report(tmp_path / "out" / "SR.dcm")["findings"]
    assert [g["segment_number"] for g in groups] == [1, 2]
    for k, (finding, group, region) in enumerate(zip(findings, groups, regions), start=1):
        column, row, slice_ = finding["centroid"]
        assert region[round(slice_), round(row), round(column)], f"finding {k}'s region misses its centroid"
        # the expected point from the series the enhanced image was made from: its slices' own headers
        below, above = series.datasets[int(np.floor(slice_))], series.datasets[int(np.ceil(slice_))]
        t = slice_ - np.floor(slice_)
        origin = (1 - t) * _floats(below.ImagePositionPatient) + t * _floats(above.ImagePositionPatient)
        iop = _floats(below.ImageOrientationPatient).reshape(2, 3)
        row_spacing, column_spacing = _floats(below.PixelSpacing)
        expected = origin + column * column_spacing * iop[0] + row * row_spacing * iop[1]
        np.testing.assert_allclose(group["centroid_lps"], expected, atol=1e-3)
    for name in ("SEG_findings.dcm", "SR.dcm"):
        errors, report = dciodvfy_errors(tmp_path / "out" / name)
        assert errors == [], f"{name}:\n{report}"
