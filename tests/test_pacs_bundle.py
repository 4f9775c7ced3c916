"""``medhdm pacs explain --bundle``: a MONAI bundle (written in the test around the shipped 2D DenseNet, with its
own preprocessing) explains a LesionBench study that lives in a private Orthanc, and what it pushes into the study
is the map ``medhdm explain --bundle`` makes of the same series, with the bundle's class names in the SR."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pacs_helpers import bench_study, derived_series, start_orthanc
from test_bundle import make_bundle

from medhdm.cli import main


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("MEDHDM_THREADS", "1")  # the two runs compared sum in the same order


def test_pacs_explain_with_a_bundle_pushes_the_bundles_map(tmp_path):
    orthanc = start_orthanc(tmp_path / "orthanc")
    try:
        study = bench_study(tmp_path / "lb2d", 2)
        orthanc.upload(study["files"])
        bundle = make_bundle(tmp_path / "bundle", 2)
        method = ["--bundle", str(bundle), "--method", "gradientinput"]
        assert main(["pacs", "explain", "--dicomweb", orthanc.dicomweb_url, "--study", study["study_uid"], *method,
                     "--work", str(tmp_path / "work"), "--push", "pm,sr", "--retry-delay", "0.1"]) == 0  # fmt: skip
        kinds = derived_series(orthanc, study["study_uid"])
        assert sorted(kinds) == ["pm", "sr"]
        assert main(["explain", "--image", str(study["image"]), *method, "--out", str(tmp_path / "local"),
                     "--export", "pm"]) == 0  # fmt: skip
        local = pydicom.dcmread(next((tmp_path / "local").glob("*/*_dicom/PM.dcm")))
        (pushed,) = kinds["pm"]["datasets"]
        assert pushed.pixel_array.max() > 0.5
        np.testing.assert_allclose(pushed.pixel_array, local.pixel_array, atol=1e-5)
        (sr,) = kinds["sr"]["datasets"]
        assert "lesion (bundle)" in str(sr), "the SR names the class by the bundle's metadata"
    finally:
        orthanc.stop()
