"""The report's figures, as PNG bytes: overlays (case x method), deletion/insertion curves, box plots."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

from ..io.axes import monai_to_dicom

__all__ = ["boxplots_png", "curves_png", "overlay_grid_png"]


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
    return (monai_to_dicom(image[..., k]), monai_to_dicom(lesion[..., k]),
            {name: monai_to_dicom(v[..., k]) for name, v in maps.items()})


def overlay_grid_png(figures: dict, methods: Sequence[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = figures["cases"]
    fig, axes = plt.subplots(len(cases), len(methods) + 1, figsize=(2.2 * (len(methods) + 1), 2.2 * len(cases)),
                             squeeze=False)
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
    import matplotlib.pyplot as plt

    curves = figures["curves"]
    if not any(v["deletion"] for v in curves.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, mode in zip(axes, ("deletion", "insertion")):
        for name, by_mode in curves.items():
            if by_mode[mode]:
                mean = np.mean(by_mode[mode], axis=0)
                ax.plot(np.linspace(0, 1, len(mean)), mean, label=name)
        ax.set_xlabel(f"fraction of voxels {'removed' if mode == 'deletion' else 'inserted'} (most salient first)")
        ax.set_ylabel("class probability")
        ax.set_title(f"{mode} ({'lower' if mode == 'deletion' else 'higher'} is better)")
    axes[1].legend(fontsize=8)
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
