"""Mask-learning explainers: HDM, MDM and NeuroMask, and what they share."""

from .base import Explainer, Explanation, StageRecord
from .hdm import HDM
from .masks import MaskObjective, grid_shapes, normalise, optimise_masks
from .mdm import MDM
from .neuromask import NeuroMask
from .reference import blur_reference, composite, make_reference
from .scoring import ClassScorer, TwoClassFromLogit

__all__ = [
    "Explainer",
    "Explanation",
    "StageRecord",
    "HDM",
    "MDM",
    "NeuroMask",
    "MaskObjective",
    "grid_shapes",
    "normalise",
    "optimise_masks",
    "blur_reference",
    "composite",
    "make_reference",
    "ClassScorer",
    "TwoClassFromLogit",
]
