"""Explaining the shipped segmenters on the cue task: where each method's map lies, and the sanity check.

    python benchmarks/segmentation.py [--cases 6] [--volumes 4] [--threads 1] [--sanity-cases 3] [--dims 2d,3d]

The shipped UNets (``lesion_unet2d``, ``lesion_unet3d``) mark a lesion only when a cue marker
is present near it (:func:`medhdm.data.make_cue_case`). On held-out cue cases (seed 9090, the
cue present, the model marking the lesion) each method explains the model's predicted mask
(``region="predicted"``, class 1) at its default settings, and the script reports per method:

- ``cue_share``: the share of the map's total on the cue marker (the evidence the decision
  depends on, known by construction), beside ``cue_area``, the marker's share of the image;
- ``target_share``: the share of the map on the lesion (its annotation);
- ``HDM_fine``: HDM on finer grids (:func:`segmentation_methods`) beside its defaults; on the
  16 x 32 x 32 volumes the defaults take these grids too (the ladder moved an octave finer, see
  :meth:`medhdm.HDM.grid_shapes`), and ``HDM_clipped`` (3D only) gives the grids the defaults had
  before (2 x 2 x 2 and 2 x 4 x 4, then 4 x 8 x 8 and 8 x 16 x 16);
- ``images``: the images the model saw per explanation (counted by a hook on the model, so
  MONAI's internal batches count too);
- ``sanity``: :func:`medhdm.metrics.sanity_check` with the region fixed to the trained model's
  predicted mask (mean Spearman correlation between the maps of the trained and of a
  weight-randomised model, within bands of equal distance from the region,
  :func:`medhdm.metrics.banded_spearman`; near 0 passes, HDM must stay below 0.2) on the first
  ``--sanity-cases`` cases; ``sanity_whole_image``, the same maps compared over the whole image
  (Adebayo et al.'s reading, where any faithful map of a segmenter correlates through its
  proximity to the region).

Writes ``benchmarks/results/segmentation.json`` (with ``--dims``, only those entries replaced).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from common import RESULTS, default_methods, write_json

from medhdm import HDM
from medhdm.data import make_cue_dataset, stack_cases
from medhdm.metrics import map_correlations, sanity_maps
from medhdm.models import SEGMENTER_2D, SEGMENTER_3D, load_default_classifier

CUE_SEED = 9090  # disjoint from the segmenters' training (5000, 7000) and held-out (6000, 8000) seeds


def cue_cases(model, n: int):
    """``n`` held-out cases with the cue whose lesion the model marks: images, lesion masks, cue masks."""
    size = tuple(model.medhdm_card["recipe"]["spatial_size"])
    cases = [c for c in make_cue_dataset(CUE_SEED, 4 * n, size) if c.label == 1]
    x, lesions, _ = stack_cases(cases)
    cues = torch.from_numpy(np.stack([c.cue for c in cases]))
    with torch.no_grad():
        marked = model(x) > 0
    keep = (marked & (lesions > 0)).flatten(1).any(1).nonzero().flatten()[:n]
    return x[keep], lesions[keep] > 0, cues[keep]


def measure(name: str, explainer, x, lesions, cues) -> dict:
    counted: list[int] = []
    hook = explainer.model.register_forward_pre_hook(lambda _m, args: counted.append(args[0].shape[0]))
    start = time.perf_counter()
    try:
        result = explainer.explain(x, class_idx=1, region="predicted")
    finally:
        hook.remove()
    seconds = time.perf_counter() - start
    total = result.saliency.flatten(1).sum(1).clamp_min(1e-12)
    cue = (result.saliency * cues).flatten(1).sum(1) / total
    target = (result.saliency * lesions).flatten(1).sum(1) / total
    peak_on_cue = [bool(c.flatten()[s.flatten().argmax()]) for s, c in zip(result.saliency, cues)]
    return {
        "cue_share": round(float(cue.mean()), 4),
        "target_share": round(float(target.mean()), 4),
        "peak_on_cue": round(float(np.mean(peak_on_cue)), 4),
        "images": sum(counted) / x.shape[0],
        "seconds_per_image": round(seconds / x.shape[0], 2),
    }


def segmentation_methods(model) -> dict:
    """The default methods and HDM on finer grids (``S/8, S/4`` then ``S/2, S``); for a 3D model also HDM on
    the grids its defaults had on the 16 x 32 x 32 volumes before the ladder moved (``S/16`` clipped to
    2 cells in depth: 2 x 2 x 2 cells, each an eighth of the volume)."""
    methods = {**default_methods(model), "HDM_fine": HDM(model, benchmark_grids=(8, 4), auxiliary_grids=(2, 1))}
    if len(model.medhdm_card["recipe"]["spatial_size"]) == 3:
        methods["HDM_clipped"] = HDM(model, benchmark_grids=((8, 16, 16), 8), auxiliary_grids=(4, 2))
    return methods


def sanity_figures(make, model, x) -> tuple[float, float]:
    """The mean sanity check of ``make``'s maps within distance bands of the region and over the whole
    image, from one pair of explanations (trained, randomised)."""
    trained, randomised, regions = sanity_maps(make, model, x, class_idx=1)
    banded = map_correlations(trained, randomised, regions)
    whole = map_correlations(trained, randomised)
    return round(float(np.nanmean(banded)), 4), round(float(np.nanmean(whole)), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6, help="2D cases")
    parser.add_argument("--volumes", type=int, default=4, help="3D volumes")
    parser.add_argument("--sanity-cases", type=int, default=3, help="cases (and volumes) of the sanity check")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", default="", help="comma-separated method names to leave out")
    parser.add_argument("--dims", default="2d,3d", help="which segmenters: 2d, 3d or both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    skip = {s for s in args.skip.split(",") if s}
    path = RESULTS / "segmentation.json"
    out = json.loads(path.read_text()) if path.is_file() else {"results": {}}
    out.update({"threads": args.threads, "seed": CUE_SEED})
    for label, name, n in (("2d", SEGMENTER_2D, args.cases), ("3d", SEGMENTER_3D, args.volumes)):
        if label not in args.dims.split(","):
            continue
        model = load_default_classifier(name)
        x, lesions, cues = cue_cases(model, n)
        rows = out["results"].get(label, {})  # with --skip, the methods measured before are kept
        rows.update({"model": name, "cases": int(x.shape[0]), "cue_area": round(float(cues.float().mean()), 4)})
        rows["target_area"] = round(float(lesions.float().mean()), 4)
        for method in segmentation_methods(model):
            if method in skip:
                continue
            row = measure(method, segmentation_methods(model)[method], x, lesions, cues)
            k = args.sanity_cases
            banded, whole = sanity_figures(lambda m, method=method: segmentation_methods(m)[method], model, x[:k])
            row["sanity"], row["sanity_whole_image"] = banded, whole
            rows[method] = row
            print(label, method, row, flush=True)
        order = [*("model", "cases", "cue_area", "target_area"), *segmentation_methods(model)]
        out["results"][label] = {k: rows[k] for k in sorted(rows, key=lambda k: order.index(k) if k in order else 99)}
    write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
