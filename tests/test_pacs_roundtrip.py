"""From a real Orthanc and back: LesionBench studies retrieved (DICOMweb, DIMSE), explained, pushed into the study.

One Orthanc serves the module; ``medhdm pacs explain`` runs through ``cli.main`` with the
cheap ``gradientinput`` method. Orthanc then holds SC, PM, SEG and SR series in the same
study that reference the source instances, its own rendering of an SC shows the hottest
pixels over the lesion, and a second run adds no instance.
"""

from __future__ import annotations

import numpy as np
import pytest
from pacs_helpers import CLIENT_AET, bench_study, derived_series, enhanced_study, png_pixels, start_orthanc
from validators import dciodvfy_errors

from medhdm.cli import main
from medhdm.export import read_structured_report
from medhdm.io.dicom import read_dicom
from medhdm.io.maps import load_map


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    studies = {dims: bench_study(root / f"lb{dims}d", dims) for dims in (2, 3)}
    studies["dimse"] = bench_study(root / "lb3d-dimse", 3, seed=11)
    return studies


def _explain(where: list[str], study: dict, dims: int, work, *extra: str) -> int:
    return main(
        [
            "pacs",
            "explain",
            *where,
            "--study",
            study["study_uid"],
            "--method",
            "gradientinput",
            "--model",
            "default" if dims == 2 else "default3d",
            "--intensity-range=-1000,0",
            "--work",
            str(work),
            "--push",
            "sc,pm,seg,sr",
            "--retry-delay",
            "0.1",
            *extra,
        ]
    )


def _check_derived(orthanc, study: dict) -> dict:
    sources = {str(pydicom_header(p).SOPInstanceUID) for p in study["files"]}
    kinds = derived_series(orthanc, study["study_uid"])
    assert sorted(kinds) == ["pm", "sc", "seg", "seg_findings", "sr"]
    for kind, series in kinds.items():
        for ds in series["datasets"]:
            assert ds.StudyInstanceUID == study["study_uid"], kind
            assert ds.SeriesInstanceUID.startswith("2.25."), kind
    sc = kinds["sc"]["datasets"]
    assert len(sc) == len(sources)
    assert {str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in sc} == sources
    for kind in ("pm", "seg", "seg_findings"):
        (ds,) = kinds[kind]["datasets"]
        referenced = {
            str(item.ReferencedSOPInstanceUID)
            for series in ds.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence
        }
        assert referenced == sources, kind
    (sr,) = kinds["sr"]["datasets"]
    evidence = {
        str(item.ReferencedSOPInstanceUID)
        for study_item in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study_item.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    segs = {str(kinds[kind]["datasets"][0].SOPInstanceUID) for kind in ("seg", "seg_findings")}
    assert evidence == sources | segs
    return kinds


def pydicom_header(path):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)


def _voxel_of(datasets):
    """``(slice, row, column)`` -> patient mm (LPS) of a single-frame series, from its slices' own headers."""
    ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient]).reshape(2, 3)
    row_spacing, column_spacing = (float(v) for v in datasets[0].PixelSpacing)
    step = ipp[1] - ipp[0] if len(ipp) > 1 else np.cross(iop[0], iop[1])
    matrix = np.stack([step, iop[1] * row_spacing, iop[0] * column_spacing], axis=1)  # (3, 3): columns k, r, c
    return matrix, ipp[0]


