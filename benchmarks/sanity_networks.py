"""More classifiers for the model-randomisation check: other training seeds, and a ResNet in 3D.

    python benchmarks/sanity_networks.py --train [--names densenet2d_seed1,...] [--threads 1]
    python benchmarks/sanity_networks.py [--cases 6] [--volumes 4] [--threads 1]   # the check

A sanity check passed on one network may be that network's luck (issue 24). This script trains,
once, the networks that ``tests/test_sanity.py`` and ``benchmarks/sanity.py`` check HDM's default
map on besides the shipped ones, on the shipped models' data (:mod:`medhdm.models.shipped`'s
recipes, same training and test cases), and writes their weights and cards (held-out accuracy and
AUC) to ``tests/data/sanity_networks/``:

- ``densenet2d_seed1``, ``densenet2d_seed2``: the shipped 2D DenseNet's recipe, training seeds 1
  and 2;
- ``densenet3d_seed1``: the shipped 3D DenseNet's recipe at training seed 1, 10 epochs instead of
  20 (half the time on a shared CPU);
- ``resnet3d_seed0``: another architecture, a small MONAI ``ResNet`` (basic blocks, one per layer,
  widths 8-32, its first convolution at stride 2: at stride 1 one epoch took 11 minutes on the shared
  machine, at stride 2 about a tenth of that), the 3D recipe with 12 epochs.

Without ``--train`` it runs the check (:func:`medhdm.metrics.sanity_check`, mean Spearman between
the maps of the trained and of a weight-randomised copy; near 0 passes, HDM must stay below 0.2) on
the shipped model and these networks, 2D and 3D, on ``sanity.py``'s held-out cases (seed 77): HDM's
defaults, the map before the focus term (``common.BEFORE_FOCUS``), the masks alone and Gradient x
Input. Writes ``benchmarks/results/<out>.json`` (default ``sanity_networks``).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import BEFORE_FOCUS, RESULTS, write_json

from medhdm import HDM, GradientInput
from medhdm.data.lesions import make_dataset
from medhdm.io.atomic import atomic_write
from medhdm.metrics import sanity_check
from medhdm.models import DEFAULT_2D, DEFAULT_3D, load_default_classifier
from medhdm.models.shipped import RECIPE_2D, RECIPE_3D
from medhdm.models.training import accuracy_and_auc, train_classifier
from medhdm.testing import lesion_cases, load_network, sanity_network

SANITY_SEED = 77  # sanity.py's cases

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "sanity_networks"

#: name -> (architecture, recipe)
NETWORKS = {
    "densenet2d_seed1": ("densenet", {**RECIPE_2D, "seed": 1}),
    "densenet2d_seed2": ("densenet", {**RECIPE_2D, "seed": 2}),
    "densenet3d_seed1": ("densenet", {**RECIPE_3D, "seed": 1, "epochs": 10}),
    "resnet3d_seed0": ("resnet", {**RECIPE_3D, "epochs": 12}),
}


def load(name: str) -> torch.nn.Module:
    """The trained network ``name`` in eval mode, its card as ``medhdm_card``."""
    return load_network(OUT / f"{name}.pt")


def train(name: str) -> dict:
    architecture, r = NETWORKS[name]
    size = tuple(r["spatial_size"])
    torch.manual_seed(r["seed"])
    start = time.perf_counter()
    model = sanity_network(architecture, len(size))
    train_classifier(
        model,
        make_dataset(r["train_seed"], r["train_cases"], size),
        epochs=r["epochs"],
        batch_size=r["batch_size"],
        lr=r["lr"],
        seed=r["seed"],
    )
    acc, auc = accuracy_and_auc(model, make_dataset(r["test_seed"], r["test_cases"], size))
    card = {
        "name": name,
        "architecture": architecture,
        "recipe": r,
        "held_out": {"accuracy": round(acc, 4), "auc": round(auc, 4), "cases": r["test_cases"]},
        "train_seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write(OUT / f"{name}.pt", lambda p: torch.save(model.state_dict(), p))
    atomic_write(OUT / f"{name}.json", lambda p: Path(p).write_text(json.dumps(card, indent=2) + "\n"))
    print(f"{name}: held-out accuracy {acc:.3f}, AUC {auc:.3f} ({card['train_seconds']:.0f} s)", flush=True)
    return card


#: method name -> explainer builder, for the check
CHECKED = {
    "HDM (defaults)": lambda m: HDM(m),
    "HDM before the focus term (focus 0, contrast 1)": lambda m: HDM(m, **BEFORE_FOCUS),
    "HDM masks only (refine None)": lambda m: HDM(m, refine=None),
    "GradientInput": lambda m: GradientInput(m),
}


SHIPPED = {"lesion_densenet2d (shipped)": DEFAULT_2D, "lesion_densenet3d (shipped)": DEFAULT_3D}


def network_and_cases(name: str, cases: int, volumes: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The shipped or trained classifier ``name`` and the check's held-out images for it: ``cases`` 2D cases or
    ``volumes`` 3D volumes of :data:`SANITY_SEED` at its recipe's size."""
    model = load_default_classifier(SHIPPED[name]) if name in SHIPPED else load(name)
    size = tuple(model.medhdm_card["recipe"]["spatial_size"])
    return model, lesion_cases(cases if len(size) == 2 else volumes, size, SANITY_SEED)[0]


def check(cases: int, volumes: int, names) -> dict:
    """Per network of ``names`` and method: the mean Spearman and the per-case values."""
    out: dict[str, dict] = {}
    for name in names:
        if name not in SHIPPED and not (OUT / f"{name}.pt").is_file():
            print(f"  {name}: no weights in {OUT} (train them with --train); left out", flush=True)
            continue
        model, x = network_and_cases(name, cases, volumes)
        entry = out.setdefault(name, {"dims": x.ndim - 2, "held_out": model.medhdm_card.get("held_out")})
        for method, make in CHECKED.items():
            start = time.perf_counter()
            corr = sanity_check(make, model, x, class_idx=1)
            entry[method] = {"mean": float(np.nanmean(corr)), "per_case": corr}
            print(f"  {name} {method}: {entry[method]['mean']:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="train the networks instead of checking them")
    parser.add_argument("--names", default=None, help="networks (default: all; for the check the shipped ones too)")
    parser.add_argument("--out", default="sanity_networks", help="results file name of the check")
    parser.add_argument("--cases", type=int, default=6, help="2D cases of the check")
    parser.add_argument("--volumes", type=int, default=4, help="3D volumes of the check")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.train:
        for name in (args.names or ",".join(NETWORKS)).split(","):
            train(name)
        return
    networks = check(args.cases, args.volumes, (args.names or ",".join([*SHIPPED, *NETWORKS])).split(","))
    write_json(
        RESULTS / f"{args.out}.json",
        {
            "cases": args.cases,
            "volumes": args.volumes,
            "seed": SANITY_SEED,
            "threads": args.threads,
            "networks": networks,
        },
    )


if __name__ == "__main__":
    main()
