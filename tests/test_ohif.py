"""medhdm's DICOM objects in OHIF, the viewer radiologists use: the prebuilt viewer of ``@ohif/app`` (pinned,
cached by ``.ci/run``) served on loopback in front of the private Orthanc as its DICOMweb source, a LesionBench 2D
and 3D study with medhdm's SC, PM and SEG pushed by ``medhdm pacs explain``, each object opened in headless
Chromium (SwiftShader WebGL) the way a reader opens a series. From screenshots: the PM overlay is hot where the map
is hot and transparent where it is cold, the SEG covers the thresholded region and nothing far outside it, the SC
shows the burned-in map over the lesion; and the viewer logs no console error.

``MEDHDM_OHIF_SHOTS=docs/ohif`` also saves each screenshot's viewport there (the README's pictures)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ohif_helpers import PAGE_JS, Browser, ViewerServer, ohif_tarball, unpack_viewer
from pacs_helpers import bench_study, derived_series, start_orthanc
from scipy import ndimage
from test_report_browser import _chromium

from medhdm.cli import main

#: the SEG's threshold (``pacs explain`` writes ``map >= 0.5``)
THRESHOLD = 0.5


def _frames_world(ds: pydicom.Dataset) -> np.ndarray:
    """The patient coordinates (mm) of each frame's first pixel centre, from the per-frame functional groups."""
    return np.array(
        [
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
            for item in ds.PerFrameFunctionalGroupsSequence
        ]  # fmt: skip
    )


