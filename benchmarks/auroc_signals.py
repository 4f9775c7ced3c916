"""What ranks lesion voxels: the pixel AUROC of single signals, with the trained and a randomised model (issue 24).

    python benchmarks/auroc_signals.py [--seeds 31,77] [--cases 24] [--threads 1]

Per set (in-memory lesion cases of ``seed``, the shipped 2D and 3D classifiers, class "lesion"), the
mean pixel AUROC against the lesions of: the image's detail against its blurred reference, smoothed
(``G * |x - r|``, no model: Gradient x Input's image factor); Gradient x Input of the trained model and
of a weight-randomised copy (:func:`medhdm.metrics.sanity_check`'s randomisation, seed 0); and, for
both models, the smoothed gradient magnitude ``G_sigma * |g|`` (what HDM's ``magnitude`` adds) and the
positive part of the smoothed signed gradient ``max(0, G_{1.5 sigma} * g)`` (HDM's pixel signal of its
first stage), with ``sigma`` HDM's fused-map Gaussian (``max(S) / 32``). A signal that ranks the lesions
with the randomised model ranks them by the image, not by what the model uses. Writes
``benchmarks/results/auroc_signals.json``.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from common import RESULTS, held_out_cases, write_json

from medhdm import GradientInput
from medhdm.explain.maps import normalise
from medhdm.explain.reference import gaussian_blur, make_reference
from medhdm.explain.scoring import ClassScorer
from medhdm.metrics import auroc, randomised_copy
from medhdm.models import DEFAULT_3D, load_default_classifier


def signals(model, randomised, x) -> dict[str, torch.Tensor]:
    """The signals of the module docstring, by name, each ``(B, 1, *S)``."""
    sigma = max(x.shape[2:]) / 32
    detail = (x - make_reference(x, "blur")).abs().sum(1, keepdim=True)
    out = {"image detail G * abs(x - r) (no model)": normalise(gaussian_blur(detail, sigma))}
    targets = torch.ones(x.shape[0], dtype=torch.long)
    for label, net in (("trained", model), ("randomised", randomised)):
        out[f"Gradient x Input, {label}"] = GradientInput(net).explain(x, 1).saliency
        gradient = ClassScorer(net).gradient(x, targets, measure="log_odds", signed=True)
        out[f"gradient magnitude G * abs(g), {label}"] = gaussian_blur(gradient.abs(), sigma)
        out[f"positive gradient max(0, G * g), {label}"] = gaussian_blur(
            gradient, 1.5 * sigma, padding="zeros"
        ).clamp_min(0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="31,77")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    out = {"cases": args.cases, "sets": {}}
    for dims in (2, 3):
        model = load_default_classifier() if dims == 2 else load_default_classifier(DEFAULT_3D)
        randomised = randomised_copy(model, 0).eval()
        size = tuple(model.medhdm_card["recipe"]["spatial_size"])
        for seed in (int(s) for s in args.seeds.split(",")):
            x, lesions, _ = held_out_cases(args.cases, size=size, seed=seed)
            entry = out["sets"].setdefault(f"{dims}d/{seed}", {})
            for name, maps in signals(model, randomised, x).items():
                values = [auroc(maps[i, 0].detach().numpy(), lesions[i, 0].numpy() > 0) for i in range(x.shape[0])]
                entry[name] = float(np.nanmean(values))
                print(f"{dims}D seed {seed}: {name}: {entry[name]:.4f}", flush=True)
    write_json(RESULTS / "auroc_signals.json", out)


if __name__ == "__main__":
    main()
