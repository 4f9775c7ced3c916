"""report.html in a real browser: headless Chromium opens it from disk, the slider moves, the pictures change,
and the page logs nothing to the console (no errors)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from medhdm.cli import main
from medhdm.data.bench_files import write_lesionbench
from medhdm.report.niivue import NIIVUE_FILE

#: headless Chromium with software WebGL, offline (the report, NiiVue and OHIF tests)
HEADLESS_FLAGS = [
    "--headless",
    "--no-sandbox",
    # software WebGL, asked for explicitly (SwiftShader): a case's NiiVue viewer starts when the case is opened,
    # and Chromium's implicit fallback to it writes a deprecation warning to the console
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

FLAGS = [
    *HEADLESS_FLAGS,
    "--enable-logging=stderr",
    "--v=0",
    "--window-size=900,700",
]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("MEDHDM_REQUIRE_VALIDATORS") == "1":
            pytest.fail("chromium is required (MEDHDM_REQUIRE_VALIDATORS=1) but not installed")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


def _open(tmp_path, url: str, screenshot: str | None = None) -> tuple[str, list[str]]:
    """Load ``url`` in headless Chromium; the DOM after the scripts ran (or a screenshot), and the console lines."""
    profile = tmp_path / "profile"
    what = [f"--screenshot={tmp_path / screenshot}"] if screenshot else ["--dump-dom"]
    run = subprocess.run(
        [_chromium(), *FLAGS, f"--user-data-dir={profile}", *what, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout, [line for line in run.stderr.splitlines() if ":CONSOLE" in line]


def _pixels(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    manifest = write_lesionbench(root / "lb3", n_cases=2, spatial_dims=3, seed=1, lesion_weights=(0.0, 1.0, 1.0, 1.0))
    rc = main(
        [
            "evaluate",
            "--manifest",
            str(manifest),
            "--model",
            "default3d",
            "--methods",
            "gxi,occlusion",
            "--intensity-range=-1000,0",
            "--no-faithfulness",
            "--out",
            str(root / "report"),
        ]
    )
    assert rc == 0
    return root / "report" / "report.html"


def test_the_console_check_sees_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>notAFunction();</script></body></html>")
    _, console = _open(tmp_path, page.as_uri())
    assert any("notAFunction" in line for line in console), console


def test_slider_method_and_case_links_in_chromium(report, tmp_path):
    url = report.as_uri()
    dom, console = _open(tmp_path, url)
    assert console == []
    assert 'href="#case-case000"' in dom and 'href="#case-case001"' in dom  # the case table links to the cases
    assert 'class="focus"' not in dom  # the whole report, no case singled out

    dom, console = _open(tmp_path, url + "#case-case000/slice=17")
    assert console == []
    section = re.search(r'<section class="case current" id="case-case000">.*?</section>', dom, re.S)
    assert section, "case000 is the page shown"
    assert re.search(r'<img class="frame"[^>]*data-slice="17"', section.group(0))
    assert "<output>18 / 24</output>" in section.group(0)  # all 24 slices on the slider
    assert re.search(r"lesion on slices \d+", section.group(0))

    shots = {}
    for name, fragment in {"a": "slice=3", "b": "slice=17", "c": "slice=17/method=occlusion"}.items():
        _, console = _open(tmp_path, f"{url}#case-case000/{fragment}", screenshot=f"{name}.png")
        assert console == [], console
        shots[name] = _pixels(tmp_path / f"{name}.png")
    changed = np.abs(shots["a"] - shots["b"]).sum(axis=2) > 0
    assert changed.sum() > 1000, "moving the slider changes the picture"
    assert (np.abs(shots["b"] - shots["c"]).sum(axis=2) > 0).sum() > 50, "another method, another picture"


def test_report_is_self_contained(report):
    page = report.read_text()
    # the one script file is NiiVue's, written beside the report (medhdm/report/niivue.py)
    assert re.findall(r'<script src="([^"]+)"', page) == [NIIVUE_FILE] and (report.parent / NIIVUE_FILE).is_file()
    assert "http://" not in page and "https://" not in page
    frames = re.findall(r'<script type="application/json" class="frames">(.*?)</script>', page, re.S)
    assert len(frames) == 2
    data = json.loads(frames[0])
    assert set(data) == {"image", "gxi", "occlusion"} and all(len(v) == 24 for v in data.values())
    assert len(set(data["gxi"])) > 12  # the slices differ
    assert report.stat().st_size < 2_000_000


def test_findings_listed_outlined_numbered_and_a_row_jumps_to_its_slice(report, tmp_path):
    """Each case lists each method's findings (as many as the per-case CSV scored), its frames outline them in
    green around their centroid, and a finding's row opens the viewer at its slice with its method."""
    import csv

    from PIL import Image

    page = report.read_text()
    section = re.search(r'<section class="case" id="case-case000">.*?</section>', page, re.S).group(0)
    with open(report.parent / "per_case.csv") as f:
        scored = {r["method"]: r["findings"] for r in csv.DictReader(f) if r["case"] == "case000"}
    frames = json.loads(re.search(r'<script type="application/json" class="frames">(.*?)</script>', section, re.S)[1])

    def pixels(uri: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"), np.int16)

    def green(rgb: np.ndarray) -> np.ndarray:
        return (rgb[..., 1] > 200) & (rgb[..., 0] < 90) & (rgb[..., 2] < 90)

    for method in ("gxi", "occlusion"):
        table = re.search(rf'<table class="findings" data-method="{method}">(.*?)</table>', section, re.S)
        assert table, f"no findings table for {method}"
        rows = re.findall(r'<tr class="finding" data-rank="(\d+)" data-slice="(\d+)">(.*?)</tr>', table[1], re.S)
        assert len(rows) == len(scored[method].split("/")[0].split()) >= 1  # the findings the FROC scored
        assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))
        rank, k, cells = rows[0]
        column, row = (float(v) for v in re.search(r"<td>\(([^)]*)\)</td>", cells)[1].split(", ")[:2])
        frame = green(pixels(frames[method][int(k)]))
        assert frame.any() and not green(pixels(frames["image"][int(k)])).any()
        rs, cs = np.nonzero(frame)
        assert rs.min() - 2 <= row <= rs.max() + 2 and cs.min() - 2 <= column <= cs.max() + 2, "outline off its finding"
        # the 3D viewer's button for the finding sits on the same slice (its peak)
        vox = re.search(rf'class="nv-jump" data-vox="([\d,]+)">{method} finding 1</button>', section)
        assert vox and int(vox[1].split(",")[2]) == int(k)
        link = re.search(r'<a class="finding-link" href="([^"]+)">', cells)[1]
        assert link == f"#case-case000/slice={k}/method={method}"
        dom, console = _open(tmp_path, report.as_uri() + link)
        assert console == [], console
        shown = re.search(r'<section class="case current" id="case-case000">.*?</section>', dom, re.S)
        assert shown and re.search(rf'<img class="frame"[^>]*data-slice="{k}" data-method="{method}"', shown[0])
