"""What the benchmark scripts share: the held-out cases, the methods at their defaults,
and bootstrap confidence intervals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medhdm import HDM, MDM, RISE, GradCAM, GradCAMpp, GradientInput, NeuroMask, Occlusion  # noqa: E402
from medhdm.evaluation import compare_methods  # noqa: E402
from medhdm.io.atomic import atomic_write  # noqa: E402
from medhdm.testing import lesion_cases  # noqa: E402

RESULTS = Path(__file__).parent / "results"
#: ``HDM(model, **BEFORE_FOCUS)``: HDM's defaults of 2026-11-28, before issue 24's focus term, knee and gradient
#: magnitude (the map the issue's "lose nothing" criterion compares with)
BEFORE_FOCUS = {"focus": 0, "contrast": 1, "knee": 0, "magnitude": 0}
#: ``HDM(model, **KNEE_DEFAULTS)``: HDM's defaults of 2026-12-05 (the focus term and the knee at 0.3, no gradient
#: magnitude)
KNEE_DEFAULTS = {"knee": 0.3, "magnitude": 0}
#: ``HDM(model, **MAGNITUDE_DEFAULTS)``: HDM's second defaults of 2026-12-05 (the gradient magnitude in the refined map,
#: the knee at 0.2 in 2D, the focus term on the positive gradient alone, at the weight 1 in 3D)
MAGNITUDE_DEFAULTS = {"focus_signal": "positive_gradient", "focus": {2: 0.5, 3: 1.0}}
BENCH_SEED = 4242  # disjoint from the training (1000) and held-out (2000) seeds of the shipped model


def held_out_cases(n: int, size=(96, 96), seed: int = BENCH_SEED):
    """``n`` cases with 1, 2 and 3 lesions in turn (images, lesion labels, n_lesions)."""
    return lesion_cases(n, tuple(size), seed)


def compare_counting_images(name: str, explainer, x, lesions, batch_size: int, maps: dict | None = None) -> list[dict]:
    """:func:`medhdm.evaluation.compare_methods` of one method on ``x`` for class 1, each row with ``images``:
    the images the model saw per explanation, counted by a hook on the model (so MONAI's internal
    batches, as occlusion's, count too)."""
    counted: list[int] = []
    hook = explainer.model.register_forward_pre_hook(lambda _m, args: counted.append(args[0].shape[0]))
    try:
        rows = compare_methods({name: explainer}, x, lesions, class_idx=1, batch_size=batch_size, maps=maps)
    finally:
        hook.remove()
    for row in rows:
        row["images"] = sum(counted) / x.shape[0]
    return rows


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
