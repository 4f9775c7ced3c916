"""The model-randomisation check of HDM at each weight of the gradient magnitude (issue 24).

    python benchmarks/magnitude_sanity.py [--magnitudes 0,0.2,0.5,1,2] [--cases 6] [--volumes 4] [--threads 1]
        [--out NAME]

HDM's refined map adds the stages' smoothed gradient magnitude at the weight ``m``
(``HDM(magnitude=m)``); a randomly initialised network's gradient magnitude follows the image a
little, so the Spearman of :func:`medhdm.metrics.sanity_check` (the maps of the trained and of a
weight-randomised copy) rises with ``m``. Per network, the mean Spearman at each ``m`` (near 0
passes; HDM's defaults must stay below 0.2): the shipped 2D and 3D classifiers and the networks of
``sanity_networks.py`` on ``sanity.py``'s held-out cases (seed 77), and the shipped 2D and 3D
segmenters on the cue cases of ``tests/test_sanity.py`` (seeds 31 and 9090, the predicted region
held fixed). Writes ``benchmarks/results/<out>.json`` (default ``magnitude_sanity.json``).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from common import RESULTS, write_json
from sanity_networks import network_and_cases

from medhdm import HDM
from medhdm.metrics import sanity_check
from medhdm.models import load_default_classifier
from medhdm.testing import marked_cue_cases

CLASSIFIERS = (
    "lesion_densenet2d (shipped)",
    "densenet2d_seed1",
    "densenet2d_seed2",
    "lesion_densenet3d (shipped)",
    "densenet3d_seed1",
    "resnet3d_seed0",
)
#: segmenter -> (cue case seed, cases), as ``tests/test_sanity.py`` checks them
SEGMENTERS = {"lesion_unet2d": (31, 3), "lesion_unet3d": (9090, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--magnitudes", default="0,0.2,0.5,1,2")
    parser.add_argument("--cases", type=int, default=6, help="2D classifier cases")
    parser.add_argument("--volumes", type=int, default=4, help="3D classifier volumes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="magnitude_sanity")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    magnitudes = [float(m) for m in args.magnitudes.split(",")]
    out = {"magnitudes": magnitudes, "threads": args.threads, "networks": {}}
    for name in (*CLASSIFIERS, *SEGMENTERS):
        if name in SEGMENTERS:
            model = load_default_classifier(name)
            x, extra = marked_cue_cases(model, SEGMENTERS[name][1], SEGMENTERS[name][0]), {"region": "predicted"}
        else:
            (model, x), extra = network_and_cases(name, args.cases, args.volumes), {}
        entry = out["networks"].setdefault(name, {"dims": x.ndim - 2, "images": x.shape[0]})
        for m in magnitudes:
            start = time.perf_counter()
            corr = sanity_check(lambda net, m=m: HDM(net, magnitude=m), model, x, class_idx=1, **extra)
            entry[f"{m:g}"] = {"mean": float(np.nanmean(corr)), "per_case": corr}
            print(f"  {name} magnitude {m:g}: {entry[f'{m:g}']['mean']:.2f} ({time.perf_counter() - start:.0f} s)")
    write_json(RESULTS / f"{args.out}.json", out)


if __name__ == "__main__":
    main()
