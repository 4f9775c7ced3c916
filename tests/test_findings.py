"""Findings (medhdm.explain.findings): HDM's stages and every other method's map as ranked, placed regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medhdm import HDM, GradientInput
from medhdm.explain.findings import Finding, map_regions
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
