"""The default classifiers that ship with medhdm, and the script that made them.

``lesion_densenet2d`` is the small MONAI DenseNet of :mod:`medhdm.training`
trained to detect "lesion present" on 96 x 96 synthetic cases
(:mod:`medhdm.data.lesions`, real CT/MR anatomy with inserted lesions and
bright distractors). Its weights (about 100 kB) live in ``medhdm/weights/``
beside a JSON card with the training settings and held-out accuracy/AUC.
Re-create them with::

    python -m medhdm.models --out medhdm/weights

(about a minute on two CPU cores; seeded, so the same weights up to floating-point
non-determinism of the CPU kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from ._io import atomic_write
from .data.lesions import make_dataset
from .training import accuracy_and_auc, lesion_classifier, train_classifier

__all__ = ["WEIGHTS_DIR", "DEFAULT_2D", "load_default_classifier", "train_default_classifier"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_2D = "lesion_densenet2d"

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


def load_default_classifier(name: str = DEFAULT_2D, device: str | torch.device = "cpu") -> nn.Module:
    """The shipped classifier ``name`` in eval mode, with its card as ``model.medhdm_card``."""
    weights = WEIGHTS_DIR / f"{name}.pt"
    card = WEIGHTS_DIR / f"{name}.json"
    if not weights.is_file():
        raise FileNotFoundError(
            f"name: no shipped weights {weights}; re-create them with 'python -m medhdm.models --out {WEIGHTS_DIR}'"
        )
    meta = json.loads(card.read_text())
    model = lesion_classifier(spatial_dims=len(meta["recipe"]["spatial_size"]))
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    model.to(device).eval()
    model.medhdm_card = meta  # type: ignore[attr-defined]
    return model


def train_default_classifier(out_dir: Path = WEIGHTS_DIR, log=print) -> dict:
    """Train the 2D default classifier by :data:`RECIPE_2D`, write weights and card to ``out_dir``."""
    r = RECIPE_2D
    torch.manual_seed(r["seed"])
    size = tuple(r["spatial_size"])
    start = time.perf_counter()
    train = make_dataset(r["train_seed"], r["train_cases"], size)
    test = make_dataset(r["test_seed"], r["test_cases"], size)
    model = lesion_classifier(len(size))
    train_classifier(model, train, epochs=r["epochs"], batch_size=r["batch_size"], lr=r["lr"], seed=r["seed"], log=log)
    acc, auc = accuracy_and_auc(model, test)
    card = {
        "name": DEFAULT_2D,
        "network": "monai.networks.nets.DenseNet(spatial_dims=2, in_channels=1, out_channels=2, init_features=16, "
        "growth_rate=8, block_config=(3, 3, 3), bn_size=2)",
        "classes": ["no lesion", "lesion"],
        "input": "(B, 1, 96, 96), intensities windowed to [0, 1] (see medhdm.data.lesions)",
        "recipe": r,
        "held_out": {"accuracy": round(acc, 4), "auc": round(auc, 4), "cases": r["test_cases"]},
        "train_seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / f"{DEFAULT_2D}.pt", lambda p: torch.save(model.state_dict(), p))
    atomic_write(out_dir / f"{DEFAULT_2D}.json", lambda p: Path(p).write_text(json.dumps(card, indent=2) + "\n"))
    if log:
        log(f"held-out accuracy {acc:.3f}, AUC {auc:.3f}; wrote {out_dir / DEFAULT_2D}.pt/.json")
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train medhdm's default 2D lesion classifier.")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder (default: the package's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    train_default_classifier(args.out)


if __name__ == "__main__":
    main()
