"""Where the lesion-hit count's peaks fall on LesionBench file cases: HDM's defaults and the map before the focus term.

    python benchmarks/hit_peaks_files.py --dims 2 --case case002 [--cases 24] [--seed 5150] [--threads 1]

Writes the LesionBench studies of ``quality_files.py`` (``--cases`` cases of ``--seed``, 1-3 lesions), explains the
one case ``--case`` through the same pipeline (MONAI loading, the invertible preprocessing, the maps on the source
grid) with HDM at its defaults and before the focus term (``HDM(**common.BEFORE_FOCUS)``), and prints per map its
lesions hit in that case, the peaks :func:`medhdm.metrics.hit_peaks` finds (the lesion count plus two, highest
first, each as a share of the map's maximum, with the lesion it lies in, 0 for none) and each lesion's size and
highest value. A diagnostic of single cases (issue 24's held-out losses); it writes nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from common import BEFORE_FOCUS
from scipy import ndimage

from medhdm import HDM
from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.evaluation.run import case_figure, evaluate_cases
from medhdm.io.manifest import load_manifest
from medhdm.metrics import hit_peaks, lesion_hit_rate
from medhdm.models import DEFAULT_2D, DEFAULT_3D, load_default_classifier
from medhdm.pipeline import InputSpec


def describe(name: str, saliency: np.ndarray, lesion: np.ndarray) -> None:
    labels, n = ndimage.label(lesion, structure=np.ones((3,) * lesion.ndim))
    top = saliency.max()
    print(f"{name}: lesions hit {lesion_hit_rate(saliency, lesion):.2f} of {n}")
    for rank, (value, position) in enumerate(hit_peaks(saliency)[: n + 2], start=1):
        kept = "kept" if rank <= n else "not kept"
        print(f"  peak {rank} ({kept}): {value / top:.3f} of the maximum at {position}, lesion {labels[position]}")
    for j in range(1, n + 1):
        inside = saliency[labels == j]
        print(f"  lesion {j}: {inside.size} voxels, highest {inside.max() / top:.3f} of the maximum")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--case", required=True, help="a case id, e.g. case002")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--seed", type=int, default=5150)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    model = load_default_classifier(DEFAULT_2D if args.dims == 2 else DEFAULT_3D)
    spec = InputSpec(tuple(model.medhdm_card["recipe"]["spatial_size"]), intensity_range=LESIONBENCH_INTENSITY_RANGE)
    methods = {"HDM defaults": HDM(model), "before the focus term": HDM(model, **BEFORE_FOCUS)}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_lesionbench(
            Path(tmp) / "cases", args.cases, args.dims, seed=args.seed, lesion_weights=(0.0, 1.0, 1.0, 1.0)
        )
        entries = {entry["id"]: entry for entry in load_manifest(manifest)}
        if args.case not in entries:
            parser.error(f"--case: no case {args.case!r}; expected one of {sorted(entries)}")
        entry = entries[args.case] | {"class_idx": 1}
        (case,) = evaluate_cases([entry], methods, spec, faithfulness=False)
        lesion = np.asarray(case_figure(entry, case["maps"], case["findings"])["lesion_array"]) > 0
    for name, saliency in case["maps"].items():
        describe(name, np.asarray(saliency, dtype=np.float64), lesion)


if __name__ == "__main__":
    main()
