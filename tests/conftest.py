"""Shared fixtures; the helpers themselves (planted lesions, blob detectors, a CT volume) are in
:mod:`medhdm.testing`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
