"""The report's figures, as PNG bytes: overlays (case x method), deletion/insertion curves, box plots,
and the frames of the report's case viewer (:func:`case_frames`: every slice, every method)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

from ..io.axes import monai_to_dicom

__all__ = [
    "FINDING_RGB",
    "boxplots_png",
    "case_frames",
    "curves_png",
    "default_slice",
    "finding_slice",
    "froc_png",
    "overlay_grid_png",
]

#: the case viewer's frames are at most this many pixels on a side (larger images are subsampled)
MAX_FRAME_SIDE = 256
#: the map is drawn where it reaches this value, at this opacity, as in the overlay grid
MAP_THRESHOLD, MAP_ALPHA = 0.2, 0.6
_LESION_RGB = (0, 255, 255)
#: the findings' outlines and numbers on the case viewer's frames
FINDING_RGB = (0, 255, 0)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _display_slice(image: np.ndarray, lesion: np.ndarray, maps: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """2D: the arrays as (rows, columns); 3D: the slice with the most lesion (or the first map's maximum)."""
    if image.ndim == 2:
        return monai_to_dicom(image), monai_to_dicom(lesion), {k: monai_to_dicom(v) for k, v in maps.items()}
    area = (lesion > 0).sum(axis=(0, 1))
    if area.max() > 0:
        k = int(area.argmax())
    else:
        first = next(iter(maps.values()))
        k = int(np.unravel_index(first.argmax(), first.shape)[2])
    return (
        monai_to_dicom(image[..., k]),
        monai_to_dicom(lesion[..., k]),
        {name: monai_to_dicom(v[..., k]) for name, v in maps.items()},
    )


def overlay_grid_png(figures: dict, methods: Sequence[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = figures["cases"]
    fig, axes = plt.subplots(
        len(cases), len(methods) + 1, figsize=(2.2 * (len(methods) + 1), 2.2 * len(cases)), squeeze=False
    )
    for r, case in enumerate(cases):
        image, lesion, maps = _display_slice(case["image"], case["lesion_array"], case["maps"])
        lo, hi = np.percentile(image, [1, 99.5])
        for c, title in enumerate(["image", *methods]):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
            if c > 0:
                ax.imshow(np.ma.masked_less(maps[title], 0.2), cmap="inferno", vmin=0, vmax=1, alpha=0.6)
            if lesion.any():
                ax.contour(lesion > 0, levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(case["id"], fontsize=8)
    return _png(fig)


def curves_png(figures: dict) -> bytes | None:
    """The mean deletion and insertion curves per method over a log axis of the share of voxels changed.

    ``figures["curves"][method][mode]``: the cases' curves ``(F,)``, sampled at ``figures["fractions"]``
    ``(F,)`` (0 first; equal shares where the figures have none); drawn from the first non-zero share
    (share 0, the unchanged image or the reference, has no place on a log axis)."""
    import matplotlib.pyplot as plt

    curves = figures["curves"]
    if not any(v["deletion"] for v in curves.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, mode in zip(axes, ("deletion", "insertion")):
        for name, by_mode in curves.items():
            if by_mode[mode]:
                mean = np.mean(by_mode[mode], axis=0)
                fractions = np.asarray(figures.get("fractions") or np.linspace(0, 1, len(mean)), dtype=np.float64)
                ax.plot(fractions[1:], mean[1:], label=name)
        ax.set_xscale("log")
        ax.set_xlabel(f"share of voxels {'removed' if mode == 'deletion' else 'inserted'} (most salient first)")
        ax.set_ylabel("class probability")
        ax.set_title(f"{mode} ({'lower' if mode == 'deletion' else 'higher'} is better)")
    axes[1].legend(fontsize=8)
    return _png(fig)


def froc_png(curves: dict[str, dict]) -> bytes | None:
    """The FROC of each method (:func:`medhdm.evaluation.froc_curves`): lesions found against false findings
    per image, log axis over the CPM's rates (1/8 to 8); None without findings."""
    import matplotlib.pyplot as plt

    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in curves.items():
        fp = np.maximum(np.asarray(curve["curve_fp"], dtype=np.float64), 1 / 16)
        ax.step(fp, curve["curve_sensitivity"], where="post", label=f"{name} (CPM {curve['cpm']:.2f})")
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 16, 8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false findings per image")
    ax.set_ylabel("share of lesions found")
    ax.legend(fontsize=8)
    return _png(fig)


def boxplots_png(rows: Sequence[dict], methods: Sequence[str], metrics: Sequence[str]) -> bytes:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        data = [[r[metric] for r in rows if r["method"] == m and not math.isnan(r[metric])] for m in methods]
        ax.boxplot(data, tick_labels=list(methods))
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    fig.tight_layout()
    return _png(fig)


def default_slice(lesion: np.ndarray, maps: dict) -> int:
    """The slice a viewer opens on: the one with the most lesion, else the first map's maximum (0 for 2D)."""
    if lesion.ndim == 2:
        return 0
    area = (lesion > 0).sum(axis=(0, 1))
    if area.max() > 0:
        return int(area.argmax())
    if maps:
        first = next(iter(maps.values()))
        return int(np.unravel_index(first.argmax(), first.shape)[2])
    return lesion.shape[2] // 2


def _encode(rgb: np.ndarray) -> bytes:
    """A small PNG: the frame reduced to a 128-colour palette (a few kB for 96 x 96)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        buffer, format="PNG", optimize=True
    )
    return buffer.getvalue()


def finding_slice(finding: dict) -> int:
    """The slice (0-based, a volume's third axis in MONAI order) a finding is shown on: its peak's (0 in 2D)."""
    peak = finding["peak"]
    return int(peak[2]) if len(peak) > 2 else 0


def _draw_findings(rgb: np.ndarray, findings: Sequence[dict], step: int) -> None:
    """Outline each finding's region (in-plane, ``FINDING_RGB``) on the frames ``rgb`` ``(D, rows, columns, 3)``
    and write its number (rank, from 1) beside it on each slice it reaches; a finding without its region: a
    cross at its centroid on its slice."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    plane = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool)
    labels: dict[int, list] = {}
    for number, finding in enumerate(findings, start=1):
        region = finding.get("region")
        mask = None
        if region is not None:
            mask = np.transpose(region if region.ndim == 3 else region[..., None], (2, 1, 0))[:, ::step, ::step] > 0
        if mask is None or mask.shape != rgb.shape[:3]:  # not known (or not on this grid): a cross
            column, row = (int(round(v / step)) for v in finding["centroid"][:2])
            k = finding_slice(finding)
            rgb[k, max(row - 2, 0) : row + 3, column] = FINDING_RGB
            rgb[k, row, max(column - 2, 0) : column + 3] = FINDING_RGB
            labels.setdefault(k, []).append((number, row, column + 3))
            continue
        rgb[mask & ~ndimage.binary_erosion(mask, structure=plane)] = FINDING_RGB
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            rows, columns = np.nonzero(mask[k])
            labels.setdefault(int(k), []).append((number, int(rows.min()), int(columns.max()) + 2))
    for k, texts in labels.items():
        picture = Image.fromarray(rgb[k])
        draw = ImageDraw.Draw(picture)
        for number, row, column in texts:
            draw.text((min(column, rgb.shape[2] - 7), max(row - 4, 0)), str(number), fill=FINDING_RGB)
        rgb[k] = np.asarray(picture)


def case_frames(
    image: np.ndarray, lesion: np.ndarray, maps: dict, methods: Sequence[str], findings: dict | None = None
) -> dict[str, list[bytes]]:
    """PNG frames of one case for the report's viewer: ``{"image" or method: [one PNG per slice]}``.

    ``image``, ``lesion`` and the ``maps`` are on the source grid in MONAI order (``(W, H)`` or
    ``(W, H, D)``); each frame shows slice ``k`` as rows x columns, the image windowed at its
    1st-99.5th percentiles (over the whole volume), the method's map in ``inferno`` where it
    reaches ``MAP_THRESHOLD``, the lesion outline in cyan and the method's ``findings`` (records with
    ``"region"``, :func:`medhdm.evaluation.case_figure`) outlined in green and numbered by rank. Batched over
    slices (no loop over pixels); frames larger than ``MAX_FRAME_SIDE`` are subsampled.
    """
    import matplotlib
    from scipy import ndimage

    volume = image if image.ndim == 3 else image[..., None]
    labels = (lesion if lesion.ndim == 3 else lesion[..., None]) > 0
    view = np.transpose(volume, (2, 1, 0)).astype(np.float64)  # (D, rows, columns)
    mask = np.transpose(labels, (2, 1, 0))
    step = max(1, int(np.ceil(max(view.shape[1:]) / MAX_FRAME_SIDE)))
    view, mask = view[:, ::step, ::step], mask[:, ::step, ::step]
    lo, hi = np.percentile(view, [1, 99.5])
    gray = np.clip((view - lo) / max(hi - lo, 1e-12), 0, 1)[..., None] * np.ones(3)
    # the outline: lesion voxels with a neighbour outside, in-plane only
    outline = mask & ~ndimage.binary_erosion(mask, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool))
    cmap = matplotlib.colormaps["inferno"]
    frames: dict[str, list[bytes]] = {}
    for name in ["image", *methods]:
        rgb = gray.copy()
        if name != "image":
            saliency = maps[name] if maps[name].ndim == 3 else maps[name][..., None]
            saliency = np.transpose(saliency, (2, 1, 0))[:, ::step, ::step]
            shown = (saliency >= MAP_THRESHOLD)[..., None]
            coloured = cmap(np.clip(saliency, 0, 1))[..., :3]
            rgb = np.where(shown, (1 - MAP_ALPHA) * rgb + MAP_ALPHA * coloured, rgb)
        rgb = (rgb * 255).round().astype(np.uint8)
        rgb[outline] = _LESION_RGB
        if name != "image" and (findings or {}).get(name):
            _draw_findings(rgb, findings[name], step)
        frames[name] = [_encode(rgb[k]) for k in range(rgb.shape[0])]
    return frames
