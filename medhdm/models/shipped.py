"""The default classifiers and segmenters that ship with medhdm, and the script that made them.

``lesion_densenet2d`` and ``lesion_densenet3d`` are the small MONAI DenseNet of
:mod:`medhdm.models.training` trained to detect "lesion present" on synthetic cases
(:mod:`medhdm.data.lesions`, real CT/MR anatomy with inserted lesions and bright
distractors): 96 x 96 images, and 24 x 48 x 48 volumes (D, H, W) on nibabel's real MR
volumes. Their weights (about 100-300 kB) live in ``medhdm/models/weights/`` beside JSON
cards with the training settings and held-out accuracy/AUC. Re-create them with::

    python -m medhdm.models --out medhdm/models/weights --name lesion_densenet2d   # about a minute
    python -m medhdm.models --out medhdm/models/weights --name lesion_densenet3d   # about seven minutes

(on two CPU cores; seeded, so the same weights up to floating-point non-determinism of
the CPU kernels).

``lesion_unet2d`` and ``lesion_unet3d`` are the tiny MONAI UNets of
:mod:`medhdm.models.segmentation` trained on the cue task (:func:`medhdm.data.make_cue_case`):
they mark a lesion only when a cue marker is present a short way from it, so the
explanation of their mask is known to involve the cue. 64 x 64 images and 16 x 32 x 32
volumes; weights of a few tens of kB; cards with held-out Dice and the share of cue-less
cases where the lesion is marked anyway. Re-create them with ``--name lesion_unet2d`` /
``--name lesion_unet3d`` (trained on one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from ..data.lesions import make_dataset
from ..io.atomic import atomic_write
from .segmentation import lesion_segmenter, segmentation_scores, train_segmenter
from .training import accuracy_and_auc, lesion_classifier, train_classifier

__all__ = [
    "DEFAULT_2D",
    "DEFAULT_3D",
    "RECIPES",
    "SEGMENTER_2D",
    "SEGMENTER_3D",
    "WEIGHTS_DIR",
    "load_default_classifier",
    "train_default_classifier",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_2D = "lesion_densenet2d"
DEFAULT_3D = "lesion_densenet3d"
SEGMENTER_2D = "lesion_unet2d"
SEGMENTER_3D = "lesion_unet3d"

#: the recipe of the shipped 2D model
RECIPE_2D = {
    "spatial_size": [96, 96],
    "train_seed": 1000,
    "train_cases": 4000,
    "test_seed": 2000,
    "test_cases": 500,
    "epochs": 8,
    "batch_size": 32,
    "lr": 0.002,
    "seed": 0,
}


#: the recipe of the shipped 3D model
RECIPE_3D = {
    "spatial_size": [24, 48, 48],
    "train_seed": 3000,
    "train_cases": 3000,
    "test_seed": 4000,
    "test_cases": 400,
    "epochs": 20,
    "batch_size": 16,
    "lr": 0.002,
    "seed": 0,
}

#: the recipes of the shipped segmenters (the cue task)
RECIPE_SEG_2D = {
    "task": "cue",
    "spatial_size": [64, 64],
    "train_seed": 5000,
    "train_cases": 600,
    "test_seed": 6000,
    "test_cases": 100,
    "epochs": 16,
    "batch_size": 16,
    "lr": 0.01,
    "seed": 0,
}
RECIPE_SEG_3D = {
    **RECIPE_SEG_2D,
    "spatial_size": [16, 32, 32],
    "train_seed": 7000,
    "train_cases": 400,
    "test_seed": 8000,
    "epochs": 12,
}

RECIPES = {DEFAULT_2D: RECIPE_2D, DEFAULT_3D: RECIPE_3D, SEGMENTER_2D: RECIPE_SEG_2D, SEGMENTER_3D: RECIPE_SEG_3D}


def load_default_classifier(name: str = DEFAULT_2D, device: str | torch.device = "cpu") -> nn.Module:
    """The shipped model ``name`` (a classifier, or a segmenter: :data:`SEGMENTER_2D`, :data:`SEGMENTER_3D`)
    in eval mode, with its card as ``model.medhdm_card``."""
    weights = WEIGHTS_DIR / f"{name}.pt"
    card = WEIGHTS_DIR / f"{name}.json"
    if not weights.is_file():
        raise FileNotFoundError(
            f"name: no shipped weights {weights}; re-create them with 'python -m medhdm.models --out {WEIGHTS_DIR}'"
        )
    meta = json.loads(card.read_text())
    dims = len(meta["recipe"]["spatial_size"])
    model = lesion_segmenter(dims) if meta["recipe"].get("task") == "cue" else lesion_classifier(spatial_dims=dims)
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    model.to(device).eval()
    model.medhdm_card = meta  # type: ignore[attr-defined]
    return model


def train_default_classifier(out_dir: Path = WEIGHTS_DIR, log=print, name: str = DEFAULT_2D) -> dict:
    """Train the default classifier ``name`` by its recipe (:data:`RECIPES`), write weights and card."""
    if name not in RECIPES:
        raise ValueError(f"name: expected one of {sorted(RECIPES)}, got {name!r}")
    r = RECIPES[name]
    if r.get("task") == "cue":
        return _train_segmenter(out_dir, log, name)
    torch.manual_seed(r["seed"])
    size = tuple(r["spatial_size"])
    dims = len(size)
    start = time.perf_counter()
    train = make_dataset(r["train_seed"], r["train_cases"], size)
    test = make_dataset(r["test_seed"], r["test_cases"], size)
    model = lesion_classifier(dims)
    train_classifier(model, train, epochs=r["epochs"], batch_size=r["batch_size"], lr=r["lr"], seed=r["seed"], log=log)
    acc, auc = accuracy_and_auc(model, test)
    axes = "H, W" if dims == 2 else "D, H, W"
    card = {
        "name": name,
        "network": f"monai.networks.nets.DenseNet(spatial_dims={dims}, in_channels=1, out_channels=2, "
        "init_features=16, growth_rate=8, block_config=(3, 3, 3), bn_size=2)",
        "classes": ["no lesion", "lesion"],
        "input": f"(B, 1, {', '.join(map(str, size))}) = (B, C, {axes}), intensities windowed to [0, 1] "
        "(see medhdm.data.lesions); LesionBench files: --intensity-range=-1000,0",
        "recipe": r,
        "held_out": {"accuracy": round(acc, 4), "auc": round(auc, 4), "cases": r["test_cases"]},
        "train_seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
    }
    _write(out_dir, name, model, card)
    if log:
        log(f"held-out accuracy {acc:.3f}, AUC {auc:.3f}; wrote {out_dir / name}.pt/.json")
    return card


def _write(out_dir: Path, name: str, model: nn.Module, card: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / f"{name}.pt", lambda p: torch.save(model.state_dict(), p))
    atomic_write(out_dir / f"{name}.json", lambda p: Path(p).write_text(json.dumps(card, indent=2) + "\n"))


def _train_segmenter(out_dir: Path, log, name: str) -> dict:
    """Train the shipped segmenter ``name`` on the cue task by its recipe; write weights and card."""
    from ..data.lesions import make_cue_dataset

    r = RECIPES[name]
    torch.manual_seed(r["seed"])
    size = tuple(r["spatial_size"])
    start = time.perf_counter()
    train = make_cue_dataset(r["train_seed"], r["train_cases"], size)
    test = make_cue_dataset(r["test_seed"], r["test_cases"], size)
    model = lesion_segmenter(len(size))
    train_segmenter(model, train, epochs=r["epochs"], batch_size=r["batch_size"], lr=r["lr"], seed=r["seed"], log=log)
    axes = "H, W" if len(size) == 2 else "D, H, W"
    card = {
        "name": name,
        "network": f"monai.networks.nets.UNet(spatial_dims={len(size)}, in_channels=1, out_channels=1, "
        "channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=1)",
        "classes": ["not marked", "lesion marked (sigmoid logit per voxel)"],
        "task": "cue: mark the lesion only when a square cue marker is present near it (medhdm.data.make_cue_case)",
        "input": f"(B, 1, {', '.join(map(str, size))}) = (B, C, {axes}), intensities windowed to [0, 1] "
        "(see medhdm.data.lesions); LesionBench files: --intensity-range=-1000,0",
        "recipe": r,
        "held_out": {**segmentation_scores(model, test), "cases": r["test_cases"]},
        "train_seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    _write(out_dir, name, model, card)
    if log:
        log(f"held-out {card['held_out']}; wrote {out_dir / name}.pt/.json")
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train medhdm's shipped lesion classifiers and segmenters.")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder (default: the package's)")
    parser.add_argument("--name", default=DEFAULT_2D, choices=sorted(RECIPES), help="which model (default 2D)")
    args = parser.parse_args(argv)
    cue = RECIPES[args.name].get("task") == "cue"  # the segmenters train on one thread
    torch.set_num_threads(1 if cue else max(1, min(2, os.cpu_count() or 1)))
    train_default_classifier(args.out, name=args.name)


if __name__ == "__main__":
    main()
