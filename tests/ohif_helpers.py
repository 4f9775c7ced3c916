"""What the OHIF test needs: the prebuilt viewer of the npm package ``@ohif/app`` (pinned, from a cache that
``.ci/run`` fills with ``npm pack``), a loopback server that serves it and forwards ``/dicom-web`` to the private
Orthanc (one origin, so no CORS), and headless Chromium driven through the DevTools protocol over a pipe."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from test_report_browser import HEADLESS_FLAGS

#: the pinned viewer; ``.ci/run`` runs ``npm pack @ohif/app@OHIF_VERSION --pack-destination OHIF_CACHE``
OHIF_VERSION = "3.13.2"
OHIF_CACHE = Path(os.environ.get("MEDHDM_OHIF_CACHE", Path.home() / ".cache" / "medhdm" / "ohif"))
REQUIRE = os.environ.get("MEDHDM_REQUIRE_VALIDATORS") == "1"


def ohif_tarball() -> Path:
    """The cached ``ohif-app-<version>.tgz``; fetched with ``npm pack`` when missing and npm can reach the registry.
    Missing: skip, or fail in CI (``MEDHDM_REQUIRE_VALIDATORS=1``)."""
    path = OHIF_CACHE / f"ohif-app-{OHIF_VERSION}.tgz"
    if not path.is_file() and shutil.which("npm"):
        OHIF_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "pack", "--fetch-retries=1", f"@ohif/app@{OHIF_VERSION}", "--pack-destination", str(OHIF_CACHE)],
            capture_output=True,
            timeout=300,
            check=False,
        )
    if not path.is_file():
        why = f"OHIF viewer not cached ({path}; npm pack @ohif/app@{OHIF_VERSION} --pack-destination {OHIF_CACHE})"
        if REQUIRE:
            pytest.fail(f"{why}; required (MEDHDM_REQUIRE_VALIDATORS=1)")
        pytest.skip(why)
    return path


#: what the viewer does not need here (onnx runtime for AI tools, the microscopy viewer, source maps)
_SKIP = ("package/dist/ort/", "package/dist/dicom-microscopy-viewer/")


def unpack_viewer(tarball: Path) -> Path:
    """The package's ``dist`` folder, unpacked once beside the tarball (``dist-<version>``)."""
    dist = tarball.parent / f"dist-{OHIF_VERSION}"
    if (dist / "index.html").is_file():
        return dist
    staging = Path(tempfile.mkdtemp(dir=tarball.parent, prefix=".unpack-"))
    with tarfile.open(tarball) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith("package/dist/") and not m.name.startswith(_SKIP) and not m.name.endswith(".map")
        ]
        tar.extractall(staging, members=members, filter="data")
    try:
        (staging / "package" / "dist").rename(dist)
    except OSError:  # another run unpacked it meanwhile
        pass
    shutil.rmtree(staging, ignore_errors=True)
    return dist


def app_config() -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source at this origin's ``/dicom-web`` (the forwarded Orthanc),
    SEGs and PMs loaded without the "open this segmentation?" prompt, no study list or service worker."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "private Orthanc",
            "name": "orthanc",
            "qidoRoot": "/dicom-web",
            "wadoRoot": "/dicom-web",
            "wadoUriRoot": "/wado",
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": False,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "disableConfirmationPrompts": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
        "investigationalUseDialog": {"option": "never"},
    }
    # a failed image load goes to the console (the test fails on it), with what failed
    handler = (
        "window.config.httpErrorHandler = error => console.error('image load failed:', "
        "String(error && (error.stack || error.message || error.status || error)));"
    )
    return f"window.config = {json.dumps(config, indent=2)};\n{handler}\n"


_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".wasm": "application/wasm",
    ".html": "text/html",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
}


