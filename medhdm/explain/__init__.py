"""Explaining a classifier's decision: the shared core, the mask methods and the baselines.

- core: :mod:`~medhdm.explain.base` (the :class:`Explainer` interface and its records),
  :mod:`~medhdm.explain.findings` (an explanation's lesion-level :class:`Finding` list),
  :mod:`~medhdm.explain.checks`, :mod:`~medhdm.explain.scoring`, :mod:`~medhdm.explain.reference`,
  :mod:`~medhdm.explain.maps`, :mod:`~medhdm.explain.masks` (learned mask vectors);
- mask methods (:class:`MaskExplainer`): :class:`HDM`, :class:`MDM`, :class:`NeuroMask`;
- baselines (:mod:`medhdm.explain.baselines`): Grad-CAM(++), occlusion, RISE, Gradient x Input;
- :mod:`~medhdm.explain.registry`: every method by name.
"""

from .base import Explainer, Explanation, Finding, StageRecord
from .baselines import RISE, GradCAM, GradCAMpp, GradientInput, Occlusion
from .hdm import HDM
from .maps import normalise
from .mask_explainer import MaskExplainer
from .masks import MaskObjective, grid_shapes, optimise_masks
from .mdm import MDM
from .neuromask import NeuroMask
from .reference import blur_reference, composite, make_reference
from .registry import METHODS, make_explainer
from .scoring import ClassScorer, TwoClassFromLogit

__all__ = [
    "Explainer",
    "Explanation",
    "Finding",
    "StageRecord",
    "MaskExplainer",
    "HDM",
    "MDM",
    "NeuroMask",
    "GradCAM",
    "GradCAMpp",
    "GradientInput",
    "Occlusion",
    "RISE",
    "METHODS",
    "make_explainer",
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
