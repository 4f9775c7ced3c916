"""Burning a saliency map into an 8-bit RGB picture of the source image.

The source is windowed to grayscale with the DICOM linear VOI function (PS3.3
C.11.2.1.2), the map is blended on top with a perceptually uniform colormap at a fixed
opacity wherever it reaches ``threshold`` (fully transparent below), an optional lesion
contour is drawn, and an optional colour bar with a label is burned into the lower
right corner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from ..io.dicom import first_number

__all__ = ["CT_PRESETS", "OverlayStyle", "Window", "apply_window", "render_overlay", "window_for"]

# Common CT windows (centre, width) in HU; "soft tissue" is the default for CT without window values.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


@dataclass(frozen=True)
class Window:
    """A linear VOI window; ``source`` says where it came from (for the derivation text)."""

    center: float
    width: float
    source: str


@dataclass(frozen=True)
class OverlayStyle:
    """How the map is drawn.

    Attributes:
        cmap: a matplotlib colormap name (perceptually uniform ones: inferno, magma, viridis).
        threshold: map values below it are not drawn (the map is in [0, 1]).
        alpha: opacity of the colour where the map is drawn.
        contour_rgb: colour of the lesion contour.
        legend: burn a colour bar (and the label, on images at least 96 px tall) into the
            lower right corner.
    """

    cmap: str = "inferno"
    threshold: float = 0.25
    alpha: float = 0.5
    contour_rgb: tuple[int, int, int] = (0, 255, 255)
    legend: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold: expected a value in [0, 1), got {self.threshold}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha: expected a value in (0, 1], got {self.alpha}")
        import matplotlib

        if self.cmap not in matplotlib.colormaps:
            raise ValueError(f"cmap: unknown matplotlib colormap {self.cmap!r}")


def window_for(ds: Dataset, pixels: np.ndarray, preset: str | None = None) -> Window:
    """The window to display ``pixels`` (modality units) of ``ds`` with.

    In order: a named CT preset if asked; the source's Window Center/Width (first pair);
    the soft-tissue preset for CT; the 1st-99th percentile of the pixels otherwise.
    """
    if preset is not None:
        if preset not in CT_PRESETS:
            raise ValueError(f"window preset: expected one of {sorted(CT_PRESETS)}, got {preset!r}")
        return Window(*CT_PRESETS[preset], source=f"preset {preset}")
    center, width = first_number(ds.get("WindowCenter")), first_number(ds.get("WindowWidth"))
    if center is not None and width is not None and width >= 1.0:
        return Window(center, width, source="source Window Center/Width")
    if str(ds.get("Modality", "")).upper() == "CT":
        return Window(*CT_PRESETS["soft_tissue"], source="CT soft-tissue preset")
    lo, hi = np.percentile(pixels, [1.0, 99.0])
    if hi <= lo:
        hi = lo + 1.0
    return Window(float((lo + hi) / 2), float(hi - lo + 1.0), source="1st-99th percentile of the pixels")


def apply_window(pixels: np.ndarray, window: Window, invert: bool = False) -> np.ndarray:
    """The DICOM linear window (PS3.3 C.11.2.1.2.1) onto 0..255, as uint8."""
    c, w = window.center, window.width
    scaled = ((np.asarray(pixels, dtype=np.float64) - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
    gray = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    return 255 - gray if invert else gray


def _colour_table(cmap: str) -> np.ndarray:
    import matplotlib

    return np.round(matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.float64)


def _text_patch(text: str, height_px: int, width_px: int) -> np.ndarray:
    """White text on transparent, as an ``(h, w)`` coverage array in [0, 1], rendered by matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100.0
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    fig.patch.set_alpha(0.0)
    fig.text(1.0, 0.5, text, ha="right", va="center", color="white", fontsize=height_px * 0.75 * 72.0 / dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())[:height_px, :width_px]
    return rgba[..., 3].astype(np.float64) / 255.0


def _burn_legend(rgb: np.ndarray, table: np.ndarray, threshold: float, label: str | None) -> None:
    h, w = rgb.shape[:2]
    bar_w = max(3, w // 40)
    bar_h = max(8, h // 4)
    margin = max(2, w // 64)
    y1, x1 = h - margin, w - margin
    y0, x0 = y1 - bar_h, x1 - bar_w
    values = np.linspace(1.0, threshold, bar_h)
    colours = table[np.round(values * 255).astype(int)]
    rgb[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = 255  # a one-pixel white frame
    rgb[y0:y1, x0:x1] = np.round(colours[:, None, :]).astype(np.uint8)
    if label and h >= 96:
        text_h = max(8, h // 24)
        text_w = min(w - 2 * margin - bar_w - 4, text_h * len(label))
        if text_w > text_h:
            cover = _text_patch(label, text_h, text_w)[..., None]
            ty0, tx0 = y1 - text_h, x0 - 3 - text_w
            region = rgb[ty0 : ty0 + text_h, tx0 : tx0 + text_w].astype(np.float64)
            rgb[ty0 : ty0 + text_h, tx0 : tx0 + text_w] = np.round(region * (1 - cover) + 255.0 * cover).astype(
                np.uint8
            )


def render_overlay(
    gray: np.ndarray,
    saliency: np.ndarray,
    style: OverlayStyle = OverlayStyle(),
    lesion_mask: np.ndarray | None = None,
    label: str | None = None,
) -> np.ndarray:
    """Blend ``saliency`` onto the windowed image.

    Args:
        gray: ``(H, W)`` uint8 windowed image.
        saliency: ``(H, W)`` map in [0, 1] (NaN is an error).
        style: colours, threshold, opacity, legend.
        lesion_mask: optional ``(H, W)`` boolean lesion annotation; its outline is drawn.
        label: text burned next to the colour bar (method and class, for example).

    Returns:
        ``(H, W, 3)`` uint8 RGB. Where ``saliency < style.threshold`` (and away from the
        contour and legend) every channel equals ``gray``; elsewhere the pixel is
        ``(1 - alpha) * gray + alpha * colormap(saliency)``, rounded.
    """
    gray = np.asarray(gray)
    saliency = np.asarray(saliency, dtype=np.float64)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"gray: expected an (H, W) uint8 image, got {gray.dtype} of shape {gray.shape}")
    if saliency.shape != gray.shape:
        raise ValueError(f"saliency: shape {saliency.shape} does not match the image's {gray.shape}")
    if not np.isfinite(saliency).all():
        raise ValueError("saliency: contains NaN or infinite values")
    if saliency.min() < -1e-6 or saliency.max() > 1 + 1e-6:
        raise ValueError(f"saliency: expected values in [0, 1], got [{saliency.min():.4g}, {saliency.max():.4g}]")
    table = _colour_table(style.cmap)
    base = np.repeat(gray[..., None].astype(np.float64), 3, axis=-1)
    colour = table[np.clip(np.round(saliency * 255), 0, 255).astype(int)]
    shown = (saliency >= style.threshold)[..., None]
    blended = np.where(shown, (1.0 - style.alpha) * base + style.alpha * colour, base)
    rgb = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    if lesion_mask is not None:
        mask = np.asarray(lesion_mask, dtype=bool)
        if mask.shape != gray.shape:
            raise ValueError(f"lesion_mask: shape {mask.shape} does not match the image's {gray.shape}")
        outline = mask & ~ndimage.binary_erosion(mask, border_value=0)
        rgb[outline] = style.contour_rgb
    if style.legend:
        _burn_legend(rgb, table, style.threshold, label)
    return rgb
