"""Findings (medhdm.explain.findings): HDM's stages and every other method's map as ranked, placed regions."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medhdm import HDM, GradientInput
from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.explain.findings import Finding, _ball_maxima, finding_from_region, map_regions
from medhdm.metrics.froc import ImageHits, froc, froc_summary, image_hits
from medhdm.models import DEFAULT_2D, load_default_classifier
from medhdm.pipeline import InputSpec, explain_images
from medhdm.study import FINDINGS_COLUMNS, StudyCase, explain_study
from medhdm.testing import BlobDetector, plant

# Two boxes off the diagonal (a swapped axis order puts their findings in the background);
# box 1 bright, box 2 dim: box 1 carries clearly more evidence.
CASES = {
    "2d": ((48, 48), [(slice(6, 13), slice(28, 35)), (slice(30, 37), slice(8, 15))]),
    "3d": ((16, 32, 32), [(slice(2, 7), slice(4, 9), slice(20, 25)), (slice(9, 14), slice(20, 25), slice(6, 11))]),
}


def planted(key: str):
    shape, boxes = CASES[key]
    x, labels = plant(shape, boxes)
    x[labels == 2] = 0.75
    return x, labels[0, 0], BlobDetector(len(shape)).calibrate(x)


def centre(box) -> np.ndarray:
    return np.array([(s.start + s.stop - 1) / 2 for s in box])


@pytest.mark.parametrize("key", ["2d", "3d"])
@pytest.mark.parametrize("method", [HDM, GradientInput], ids=["HDM", "GradientInput"])
def test_two_lesions_ranked_by_contrast_and_placed(key, method):
    x, labels, model = planted(key)
    spacing = (2.0,) * (x.ndim - 2)
    result = method(model).explain(x, spacing=spacing)
    findings = result.findings[0]
    assert len(findings) == 2, [f.record() for f in findings]
    assert all(isinstance(f, Finding) for f in findings)
    # the bright lesion first, the dim one second: by evidence, which also ranks them
    assert [int(labels[f.peak]) for f in findings] == [1, 2]
    assert findings[0].evidence > 1.5 * findings[1].evidence > 0
    assert findings[0].share > findings[1].share and sum(f.share for f in findings) == pytest.approx(1.0)
    if method is HDM:
        assert all(f.stage >= 1 for f in findings)
    else:
        assert all(f.stage is None for f in findings)
    for f in findings:
        assert f.size_unit == ("mm^2" if x.ndim == 4 else "mm^3")
        assert f.size_mm == pytest.approx(f.region.sum() * 2.0 ** (x.ndim - 2))
        assert f.region[f.peak]
    # 2D: the centroids lie within 2 voxels of the boxes' centres, in the input's axis order
    if key == "2d":
        boxes = CASES[key][1]
        for f, box in zip(findings, boxes):
            assert np.linalg.norm(np.array(f.centroid) - centre(box)) < 2.0, (f.centroid, centre(box))


def test_findings_in_voxels_without_spacing():
    x, labels, model = planted("2d")
    findings = GradientInput(model).explain(x).findings[0]
    assert findings and all(f.size_unit == "voxels" and f.size_mm == f.region.sum() for f in findings)


def test_map_regions_suppress_within_the_radius_in_mm():
    # two peaks 8 voxels apart along axis 0: 8 mm at 1 mm spacing (suppressed by the 15 mm radius), 24 mm at 3 mm
    grid = np.mgrid[0:40, 0:40].astype(float)
    bump = lambda c, h: h * np.exp(-((grid[0] - c[0]) ** 2 + (grid[1] - c[1]) ** 2) / 4.0)  # noqa: E731
    s = bump((16, 20), 1.0) + bump((24, 20), 0.8)
    assert len(map_regions(s, spacing=(1.0, 1.0))) == 1
    regions = map_regions(s, spacing=(3.0, 1.0))
    assert len(regions) == 2
    assert regions[0][16, 20] and regions[1][24, 20] and not (regions[0] & regions[1]).any()
    assert map_regions(np.zeros((8, 8))) == []


def test_findings_kept_per_image_when_explained_by_spacing_groups():
    x, labels, model = planted("2d")
    batch = torch.cat([x, x.flip(-1)])
    result = HDM(model).explain(batch, spacing=[(2.0, 2.0), (2.5, 2.5)])
    assert len(result.findings) == 2
    first, second = result.findings
    assert [int(labels[f.peak]) for f in first] == [1, 2]
    assert [int(labels.flip(-1)[f.peak]) for f in second] == [1, 2]
    assert first[0].size_unit == "mm^2" and second[0].size_mm == pytest.approx(second[0].region.sum() * 6.25)


def test_image_hits_tolerance_in_mm_per_axis():
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[8:12, 8:12] = 1
    hit = lambda peak, spacing: int(image_hits([peak], [1.0], mask, spacing, 5.0).lesion[0])  # noqa: E731
    # 2 voxels beyond the lesion along axis 0: 2 mm at (1, 10) mm, a hit; along axis 1: 20 mm, a miss
    assert hit((13, 10), (1.0, 10.0)) == 1
    assert hit((10, 13), (1.0, 10.0)) == 0
    assert hit((10, 13), (10.0, 1.0)) == 1
    assert hit((10, 10), None) == 1 and hit((0, 0), None) == 0
    two = np.zeros((20, 20), dtype=np.uint8)
    two[2:4, 2:4] = two[15:18, 15:18] = 1
    hits = image_hits([(16, 16), (3, 2), (10, 10)], [0.5, 0.9, 0.1], two)
    assert hits.n_lesions == 2 and hits.lesion.tolist() == [2, 1, 0]


def test_froc_and_cpm_equal_their_hand_computed_values():
    # image A: two lesions; 0.9 hits lesion 1, 0.8 misses, 0.7 hits lesion 1 again (neither true nor
    # false), 0.3 hits lesion 2; image B: no lesion, 0.85 and 0.2 are false findings.
    a = ImageHits(np.array([0.9, 0.8, 0.7, 0.3]), np.array([1, 0, 1, 2]), 2)
    b = ImageHits(np.array([0.85, 0.2]), np.array([0, 0]), 0)
    result = froc([a, b])
    # steps (false per image, sensitivity): (0, .5) (.5, .5) (1, .5) (1, 1) (1.5, 1)
    assert result["sensitivity"] == pytest.approx([0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0])
    assert result["cpm"] == pytest.approx(5.5 / 7)
    assert result["n_lesions"] == 2 and result["n_images"] == 2
    summary = {r["metric"]: r for r in froc_summary("m", [a, b], n_boot=200)}
    assert summary["cpm"]["mean"] == pytest.approx(5.5 / 7) and summary["froc_sens@1"]["mean"] == 1.0
    assert summary["cpm"]["ci_low"] <= summary["cpm"]["mean"] <= summary["cpm"]["ci_high"]
    assert summary["cpm"]["n"] == 2


def test_findings_csv_on_the_source_grid(tmp_path):
    """A LesionBench 2D study (DICOM, two lesions) through explain_study: the CSV lists the findings on the
    source grid, each peak inside its lesion (a swapped axis order puts them outside), mm through the affine."""
    entries = json.loads(write_lesionbench(tmp_path / "lb", 1, 2, seed=78, lesion_weights=(0, 0, 1, 0)).read_text())
    entry = entries["testing"][0]
    lesion = nib.load(tmp_path / "lb" / entry["lesion"]).get_fdata()[..., 0]
    model = load_default_classifier(DEFAULT_2D)
    spec = InputSpec(tuple(model.medhdm_card["recipe"]["spatial_size"]), intensity_range=LESIONBENCH_INTENSITY_RANGE)
    image = tmp_path / "lb" / entry["image"]
    (result,) = explain_images([image], GradientInput(model), spec, [1])
    found = result.findings
    assert len(found) >= 2 and found[0].score >= found[1].score
    assert {int(lesion[f.peak]) for f in found[:2]} == {1, 2}
    assert not any(lesion[f.peak[::-1]] for f in found[:2]), "the case cannot tell a swapped axis order"
    (tmp_path / "out").mkdir()
    row = explain_study(StudyCase(image, "c0", 1), GradientInput(model), spec, tmp_path / "out")
    with open(tmp_path / "out" / "c0" / "c0_findings.csv") as f:
        rows = list(csv.DictReader(f))
    assert row["case"] == "c0" and len(rows) == len(found)
    assert list(rows[0]) == list(FINDINGS_COLUMNS)
    for k, (r, f) in enumerate(zip(rows, found), start=1):
        assert int(r["rank"]) == k and r["stage"] == ""
        voxel = np.array([float(v) for v in r["centroid_voxel"].split()])
        assert np.allclose(voxel, f.centroid, atol=0.01)
        ras = np.array([float(v) for v in r["centroid_ras_mm"].split()])
        assert np.allclose(ras, (result.affine @ np.array([*f.centroid, 0.0, 1.0]))[:3], atol=0.01)
        assert tuple(int(v) for v in r["peak_voxel"].split()) == f.peak
        assert float(r["share"]) == pytest.approx(f.share, abs=1e-4) and r["size_unit"] == "mm^2"


def test_findings_seg_and_sr_one_segment_and_group_per_finding(tmp_path):
    """``SEG_findings.dcm`` beside the thresholded map's SEG: one segment per finding, read back by highdicom,
    each covering its finding's centroid and peak on the source grid; the SR one measurement group per finding
    referencing its segment, with its size, evidence share and centroid (an SCOORD point on the image); dciodvfy
    reports no error in either."""
    import highdicom as hd

    from medhdm.export.sr import read_structured_report
    from medhdm.io.dicom import read_dicom

    entries = json.loads(write_lesionbench(tmp_path / "lb", 1, 2, seed=78, lesion_weights=(0, 0, 1, 0)).read_text())
    image = tmp_path / "lb" / entries["testing"][0]["image"]
    model = load_default_classifier(DEFAULT_2D)
    spec = InputSpec(tuple(model.medhdm_card["recipe"]["spatial_size"]), intensity_range=LESIONBENCH_INTENSITY_RANGE)
    (result,) = explain_images([image], GradientInput(model), spec, [1])
    (tmp_path / "out").mkdir()
    row = explain_study(StudyCase(image, "c0", 1), GradientInput(model), spec, tmp_path / "out", ("seg", "sr"))
    path = Path(row["export"]) / "SEG_findings.dcm"
    assert (Path(row["export"]) / "SEG.dcm").is_file()
    seg = hd.seg.segread(path)
    assert seg.number_of_segments == len(result.findings) >= 2
    source_uid = read_dicom(image).first.SOPInstanceUID
    pixels = seg.get_pixels_by_source_instance([source_uid], segment_numbers=list(range(1, len(result.findings) + 1)))
    for k, f in enumerate(result.findings):
        plane = pixels[0, :, :, k]  # (rows, columns); the finding's voxels are (column, row) in MONAI order
        column, row_ = (int(round(v)) for v in f.centroid)
        assert plane[row_, column], f"segment {k + 1} misses its centroid {f.centroid}"
        assert plane[f.peak[1], f.peak[0]]
        assert plane.sum() == f.region.sum()
        description = seg.get_segment_description(k + 1)
        assert description.segment_label == f"finding {k + 1}" and f"{f.share:.2f}" in description.SegmentDescription
    report = read_structured_report(Path(row["export"]) / "SR.dcm")
    assert report["segment"] != seg.SOPInstanceUID  # the map's group references the thresholded map's SEG
    assert len(report["findings"]) == len(result.findings)
    for k, (group, f) in enumerate(zip(report["findings"], result.findings), start=1):
        assert group["tracking"] == f"finding {k}" and group["segment_number"] == k
        assert group["segment"] == seg.SOPInstanceUID
        assert group["size"] == pytest.approx(f.size_mm) and group["size_unit"] == "mm^2"
        assert group["share"] == pytest.approx(f.share) and group["evidence"] == pytest.approx(f.evidence)
        # the centroid as an Image Region POINT on the source image: (column, row), pixel centres at .5
        assert group["centroid_lps"] is None and group["centroid_image"] == source_uid
        assert group["centroid_pixel"] == pytest.approx((f.centroid[0] + 0.5, f.centroid[1] + 0.5), abs=1e-3)
    _no_dciodvfy_errors(path)
    _no_dciodvfy_errors(Path(row["export"]) / "SR.dcm")


def _no_dciodvfy_errors(path) -> None:
    tool = shutil.which("dciodvfy")
    if tool is None:
        if os.environ.get("MEDHDM_REQUIRE_VALIDATORS") == "1":
            pytest.fail("dciodvfy is required (MEDHDM_REQUIRE_VALIDATORS=1) but not installed")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    report = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], report.stdout + report.stderr


def test_a_c_shaped_findings_point_lies_in_its_seg_segment(tmp_path):
    """A C-shaped region's centre of mass lies in its opening: the finding's centroid is the region's voxel
    nearest to it, so the point the SR reports on the source image lies in the finding's SEG segment."""
    from medhdm.export import ReportContent, export, read_structured_report
    from medhdm.io.axes import monai_to_dicom_volume
    from medhdm.pipeline import load_image

    entries = json.loads(write_lesionbench(tmp_path / "lb", 1, 2, seed=78, lesion_weights=(0, 0, 1, 0)).read_text())
    image = tmp_path / "lb" / entries["testing"][0]["image"]
    shape = tuple(load_image(image).shape[1:])  # (columns, rows): MONAI order
    column, row = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    radius = np.hypot(column - 40.0, row - 50.0)
    region = (radius >= 8) & (radius <= 14) & ~((column > 40) & (np.abs(row - 50) < 6))  # open to the right
    saliency = region * 0.8
    finding = finding_from_region(region, saliency, (1.0, 1.0))
    mass = np.array([(column * region).sum(), (row * region).sum()]) / region.sum()
    assert not region[tuple(np.round(mass).astype(int))] and abs(mass[1] - 50) < 0.5  # in the C's hole
    assert region[tuple(int(v) for v in finding.centroid)], f"centroid {finding.centroid} outside the C"
    assert abs(finding.centroid[1] - 50.0) <= 1 and finding.centroid[0] < 40  # on the C's back, by the centre
    convex = (np.abs(column - 20) <= 3) & (np.abs(row - 20) <= 3)
    assert finding_from_region(convex, convex * 1.0, None).centroid == (20.0, 20.0)  # a centre inside: kept
    written = export(
        image,
        monai_to_dicom_volume(saliency),
        tmp_path / "out",
        ["seg", "sr"],
        report=ReportContent(1, 0.9, findings=[finding.record()]),
        finding_regions=[monai_to_dicom_volume(finding.region)],
        finding_descriptions=["finding on a C"],
    )
    import highdicom as hd

    seg = hd.seg.segread(tmp_path / "out" / "SEG_findings.dcm")
    plane = seg.get_pixels_by_source_instance([seg.SourceImageSequence[0].ReferencedSOPInstanceUID], [1])[0, :, :, 0]
    (group,) = read_structured_report(written["sr"][0])["findings"]
    point_column, point_row = group["centroid_pixel"]  # pixel centres at .5
    assert plane[int(point_row), int(point_column)], f"the SR's point {group['centroid_pixel']} is outside the segment"
    assert plane.sum() == region.sum()


