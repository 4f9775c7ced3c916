"""The report's NiiVue viewer in headless Chromium with SwiftShader's software WebGL: it starts with no console
message, draws the map's hot voxels hot, moves every method's crosshair together (and with it the other planes),
and requests nothing from the network (Chromium's net log)."""

from __future__ import annotations

import io
import json
import re
import subprocess

import nibabel as nib
import numpy as np
import pytest
from test_report_browser import HEADLESS_FLAGS, _chromium

from medhdm.cli import main
from medhdm.data.bench_files import write_lesionbench
from medhdm.report.niivue import NIIVUE_FILE, NIIVUE_VERSION

FLAGS = [
    *HEADLESS_FLAGS,
    "--enable-logging=stderr",
    "--v=0",
    "--window-size=1300,1500",
    "--virtual-time-budget=30000",
]


def _open(tmp_path, url: str, screenshot: str | None = None, net_log: str | None = None) -> tuple[str, list[str]]:
    """``url`` in headless Chromium with software WebGL: the DOM after the scripts ran (or a screenshot), and the
    console lines."""
    what = [f"--screenshot={tmp_path / screenshot}"] if screenshot else ["--dump-dom"]
    if net_log:
        what.append(f"--log-net-log={tmp_path / net_log}")
    run = subprocess.run(
        [_chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *what, url],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout, [line for line in run.stderr.splitlines() if ":CONSOLE" in line]


def _pixels(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("niivue")
    manifest = write_lesionbench(root / "lb3", n_cases=1, spatial_dims=3, seed=1, lesion_weights=(0.0, 1.0, 0.0, 0.0))
    rc = main(["evaluate", "--manifest", str(manifest), "--model", "default3d", "--methods", "gxi,gradientinput",
               "--intensity-range=-1000,0", "--no-faithfulness", "--out", str(root / "report")])  # fmt: skip
    assert rc == 0
    maps = np.load(root / "report" / "case000" / "maps.npz")
    return root / "report" / "report.html", {k: maps[k] for k in maps.files}


def _canvases(dom: str) -> list[dict]:
    tags = re.findall(r"<canvas [^>]*>", dom)
    out = []
    for tag in tags:
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        out.append(attrs)
    return out


def test_viewer_starts_with_no_console_message_and_no_network_request(report, tmp_path):
    page, _ = report
    assert (page.parent / NIIVUE_FILE).is_file()
    assert f'<script src="{NIIVUE_FILE}">' in page.read_text()
    dom, console = _open(tmp_path, page.as_uri() + "#case-case000", net_log="net.json")
    assert console == [], console
    assert re.search(r'<div class="nv-case" data-case="case-case000"[^>]*data-ready="1"', dom), "the viewer started"
    assert f"3D viewer: NiiVue {NIIVUE_VERSION}" in dom
    canvases = _canvases(dom)
    assert [c["data-method"] for c in canvases] == ["gxi", "gradientinput"]
    tiles = json.loads(canvases[0]["data-tiles"].replace("&quot;", '"'))
    assert sorted(t["type"] for t in tiles) == [0, 1, 2, 4]  # axial, coronal, sagittal and the 3D render
    assert _page_requests(tmp_path / "net.json") == []


def _page_requests(net_log) -> list[str]:
    """The URLs that a page asked the network stack for, from Chromium's net log: the requests with an initiator
    (a page's origin; a ``file://`` page's is ``null``). Chromium's own background requests (updates, time) have
    none ("not an origin"); ``file://`` loads do not go through the network stack."""
    log = json.loads(net_log.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    return [
        e["params"]["url"]
        for e in log["events"]
        if names.get(e["type"]) == "URL_REQUEST_START_JOB"
        and e.get("params", {}).get("initiator", "not an origin") != "not an origin"
    ]


def test_the_network_check_sees_a_page_request(tmp_path):
    page = tmp_path / "fetching.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    _open(tmp_path, page.as_uri(), net_log="net.json")
    assert _page_requests(tmp_path / "net.json") == ["http://127.0.0.1:9/x.png"]


def test_crosshair_moves_every_view_and_the_other_planes(report, tmp_path):
    page, maps = report
    url = page.as_uri() + "#case-case000"
    shape = maps["gxi"].shape  # (W, H, D), the source grid in MONAI order
    a, b = (shape[0] // 2, shape[1] // 2, 4), (shape[0] // 2 - 6, shape[1] // 2 + 5, shape[2] - 5)
    dom_a, console = _open(tmp_path, f"{url}/vox={','.join(map(str, a))}")
    assert console == []
    dom_b, _ = _open(tmp_path, f"{url}/vox={','.join(map(str, b))}")
    # the first viewer was moved; broadcastTo moved the second one with it
    for dom, where in ((dom_a, a), (dom_b, b)):
        assert [c["data-vox"] for c in _canvases(dom)] == [",".join(map(str, where))] * 2
    shots = {}
    for name, where in (("a", a), ("b", b)):
        _, console = _open(tmp_path, f"{url}/vox={','.join(map(str, where))}", screenshot=f"{name}.png")
        assert console == []
        shots[name] = _pixels(tmp_path / f"{name}.png")
    changed = np.abs(shots["a"] - shots["b"]).sum(axis=2) > 30
    assert changed.sum() > 5000, "another crosshair, other planes"


def test_screenshot_is_hot_where_the_map_is_hot(report, tmp_path):
    page, maps = report
    saliency = maps["gxi"]
    peak = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    base = page.as_uri() + f"#case-case000/view=axial/crosshair=0/vox={','.join(map(str, peak))}"
    dom, _ = _open(tmp_path, base + "/opacity=1")
    canvas = _canvases(dom)[0]
    left, top, ratio = (float(v) for v in canvas["data-rect"].split(","))
    tile = json.loads(canvas["data-tiles"].replace("&quot;", '"'))[0]
    assert tile["type"] == 0  # axial
    x0, y0, w, h = (int(round(v)) for v in (left + tile["ltwh"][0] / ratio, top + tile["ltwh"][1] / ratio,
                                             tile["ltwh"][2] / ratio, tile["ltwh"][3] / ratio))  # fmt: skip
    shots = {}
    for opacity in ("0", "1"):
        _, console = _open(tmp_path, f"{base}/opacity={opacity}", screenshot=f"o{opacity}.png")
        assert console == []
        shots[opacity] = _pixels(tmp_path / f"o{opacity}.png")[y0 : y0 + h, x0 : x0 + w]
    drawn = np.abs(shots["1"] - shots["0"]).sum(axis=2) > 60  # where the map's overlay is drawn
    # the map's axial slice through its maximum as NiiVue shows it: turned to RAS, patient's right to the
    # screen's right (neurological convention), anterior up; scaled to the tile
    image = nib.Nifti1Image(saliency.astype(np.float32), _affine(page))
    ras = nib.as_closest_canonical(image)
    k = int(
        np.round(nib.affines.apply_affine(np.linalg.inv(ras.affine), nib.affines.apply_affine(image.affine, peak)))[2]
    )
    shown = np.flipud(np.asarray(ras.dataobj)[:, :, k].T)
    rows = np.minimum((np.arange(h) + 0.5) * shown.shape[0] / h, shown.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * shown.shape[1] / w, shown.shape[1] - 1).astype(int)
    expected = shown[np.ix_(rows, cols)] >= 0.2  # the overlay's threshold
    assert expected.sum() > 50 and drawn.sum() > 50
    iou = (drawn & expected).sum() / (drawn | expected).sum()
    assert iou > 0.5, iou
    hot = shots["1"][drawn & expected]
    assert (hot[:, 0] > hot[:, 2]).mean() > 0.8, "inferno's hot end: red over blue"


def _affine(page) -> np.ndarray:
    """The case's affine, as the report's embedded image NIfTI holds it."""
    import base64
    import gzip

    text = page.read_text()
    data = re.search(r'class="nv-volume" data-name="image">([^<]+)<', text).group(1)
    return nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(data))).affine