def _pixel_to_world(ds: pydicom.Dataset, frame: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = np.array([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]  # (between rows, between columns)
    origin = _frames_world(ds)[frame]
    return origin + np.outer(cols, orientation[:3]) * spacing[1] + np.outer(rows, orientation[3:]) * spacing[0]


def _source_instance(study: dict, world: np.ndarray) -> str:
    """The SOP Instance UID of the source slice through ``world``."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in study["files"]]
    normal = np.cross(*np.reshape([float(v) for v in headers[0].ImageOrientationPatient], (2, 3)))
    distance = [abs(np.dot(np.array([float(v) for v in h.ImagePositionPatient]) - world, normal)) for h in headers]
    return str(headers[int(np.argmin(distance))].SOPInstanceUID)


@pytest.fixture(scope="module")
def ohif(tmp_path_factory):
    """OHIF in front of a private Orthanc holding a 2D and a 3D LesionBench study with medhdm's SC, PM and SEG,
    and one headless Chromium for every case."""
    tarball = ohif_tarball()
    chromium = _chromium()
    root = tmp_path_factory.mktemp("ohif")
    dist = unpack_viewer(tarball)
    orthanc = start_orthanc(root / "orthanc")
    studies = {}
    try:
        for dims in (2, 3):
            study = bench_study(root / f"lb{dims}d", dims)
            orthanc.upload(study["files"])
            model = "default" if dims == 2 else "default3d"
            rc = main(["pacs", "explain", "--dicomweb", orthanc.dicomweb_url, "--study", study["study_uid"],
                       "--method", "gradientinput", "--model", model, "--intensity-range=-1000,0",
                       "--work", str(root / f"work{dims}"), "--push", "sc,pm,seg"])  # fmt: skip
            assert rc == 0
            studies[dims] = {**study, "derived": derived_series(orthanc, study["study_uid"])}
        with ViewerServer(dist, orthanc.http_url) as server:
            browser = Browser(chromium, root / "profile")
            shown = ["localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"]  # no onboarding tour
            browser.call("Page.addScriptToEvaluateOnNewDocument", source=shown[0] + PAGE_JS)
            try:
                yield {"browser": browser, "server": server, "studies": studies, "open": [None], "shots": root}
            finally:
                browser.close()
    finally:
        orthanc.stop()


def _open_study(ohif, dims: int) -> Browser:
    browser = ohif["browser"]
    if ohif["open"][0] != dims:
        study = ohif["studies"][dims]
        browser.goto(f"{ohif['server'].url}/viewer?StudyInstanceUIDs={study['study_uid']}")
        browser.wait_for("window.medhdm && medhdm.state() && medhdm.state().actors > 0", timeout=120)
        ohif["open"][0] = dims
    return browser


#: when each kind of object is on screen: SC a stack of its own images, PM a fused volume, SEG a labelmap
_READY = {
    "sc": "s.type === 'stack' && s.uids.includes('{uid}') && s.actors > 0",
    "pm": "s.type === 'orthographic' && s.actors > 1 && s.volumesLoaded",
    "seg": "s.type === 'stack' && s.segmentations > 0 && s.actors > 1",
}


def _show(ohif, dims: int, kind: str) -> tuple[Browser, pydicom.Dataset]:
    """The study in the viewer with its medhdm ``kind`` series loaded into the viewport (as a double click on the
    series' thumbnail does); the series' first dataset."""
    browser = _open_study(ohif, dims)
    series = ohif["studies"][dims]["derived"][kind]
    uid = series["series_uid"]
    assert browser.evaluate(f"medhdm.open('{uid}')"), f"OHIF lists no display set for the {kind} series"
    ready = _READY[kind].format(uid=uid)
    browser.wait_for(f"(() => {{ const s = medhdm.state(); return s && ({ready}); }})()", timeout=60)
    return browser, series["datasets"][0]


def _screen(browser: Browser, name: str, ohif) -> np.ndarray:
    from PIL import Image

    browser.evaluate("new Promise(r => setTimeout(r, 300))")  # the last frame drawn
    data = browser.screenshot(ohif["shots"] / f"{name}.png")
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if os.environ.get("MEDHDM_OHIF_SHOTS"):  # the viewport, small, for the documentation (docs/ohif/)
        rect = browser.evaluate("(() => { const r = medhdm.viewport().element.getBoundingClientRect();"
                                " return [r.left, r.top, r.right, r.bottom].map(Math.round); })()")  # fmt: skip
        crop = image.crop(rect)
        crop = crop.resize((crop.width // 2, crop.height // 2), Image.LANCZOS)
        crop.save(Path(os.environ["MEDHDM_OHIF_SHOTS"]) / f"ohif_{name}.png", optimize=True)
    return np.asarray(image, dtype=np.int16)


def _at(shot: np.ndarray, points) -> np.ndarray:
    xy = np.rint(np.asarray(points)).astype(int)
    return shot[xy[:, 1], xy[:, 0]]


def _colour(pixels: np.ndarray) -> np.ndarray:
    """How far each RGB pixel is from grey (the CT is drawn in grey levels)."""
    return pixels.max(axis=-1) - pixels.min(axis=-1)


def _map(pm: pydicom.Dataset) -> np.ndarray:
    values = pm.pixel_array.astype(np.float32)
    return values if values.ndim == 3 else values[None]


@pytest.fixture(autouse=True)
def _no_console_error(request):
    """Every OHIF case: nothing on the console (errors, uncaught exceptions) while it ran."""
    if "ohif" not in request.fixturenames:
        yield
        return
    ohif = request.getfixturevalue("ohif")
    before = len(ohif["browser"].console)
    yield
    assert ohif["browser"].console[before:] == [], ohif["browser"].console[before:]
    assert ohif["server"].errors == [], ohif["server"].errors


@pytest.mark.parametrize("dims", [2, 3])
def test_pm_overlay_is_hot_where_the_map_is_hot(ohif, dims):
    browser, pm = _show(ohif, dims, "pm")
    saliency = _map(pm)
    frame, row, col = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    assert saliency[frame, row, col] > 0.9
    # cold: pixels of the same frame whose map value is ~0, at least 10 pixels from any warm one
    warm = ndimage.binary_dilation(saliency[frame] > 0.05, iterations=10)
    cold_rc = np.argwhere(~warm)[:: max(1, int((~warm).sum()) // 400)]
    rows, cols = saliency.shape[1:]
    world = _pixel_to_world(pm, frame, np.r_[row, 0, rows - 1, cold_rc[:, 0]], np.r_[col, 0, cols - 1, cold_rc[:, 1]])
    browser.evaluate(f"medhdm.show({world[0].tolist()})")
    shot = _screen(browser, f"pm_{dims}d", ohif)
    screen = np.asarray(browser.evaluate(f"medhdm.toScreen({world.tolist()})"))
    # the colour map runs from blue (low) over green and yellow to red (high), blended over the grey CT
    heat = shot[..., 0] - shot[..., 1:].max(axis=-1)
    (left, top), (right, bottom) = np.rint(screen[1]).astype(int), np.rint(screen[2]).astype(int)
    assert right - left > 200 and bottom - top > 200, "the map's frame fills the viewport"
    y, x = np.unravel_index(int(np.argmax(heat[top:bottom, left:right])), (bottom - top, right - left))
    assert heat[top + y, left + x] > 40, "the overlay's hottest colour is red"
    at = np.rint([y * (rows - 1) / (bottom - top), x * (cols - 1) / (right - left)]).astype(int)
    assert saliency[frame][tuple(at)] > 0.8, f"the overlay is hottest where the map is {saliency[frame][tuple(at)]:.2f}"
    assert heat[int(round(screen[0, 1])), int(round(screen[0, 0]))] > 30, "and red at the map's peak"
    cold = _colour(_at(shot, screen[3:]))
    assert np.mean(cold < 25) > 0.95, "the overlay is transparent where the map is cold"


@pytest.mark.parametrize("dims", [2, 3])
def test_seg_covers_the_thresholded_region(ohif, dims):
    pm = ohif["studies"][dims]["derived"]["pm"]["datasets"][0]
    saliency = _map(pm)
    frame = int(np.argmax(saliency.reshape(len(saliency), -1).max(axis=1)))
    region = saliency[frame] >= THRESHOLD
    browser, seg = _show(ohif, dims, "seg")
    segmented = seg.pixel_array.reshape(-1, *region.shape)
    frames = [str(i.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
              for i in seg.PerFrameFunctionalGroupsSequence]  # fmt: skip
    source = _source_instance(ohif["studies"][dims], _pixel_to_world(pm, frame, np.r_[0], np.r_[0])[0])
    assert np.array_equal(segmented[frames.index(source)] > 0, region), "the SEG is the map thresholded"
    inside = np.argwhere(ndimage.binary_erosion(region))
    outside = np.argwhere(~ndimage.binary_dilation(region, iterations=3))
    outside = outside[:: max(1, len(outside) // 600)]
    browser.evaluate(f"medhdm.showInstance('{source}')")
    shot = _screen(browser, f"seg_{dims}d", ohif)
    points = np.vstack([inside, outside])[:, ::-1] + 0.5  # (x, y) = (column, row), pixel centres
    screen = np.asarray(browser.evaluate(f"medhdm.imageToScreen({points.tolist()})"))
    tinted = _colour(_at(shot, screen)) > 25
    assert len(inside) > 3
    assert tinted[: len(inside)].mean() > 0.95, "the SEG fills the region where the map is >= 0.5"
    assert tinted[len(inside) :].mean() < 0.02, "and nothing away from it"


@pytest.mark.parametrize("dims", [2, 3])
def test_sc_shows_the_map_burned_in_over_the_source(ohif, dims):
    pm = ohif["studies"][dims]["derived"]["pm"]["datasets"][0]
    saliency = _map(pm)
    frame, row, col = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    source = _source_instance(ohif["studies"][dims], _pixel_to_world(pm, frame, np.r_[0], np.r_[0])[0])
    browser, _ = _show(ohif, dims, "sc")
    (sc,) = [ds for ds in ohif["studies"][dims]["derived"]["sc"]["datasets"]
             if str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) == source]  # fmt: skip
    browser.evaluate(f"medhdm.showInstance('{sc.SOPInstanceUID}', true)")
    shot = _screen(browser, f"sc_{dims}d", ohif)
    scale = np.array([sc.Columns / saliency.shape[2], sc.Rows / saliency.shape[1]])
    hot = np.argwhere(ndimage.binary_erosion(saliency[frame] >= THRESHOLD))[:, ::-1]
    cold = np.argwhere(~ndimage.binary_dilation(saliency[frame] > 0.05, iterations=10))[::50][:, ::-1]
    points = (np.vstack([hot, cold]) + 0.5) * scale
    screen = np.asarray(browser.evaluate(f"medhdm.imageToScreen({points.tolist()})"))
    colour = _colour(_at(shot, screen))
    assert len(hot) > 3 and np.mean(colour[: len(hot)] > 35) > 0.9, "the SC is coloured where the map is hot"
    assert np.mean(colour[len(hot) :] < 25) > 0.95, "and grey where it is cold"
