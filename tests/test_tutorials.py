"""Every tutorial runs end to end on a small setting."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path, monkeypatch):
    if "orthanc" in path.stem:  # needs a local Orthanc with its DICOMweb plugin
        from medhdm.pacs.orthanc import orthanc_available

        why = orthanc_available()
        if why and os.environ.get("MEDHDM_REQUIRE_VALIDATORS") == "1":
            pytest.fail(f"{why}; required (MEDHDM_REQUIRE_VALIDATORS=1)")
        if why:
            pytest.skip(why)
    monkeypatch.setenv("MEDHDM_TUTORIAL_STEPS", "3")
    monkeypatch.setenv("MEDHDM_TUTORIAL_OUT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(path), run_name="__main__")
    assert any(tmp_path.glob("*.png")), "the tutorial should save its figure"


def test_tutorials_are_jupytext_percent_scripts():
    assert TUTORIALS, "no tutorials found"
    for path in TUTORIALS:
        text = path.read_text()
        assert "format_name: percent" in text or "formats: py:percent" in text, path.name
        assert "# %%" in text, path.name