class ViewerServer:
    """OHIF's static files and ``app-config.js`` on ``http://127.0.0.1:<port>``; ``/dicom-web/*`` and ``/wado``
    forwarded to Orthanc. Cross-origin isolated (COOP/COEP), as OHIF's SharedArrayBuffer paths want."""

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        self.dist, self.orthanc_url, self.errors = dist, orthanc_url.rstrip("/"), []
        handler = self._handler()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ViewerServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        outer = self
        session = requests.Session()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 (http.server's name)
                path = self.path.split("?")[0]
                if path.startswith(("/dicom-web/", "/wado")):
                    return self._forward()
                if path == "/app-config.js":
                    return self._send(200, app_config().encode(), "text/javascript")
                file = (outer.dist / path.lstrip("/")).resolve()
                if not file.is_file() or outer.dist.resolve() not in file.parents:
                    file = outer.dist / "index.html"  # the single-page app's routes
                self._send(200, file.read_bytes(), _TYPES.get(file.suffix, "application/octet-stream"))

            def _forward(self):
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
                answer = session.get(outer.orthanc_url + self.path, headers=headers, timeout=60)
                if answer.status_code >= 400:
                    outer.errors.append(f"{answer.status_code} {self.path}")
                self._send(answer.status_code, answer.content, answer.headers.get("Content-Type", ""))

            def _send(self, status: int, body: bytes, kind: str):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
                self.send_header("Cross-Origin-Resource-Policy", "same-origin")
                self.end_headers()
                self.wfile.write(body)

        return Handler


class Browser:
    """Headless Chromium (SwiftShader WebGL) driven through the DevTools protocol on ``--remote-debugging-pipe``.

    ``console`` collects the page's console errors and warnings and its uncaught exceptions."""

    def __init__(self, chromium: str, profile: Path, size: tuple[int, int] = (1280, 800)) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def pipes() -> None:  # the browser reads commands on fd 3 and answers on fd 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self._process = subprocess.Popen(
            [
                chromium,
                *HEADLESS_FLAGS,
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
                "--hide-scrollbars",
                "--mute-audio",
                "about:blank",
            ],  # fmt: skip
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=pipes,  # noqa: PLW1509 (dup2 only)
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next, self._answers, self._lock = 0, {}, threading.Lock()
        self._events: queue.Queue = queue.Queue()
        self.console: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t["targetId"] for t in targets if t["type"] == "page")
        self._session = self.send("Target.attachToTarget", targetId=page, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_chrome, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        self._answers[message["id"]] = message
                else:
                    self._on_event(message)

    def _on_event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.console.append(f"exception: {details.get('exception', {}).get('description', details['text'])}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.console.append(f"log {entry['source']}: {entry['text']} {entry.get('url', '')}")

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        with self._lock:
            self._next += 1
            ident = self._next
        message = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                answer = self._answers.pop(ident, None)
            if answer is not None:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            time.sleep(0.02)
        raise TimeoutError(f"{method}: no answer in {timeout} s")

    def call(self, method: str, **params) -> dict:
        """A command to the page."""
        return self.send(method, session=self._session, **params)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 90, every: float = 0.5):
        """Polls ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(every)
        raise TimeoutError(f"not true after {timeout} s: {expression}")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def screenshot(self, path: Path | None = None) -> bytes:
        import base64

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        if path is not None:
            path.write_bytes(data)
        return data

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._to_chrome)


#: page-side helpers: the active viewport, what it shows, and moving it to the slice through a world point
PAGE_JS = r"""
// notifications (sonner toasts, e.g. "values multiplied by 100") would cover the image in screenshots
document.addEventListener('DOMContentLoaded', () => {
  const style = document.createElement('style');
  style.textContent = '[data-sonner-toaster] { display: none !important; }';
  document.head.appendChild(style);
});
window.medhdm = {
  viewport() {
    const services = window.services;
    if (!services || !window.cornerstone) return null;
    let id = null;
    try { id = services.viewportGridService.getActiveViewportId(); } catch (e) { return null; }  // still starting
    return id ? services.cornerstoneViewportService.getCornerstoneViewport(id) : null;
  },
  state() {
    const vp = this.viewport();
    if (!vp) return null;
    const cs = window.cornerstone, tools = window.cornerstoneTools;
    const volumes = cs.cache.getVolumes ? cs.cache.getVolumes() : [];
    const reps = tools.segmentation.state.getSegmentationRepresentations(vp.id) || [];
    const uids = (vp.getImageIds ? vp.getImageIds() : []).join(' ');
    return {type: vp.type, uids, actors: vp.getActors().length,
            imageId: vp.getCurrentImageId ? vp.getCurrentImageId() : null,
            volumesLoaded: volumes.every(v => !v.loadStatus || v.loadStatus.loaded),
            segmentations: reps.length};
  },
  async open(seriesUid) {
    const services = window.services;
    const ds = services.displaySetService.getActiveDisplaySets().find(d => d.SeriesInstanceUID === seriesUid);
    if (!ds) return false;
    services.viewportGridService.setDisplaySetsForViewport({
      viewportId: services.viewportGridService.getActiveViewportId(),
      displaySetInstanceUIDs: [ds.displaySetInstanceUID],
    });
    return ds.Modality;
  },
  async show(world) {
    const vp = this.viewport(), cs = window.cornerstone;
    if (vp.type === 'stack') {
      const cam = vp.getCamera(), n = cam.viewPlaneNormal;
      const along = id => { const p = cs.metaData.get('imagePlaneModule', id).imagePositionPatient;
                            return Math.abs((p[0]-world[0])*n[0] + (p[1]-world[1])*n[1] + (p[2]-world[2])*n[2]); };
      const ids = vp.getImageIds();
      let best = 0;
      ids.forEach((id, i) => { if (along(id) < along(ids[best])) best = i; });
      await vp.setImageIdIndex(best);
    } else {
      const cam = vp.getCamera(), n = cam.viewPlaneNormal, f = cam.focalPoint, p = cam.position;
      const d = (world[0]-f[0])*n[0] + (world[1]-f[1])*n[1] + (world[2]-f[2])*n[2];
      vp.setCamera({focalPoint: f.map((v, i) => v + d*n[i]), position: p.map((v, i) => v + d*n[i])});
    }
    vp.render();
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    return true;
  },
  async showInstance(sopUid, reset = false) {
    const vp = this.viewport();
    const index = vp.getImageIds().findIndex(id => id.includes(`/instances/${sopUid}/`));
    if (index < 0) throw new Error(`no image of instance ${sopUid} in the viewport`);
    await vp.setImageIdIndex(index);
    if (reset) vp.resetProperties();  // the image's own presentation, not the window of what the viewport showed before
    vp.render();
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    return index;
  },
  imageToScreen(points) {
    const vp = this.viewport(), cs = window.cornerstone, id = vp.getCurrentImageId();
    return this.toScreen(points.map(p => cs.utilities.imageToWorldCoords(id, p)));
  },
  toScreen(points) {
    const vp = this.viewport(), rect = vp.canvas.getBoundingClientRect();
    return points.map(w => { const c = vp.worldToCanvas(w); return [rect.left + c[0], rect.top + c[1]]; });
  },
};
"""
