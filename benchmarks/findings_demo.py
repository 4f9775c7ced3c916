"""The findings of one demo case: a LesionBench 2D study (two lesions) explained by HDM through the file pipeline.

    python benchmarks/findings_demo.py [--seed 78] [--method HDM]

Writes ``benchmarks/results/findings_demo.png`` (the image, the lesions' outlines in cyan, each
finding's region outlined and numbered by rank) and ``benchmarks/results/findings_demo.json``
(the findings as ``<case>_findings.csv`` lists them), from which ``tables.py`` writes the README's table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from common import RESULTS, write_json

from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.explain.registry import make_explainer
from medhdm.io.atomic import atomic_write
from medhdm.models import DEFAULT_2D, load_default_classifier
from medhdm.pipeline import InputSpec, explain_images, finding_position_mm


def picture(image: np.ndarray, lesion: np.ndarray, findings) -> bytes:
    """The image (rows down, as a DICOM viewer shows it) with lesion and finding outlines, as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(image.T, cmap="gray")  # the source array is (column, row): transposed to rows down
    ax.contour(lesion.T, levels=[0.5], colors="cyan", linewidths=1)
    for rank, f in enumerate(findings, start=1):
        ax.contour(f.region.T.astype(float), levels=[0.5], colors="orange", linewidths=1.5)
        ax.text(f.centroid[0], f.centroid[1], str(rank), color="yellow", fontsize=12, ha="center", va="center")
    ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=78)
    parser.add_argument("--method", default="HDM")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    model = load_default_classifier(DEFAULT_2D)
    spec = InputSpec(tuple(model.medhdm_card["recipe"]["spatial_size"]), intensity_range=LESIONBENCH_INTENSITY_RANGE)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_lesionbench(root, 1, 2, seed=args.seed, lesion_weights=(0.0, 0.0, 1.0, 0.0))
        entry = json.loads(manifest.read_text())["testing"][0]
        lesion = nib.load(root / entry["lesion"]).get_fdata()[..., 0]
        (result,) = explain_images([root / entry["image"]], make_explainer(args.method, model), spec, [1])
    rows = [
        {
            "rank": rank,
            "stage": f.stage,
            "centroid_voxel": [round(v, 1) for v in f.centroid],
            "centroid_ras_mm": [round(v, 1) for v in finding_position_mm(f, result.affine)],
            "size": round(f.size_mm),
            "size_unit": f.size_unit,
            "evidence": round(f.evidence, 2),
            "share": round(f.share, 2),
            "in_lesion": int(lesion[f.peak]),
        }
        for rank, f in enumerate(result.findings, start=1)
    ]
    for row in rows:
        print(row)
    atomic_write(RESULTS / "findings_demo.png", picture(result.image, lesion, result.findings))
    write_json(
        RESULTS / "findings_demo.json",
        {"seed": args.seed, "method": args.method, "p_lesion": round(result.score, 3), "findings": rows},
    )


if __name__ == "__main__":
    main()