def _findings_agree(kinds: dict, study: dict, work, tmp_path) -> None:
    """``<series>_findings.csv``, the findings SEG and the SR's finding groups, read back from Orthanc with
    highdicom, name the same findings: same count and, per finding, centroids within one voxel of each other (the
    SR's Image Region point; the SEG segment's centroid weighted by the pushed Parametric Map and unweighted), and
    the segment covers the CSV's peak (a map-derived region need not be convex: its centroid may lie outside)."""
    import csv

    import highdicom as hd
    import pydicom

    sources = sorted(
        (pydicom.dcmread(p) for p in study["files"]), key=lambda ds: float(np.dot(ds.ImagePositionPatient, [0, 0, 1]))
    )
    series_uid = str(sources[0].SeriesInstanceUID)
    with open(work / study["study_uid"] / series_uid / f"{series_uid}_findings.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 1
    matrix, origin = _voxel_of(sources)
    three_d = len(sources) > 1

    def csv_voxel(row) -> np.ndarray:  # (slice, row, column) on the source grid, from the CSV's (column, row[, slice])
        voxel = [float(v) for v in row["centroid_voxel"].split()][::-1]
        return np.array(voxel if three_d else [0.0, *voxel])

    for row in rows:  # the CSV's mm (RAS) are its voxels through the source geometry
        ras = np.array([float(v) for v in row["centroid_ras_mm"].split()])
        assert np.allclose(ras * [-1, -1, 1], origin + matrix @ csv_voxel(row), atol=0.05)
    seg_ds = kinds["seg_findings"]["datasets"][0]
    seg_ds.save_as(tmp_path / "findings_seg.dcm")
    seg = hd.seg.segread(tmp_path / "findings_seg.dcm")
    assert seg.number_of_segments == len(rows)
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    masks = seg.get_pixels_by_source_instance(uids, segment_numbers=list(range(1, len(rows) + 1)))  # (D, H, W, K)
    pm = kinds["pm"]["datasets"][0]
    positions = [
        tuple(round(float(v), 3) for v in item.PlanePositionSequence[0].ImagePositionPatient)
        for item in pm.PerFrameFunctionalGroupsSequence
    ]
    order = [positions.index(tuple(round(float(v), 3) for v in ds.ImagePositionPatient)) for ds in sources]
    saliency = pm.pixel_array.reshape(len(positions), *masks.shape[1:3])[order]  # (D, H, W) in the sources' order
    sr_ds = kinds["sr"]["datasets"][0]
    sr_ds.save_as(tmp_path / "findings_sr.dcm")
    groups = read_structured_report(tmp_path / "findings_sr.dcm")["findings"]
    for name in ("findings_seg.dcm", "findings_sr.dcm"):
        errors, text = dciodvfy_errors(tmp_path / name)
        assert errors == [], text
    assert len(groups) == len(rows)
    for k, (row, group) in enumerate(zip(rows, groups), start=1):
        expected = csv_voxel(row)
        mask = masks[..., k - 1] > 0
        assert seg.get_segment_description(k).segment_label == f"finding {k}"
        peak = [int(v) for v in row["peak_voxel"].split()][::-1]
        assert mask[tuple(peak if three_d else [0, *peak])], f"segment {k} misses its finding's peak"
        grid = np.indices(mask.shape).reshape(3, -1)
        weights = (saliency * mask).reshape(-1)
        weighted = grid @ weights / weights.sum()
        plain = grid[:, mask.reshape(-1)].mean(axis=1)
        assert np.abs(weighted - expected).max() <= 1.0, (k, weighted, expected)
        assert np.abs(plain - expected).max() <= 1.0, (k, plain, expected)
        assert group["tracking"] == f"finding {k}" and group["segment_number"] == k
        assert group["segment"] == str(seg_ds.SOPInstanceUID)
        assert group["share"] == pytest.approx(float(row["share"]), abs=1e-4)
        if three_d:
            assert group["centroid_lps"] is not None, f"finding {k}'s group has no SCOORD3D centroid"
            point = np.linalg.solve(matrix, np.asarray(group["centroid_lps"]) - origin)
        else:
            assert group["centroid_image"] == uids[0]
            column, row_ = group["centroid_pixel"]
            point = np.array([0.0, row_ - 0.5, column - 0.5])
        assert np.abs(point - expected).max() <= 1.0, (k, point, expected)


def _hottest_over_lesion(orthanc, study: dict, kinds: dict) -> None:
    """Orthanc's PNG preview of the SC over the slice with most lesion: its hottest pixels lie on the lesion."""
    source = read_dicom(study["image"])
    lesion = load_map(study["lesion"], source) > 0  # (D, H, W) in DICOM order
    lesion = lesion.reshape(source.pixels.shape)
    k = int(lesion.reshape(len(lesion), -1).sum(axis=1).argmax())
    uid = str(source.datasets[k].SOPInstanceUID)
    (instance,) = [
        i
        for i, ds in zip(orthanc.instances_of_series(kinds["sc"]["id"]), kinds["sc"]["datasets"])
        if str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) == uid
    ]
    rgb = png_pixels(orthanc.rest("GET", f"/instances/{instance}/preview").content)[..., :3].astype(float)
    h, w = rgb.shape[:2]
    assert (h, w) == lesion.shape[1:]
    heat = rgb[..., 0] + rgb[..., 1] - 2 * rgb[..., 2]  # inferno's hot end is yellow: red and green, no blue
    colour = rgb.max(axis=-1) - rgb.min(axis=-1) > 0.05  # overlay drawn (the source is grey)
    heat[~colour] = -np.inf
    heat[h - h // 4 - 8 :, w - w // 40 - 8 :] = -np.inf  # the burned-in colour bar
    hottest = np.argsort(heat, axis=None)[-20:]
    rows, cols = np.unravel_index(hottest, heat.shape)
    from scipy.ndimage import binary_dilation

    near = binary_dilation(lesion[k], iterations=2)
    # the lesion (and its 2-pixel rim) covers a few percent of the slice; gradientinput is noisy, HDM would do better
    assert near[rows[-1], cols[-1]], "the hottest pixel is not on the lesion"
    assert near[rows, cols].mean() >= 0.6, f"{near[rows, cols].mean():.2f} of the 20 hottest pixels on the lesion"
    assert near.mean() < 0.1


@pytest.mark.parametrize("dims", [2, 3])
def test_dicomweb_round_trip_and_rerun(orthanc, studies, dims, tmp_path, capsys):
    study = studies[dims]
    orthanc.upload([*study["files"], study["annotation"]])
    where = ["--dicomweb", orthanc.dicomweb_url]
    assert _explain(where, study, dims, tmp_path / "w1") == 0
    out = capsys.readouterr().out
    assert "pointing game" in out, out  # the study's lesion SEG was retrieved and the map scored against it
    assert "1 done, 0 skipped, 0 failed" in out, out
    kinds = _check_derived(orthanc, study)
    _hottest_over_lesion(orthanc, study, kinds)
    _findings_agree(kinds, study, tmp_path / "w1", tmp_path)
    kinds["sr"]["datasets"][0].save_as(tmp_path / "sr.dcm")
    report = read_structured_report(tmp_path / "sr.dcm")
    assert report["class_code"] == "class1" and report["probability"] > 0.5  # a lesion case
    assert report["segment"] == kinds["seg"]["datasets"][0].SOPInstanceUID
    assert set(report["scores"]) >= {"pointing_game", "auroc"}
    before = orthanc.instances_count()
    series = orthanc.series_of(study["study_uid"])
    # again, from a fresh work folder (no cache): nothing is added, the study is skipped without retrieval
    assert _explain(where, study, dims, tmp_path / "w2") == 0
    assert "0 done, 1 skipped, 0 failed" in capsys.readouterr().out
    assert orthanc.instances_count() == before
    assert orthanc.series_of(study["study_uid"]) == series


def test_dimse_round_trip_and_rerun(orthanc, studies, tmp_path, capsys):
    """C-FIND + C-GET from Orthanc's DICOM port, C-STORE back; a second run adds nothing."""
    study = studies["dimse"]
    orthanc.upload([*study["files"], study["annotation"]])
    where = ["--dimse", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "--calling-aet", CLIENT_AET]
    assert _explain(where, study, 3, tmp_path / "w1") == 0
    assert "1 done, 0 skipped, 0 failed" in capsys.readouterr().out
    kinds = _check_derived(orthanc, study)
    _hottest_over_lesion(orthanc, study, kinds)
    _findings_agree(kinds, study, tmp_path / "w1", tmp_path)
    before = orthanc.instances_count()
    assert _explain(where, study, 3, tmp_path / "w2") == 0
    assert "0 done, 1 skipped, 0 failed" in capsys.readouterr().out
    assert orthanc.instances_count() == before


def test_multiframe_source_gives_one_sc_per_frame_and_reruns_add_nothing(orthanc, tmp_path, capsys):
    study = enhanced_study(tmp_path / "mf")
    orthanc.upload(study["files"])
    where = ["--dicomweb", orthanc.dicomweb_url]
    assert _explain(where, study, 3, tmp_path / "w1") == 0
    assert "1 done, 0 skipped, 0 failed" in capsys.readouterr().out
    kinds = derived_series(orthanc, study["study_uid"])
    assert sorted(kinds) == ["pm", "sc", "seg", "seg_findings", "sr"] and kinds["sc"]["instances"] == study["frames"]
    frames = sorted(int(ds.SourceImageSequence[0].ReferencedFrameNumber) for ds in kinds["sc"]["datasets"])
    assert frames == list(range(1, study["frames"] + 1))
    before = orthanc.instances_count()
    assert _explain(where, study, 3, tmp_path / "w2") == 0
    assert "0 done, 1 skipped, 0 failed" in capsys.readouterr().out
    assert orthanc.instances_count() == before


def test_new_method_adds_new_series(orthanc, studies, tmp_path, capsys):
    """Another method (another configuration) gives new derived UIDs: five new series (SC, PM, SEG, the findings
    SEG, SR) beside the first five."""
    study = studies[2]
    orthanc.upload(study["files"])
    where = ["--dicomweb", orthanc.dicomweb_url]
    assert _explain(where, study, 2, tmp_path / "w1") == 0  # done now, or skipped after the round-trip test
    first = orthanc.series_of(study["study_uid"])
    assert _explain(where, study, 2, tmp_path / "w2", "--method", "gradcam") == 0
    assert "1 done, 0 skipped, 0 failed" in capsys.readouterr().out
    after = orthanc.series_of(study["study_uid"])
    assert len(after) == len(first) + 5
    assert {s["series_uid"] for s in first} < {s["series_uid"] for s in after}


def test_unknown_study_fails_with_its_uid(orthanc, tmp_path, capsys):
    code = main(
        [
            "pacs",
            "explain",
            "--dicomweb",
            orthanc.dicomweb_url,
            "--study",
            "1.2.3.4.5",
            "--method",
            "gradientinput",
            "--work",
            str(tmp_path),
            "--retry-delay",
            "0",
        ]
    )
    err = capsys.readouterr()
    assert code == 1
    assert "1.2.3.4.5" in err.err and "no source image series" in err.err


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_query_selects_the_matching_study(orthanc, studies, protocol, tmp_path, capsys):
    import pydicom

    study = studies[2]
    orthanc.upload(study["files"])
    patient = str(pydicom.dcmread(study["files"][0], stop_before_pixels=True).PatientID)
    where = (
        ["--dicomweb", orthanc.dicomweb_url]
        if protocol == "dicomweb"
        else ["--dimse", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "--calling-aet", CLIENT_AET]
    )
    code = main(
        ["pacs", "explain", *where, "--query", f"PatientID={patient}", "--query", "Modality=CT"]
        + ["--method", "gradientinput", "--intensity-range=-1000,0", "--work", str(tmp_path), "--push", "sc"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 studies match the query" in out and study["study_uid"] in out
    assert patient not in out  # progress lines carry UIDs, never patient IDs