@pytest.mark.parametrize("trial", range(12))
def test_the_peaks_are_the_maxima_of_their_ball_as_a_full_maximum_filter_finds_them(trial):
    """The candidate peaks (checked against the whole ball only where they top their neighbourhood) are exactly
    the voxels equal to SciPy's maximum filter over the ball in mm, on smooth maps, plateaus and anisotropic
    spacings, 2D and 3D."""
    from scipy import ndimage

    rng = np.random.default_rng(trial)
    dims = 2 + trial % 2
    s = ndimage.gaussian_filter(rng.random(tuple(rng.integers(6, 28, dims))), rng.uniform(0, 2))
    if trial % 3 == 0:
        s = np.round(s, 2)  # plateaus: ties with the centre do not remove it
    step, radius = rng.uniform(0.5, 4, dims), rng.uniform(1, 15)
    half = np.maximum(1, np.floor(radius / step)).astype(int)
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    ball = sum((g * d) ** 2 for g, d in zip(grids, step)) <= radius**2
    where = s >= 0.3 * s.max()
    expected = (s == ndimage.maximum_filter(s, footprint=ball, mode="nearest")) & where
    found = _ball_maxima(s, step, half, radius, where)
    assert expected.any()
    np.testing.assert_array_equal(found, expected)


def test_rest_is_what_a_region_carries_once_the_other_candidates_are_removed():
    """Two equal boxes under a max-pooling detector: removing either alone takes next to nothing (the other
    suffices), with the other removed it takes the decision (``rest``); a background region carries none."""
    from medhdm.explain.findings import region_evidence
    from medhdm.explain.reference import make_reference
    from medhdm.explain.scoring import ClassScorer

    x, labels = plant((32, 32), [(slice(4, 9), slice(4, 9)), (slice(20, 25), slice(20, 25))])
    model = BlobDetector(2, pool="max").calibrate(x).eval()
    scorer, reference, cls = ClassScorer(model), make_reference(x, "blur"), torch.tensor([1])
    boxes = [(labels[0, 0] == k).numpy() for k in (1, 2)]
    background = np.zeros((32, 32), dtype=bool)
    background[26:31, 2:7] = True
    with torch.no_grad():
        o_x, o_r = scorer.log_odds(scorer.logits(x), cls), scorer.log_odds(scorer.logits(reference), cls)
    ((first, second, empty),) = region_evidence(scorer, x, reference, cls, [boxes + [background]], o_x, o_r, True)
    for drop, alone, rest in (first, second):
        assert abs(drop) < 0.05 and rest > 2.0 and alone > 2.0, (drop, alone, rest)
    assert abs(empty[0]) < 0.05 and abs(empty[2]) < 0.05
    (plain,) = region_evidence(scorer, x, reference, cls, [boxes], o_x, o_r)  # without context: rest not measured
    assert all(np.isnan(rest) for _, _, rest in plain) and plain[0][:2] == pytest.approx(first[:2])


