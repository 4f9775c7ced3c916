"""Overlays of HDM's map before and after the focus term (issue 24): 2D, 3D axial, 3D coronal.

    python benchmarks/focus_overlays.py [--seed 4242] [--case 1] [--threads 1]

One held-out case per dimension (seed 4242, case 1: two lesions), the shipped 2D and 3D DenseNets,
class "lesion". Panels: the image with the lesions' outline, Gradient x Input, HDM's map before the
focus term (``common.BEFORE_FOCUS``, :func:`hdm_focus.before_focus_map` of the same call) and HDM's defaults, each
map on the same colour scale [0, 1]; in 3D the axial slice (D) and the coronal slice (H) through the
largest lesion's centre. Writes ``benchmarks/results/focus_overlay_2d.png``,
``focus_overlay_3d_axial.png`` and ``focus_overlay_3d_coronal.png``.
"""

from __future__ import annotations

import argparse
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import RESULTS, held_out_cases  # noqa: E402
from hdm_focus import before_focus_map  # noqa: E402
from scipy import ndimage  # noqa: E402

from medhdm import HDM, GradientInput  # noqa: E402
from medhdm.metrics import energy_in_lesion  # noqa: E402
from medhdm.models import DEFAULT_3D, load_default_classifier  # noqa: E402


def maps_of(model, x):
    """The image's maps: Gradient x Input, HDM before the focus term, HDM's defaults (each ``(*S)``)."""
    hdm = HDM(model).explain(x, 1)
    return {
        "Gradient x Input": GradientInput(model).explain(x, 1).saliency[0, 0].numpy(),
        "HDM before (focus 0, contrast 1)": before_focus_map(hdm)[0, 0].numpy(),
        "HDM defaults (focused)": hdm.saliency[0, 0].numpy(),
    }


def panel_row(image, lesion, maps, title: str, path) -> None:
    """One figure: the image with the lesion outline, then each map over the image."""
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(3.2 * (1 + len(maps)), 3.8))
    fig.suptitle(title, fontsize=9)
    axes[0].imshow(image, cmap="gray")
    axes[0].contour(lesion, levels=[0.5], colors="lime", linewidths=0.8)
    axes[0].set_title("image, lesions outlined", fontsize=8)
    for ax, (name, m) in zip(axes[1:], maps.items()):
        ax.imshow(image, cmap="gray")
        ax.imshow(m, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
        ax.contour(lesion, levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_title(name, fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--case", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for dims in (2, 3):
        model = load_default_classifier() if dims == 2 else load_default_classifier(DEFAULT_3D)
        size = tuple(model.medhdm_card["recipe"]["spatial_size"])
        x, lesions, _ = held_out_cases(args.case + 1, size=size, seed=args.seed)
        x, lesion = x[args.case : args.case + 1], lesions[args.case, 0].numpy() > 0
        maps = maps_of(model, x)
        energy = ", ".join(f"{k.split(' (')[0]} {energy_in_lesion(m, lesion):.2f}" for k, m in maps.items())
        title = f"seed {args.seed}, case {args.case}; energy in lesion: {energy}"
        print(title)
        image = x[0, 0].numpy()
        if dims == 2:
            panel_row(image, lesion, maps, f"2D, {title}", RESULTS / "focus_overlay_2d.png")
            continue
        labels, n = ndimage.label(lesion)
        largest = 1 + int(np.argmax(ndimage.sum(lesion, labels, range(1, n + 1))))
        centre = [int(round(c)) for c in ndimage.center_of_mass(labels == largest)]
        for axis, view in ((0, "axial"), (1, "coronal")):
            cut = [slice(None)] * 3
            cut[axis] = centre[axis]
            sliced = {k: m[tuple(cut)] for k, m in maps.items()}
            label = f"3D {view} slice {centre[axis]}, {title}"
            panel_row(image[tuple(cut)], lesion[tuple(cut)], sliced, label, RESULTS / f"focus_overlay_3d_{view}.png")


if __name__ == "__main__":
    main()
