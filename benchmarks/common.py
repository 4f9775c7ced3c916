"""What the benchmark scripts share: the held-out cases, the methods at their defaults,
and bootstrap confidence intervals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medhdm import HDM, MDM, RISE, GradCAM, GradCAMpp, GradientInput, NeuroMask, Occlusion  # noqa: E402
from medhdm.data import (
    make_case,  # noqa: E402
    stack_cases,  # noqa: E402
)
from medhdm.io.atomic import atomic_write  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BENCH_SEED = 4242  # disjoint from the training (1000) and held-out (2000) seeds of the shipped model


def held_out_cases(n: int, size=(96, 96), seed: int = BENCH_SEED):
    """``n`` cases with 1, 2 and 3 lesions in turn (images, lesion labels, n_lesions)."""
    rng = np.random.default_rng(seed)
    cases = [make_case(rng, size, 1 + i % 3) for i in range(n)]
    return stack_cases(cases)


def default_methods(model) -> dict:
    return {
        "HDM": HDM(model),
        "MDM": MDM(model),
        "NeuroMask": NeuroMask(model),
        "GradientInput": GradientInput(model),
        "Occlusion": Occlusion(model),
        "RISE": RISE(model),
        "GradCAM": GradCAM(model),
        "GradCAM++": GradCAMpp(model),
    }


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())