def test_hdm_ranks_a_lesion_above_a_region_that_carries_evidence_only_out_of_context():
    """HDM's score is the evidence plus ``rest``: a broad low region that keeps 2.46 log-odds alone over the
    reference but carries next to nothing in the image (drop and rest near 0) ranks below a lesion whose removal
    takes 1.34, 1.73 with the other candidates removed (figures of the development studies; by the evidence
    alone, the broad region came first); a candidate whose evidence only shows with the others removed is kept."""
    from medhdm.explain.findings import _ranked

    saliency = np.full((40, 40), 0.02)
    lesion = np.zeros((40, 40), dtype=bool)
    lesion[5:10, 5:10] = True
    broad = np.zeros((40, 40), dtype=bool)
    broad[15:40, 0:40] = True
    hidden = np.zeros((40, 40), dtype=bool)
    hidden[5:10, 30:35] = True
    saliency[lesion], saliency[broad], saliency[hidden] = 1.0, 0.08, 0.5
    saliency[7, 7] = saliency[25, 20] = saliency[7, 32] = 1.1
    found = _ranked(
        saliency,
        [broad, lesion, hidden],
        [1, 1, 2],
        [(-0.01, 2.46, 0.04), (1.34, 0.0, 1.73), (0.0, 0.0, 0.4)],
        (1.0, 1.0),
    )
    assert [f.peak for f in found] == [(7, 7), (25, 20), (7, 32)]
    assert found[0].score == pytest.approx(1.34 + 1.73) and found[1].score == pytest.approx(2.46 + 0.04)
    assert found[0].evidence == pytest.approx(1.34) and found[2].evidence == 0 and found[2].rest == 0.4


