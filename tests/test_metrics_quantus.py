"""Cross-check: the metrics Quantus also implements give Quantus's values on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest

from medhdm.metrics import auroc, energy_in_lesion, pointing_game, rank_accuracy

quantus = pytest.importorskip("quantus", reason="Quantus is a test dependency (pip install -e '.[dev]')")


def _batch(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps without ties (Quantus breaks ties arbitrarily) and blob-like masks, ``(N, 1, *S)``."""
    rng = np.random.default_rng(seed)
    n = 6
    maps = rng.random((n, 1, *shape))
    masks = np.zeros((n, 1, *shape))
    for i in range(n):
        start = [int(rng.integers(0, s - 3)) for s in shape]
        masks[(i, 0, *[slice(a, a + 3) for a in start])] = 1
        if i % 2 == 0:  # half the cases have the maximum inside the lesion
            maps[(i, 0, *[a + 1 for a in start])] = 2.0
    return maps, masks


@pytest.mark.parametrize("shape", [(12, 10), (6, 7, 8)], ids=["2d", "3d"])
def test_same_values_as_quantus(shape):
    maps, masks = _batch(shape, seed=len(shape))
    # Quantus takes 2D images only. These metrics depend on the set of voxels, not on their
    # arrangement, so a 3D case is given to Quantus with its first two axes merged.
    flat = (len(maps), 1, -1, shape[-1])
    common = {
        "model": None,
        "x_batch": np.zeros_like(maps).reshape(flat),
        "y_batch": np.zeros(len(maps), dtype=int),
        "a_batch": maps.reshape(flat),
        "s_batch": masks.reshape(flat),
    }
    theirs = {
        "pointing_game": quantus.PointingGame(disable_warnings=True)(**common),
        "energy_in_lesion": quantus.RelevanceMassAccuracy(disable_warnings=True)(**common),
        "rank_accuracy": quantus.RelevanceRankAccuracy(disable_warnings=True)(**common),
        "auroc": quantus.AUC(disable_warnings=True)(**common),
    }
    k = int(masks[0].sum())
    theirs["top_k"] = quantus.TopKIntersection(k=k, disable_warnings=True)(**common)
    ours = {
        "pointing_game": [pointing_game(m, s) for m, s in zip(maps, masks)],
        "energy_in_lesion": [energy_in_lesion(m, s) for m, s in zip(maps, masks)],
        "rank_accuracy": [rank_accuracy(m, s) for m, s in zip(maps, masks)],
        "auroc": [auroc(m, s) for m, s in zip(maps, masks)],
        "top_k": [rank_accuracy(m, s) for m, s in zip(maps, masks)],  # k = lesion size: the same quantity
    }
    assert sum(ours["pointing_game"]) == 3  # both outcomes occur
    for key, values in ours.items():
        np.testing.assert_allclose(np.asarray(theirs[key], dtype=float), values, atol=1e-9, err_msg=key)