@pytest.mark.parametrize("method", [HDM, GradientInput], ids=["HDM", "GradientInput"])
def test_explain_without_findings_makes_no_model_call_for_them(method):
    """``explain(..., findings=False)`` and ``explainer(x)`` leave the findings empty and send the model only the
    images the method itself counts; with the findings, their evidence call sends more."""
    x, _, model = planted("2d")
    x = torch.cat([x, x.flip(-1)])
    explainer = method(model)
    seen: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        counts = []
        for call in (
            lambda: explainer.explain(x, spacing=(2.0, 2.0), findings=False),
            lambda: explainer.explain(x, spacing=[(2.0, 2.0), (2.5, 2.5)], findings=False),  # by spacing groups
            lambda: explainer.explain(x, spacing=(2.0, 2.0)),
        ):
            seen.clear()
            result = call()
            counts.append((sum(seen), result.images_evaluated, result.findings))
        seen.clear()
        saliency = explainer(x, spacing=(2.0, 2.0))
    finally:
        hook.remove()
    (plain, plain_counted, none), (grouped, grouped_counted, none_grouped), (full, full_counted, found) = counts
    assert none == [] and none_grouped == []
    assert plain == plain_counted and grouped == grouped_counted and sum(seen) == plain
    assert full_counted == plain_counted and full > plain and len(found) == 2 and all(found)
    torch.testing.assert_close(saliency, explainer.explain(x, spacing=(2.0, 2.0), findings=False).saliency)
    with pytest.raises(TypeError, match="findings"):
        explainer.explain(x, findings="no")
