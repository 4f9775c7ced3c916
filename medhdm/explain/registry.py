"""Explainers by name (for the CLI, pipelines and benchmarks).

Method names (case-insensitive, ``-``/``_`` ignored, ``+`` read as ``p``): ``hdm``, ``mdm``,
``neuromask``, ``gradcam``, ``gradcampp``, ``gradientinput`` (alias ``gxi``), ``smoothgrad``
(Gradient x Input with 16 noisy samples), ``occlusion``, ``rise``.
"""

from __future__ import annotations

from torch import nn

from .base import Explainer
from .baselines import RISE, GradCAM, GradCAMpp, GradientInput, Occlusion
from .hdm import HDM
from .mask_explainer import MaskExplainer
from .mdm import MDM
from .neuromask import NeuroMask

__all__ = ["METHODS", "is_mask_method", "make_explainer", "method_key"]

METHODS: dict[str, type[Explainer]] = {
    "hdm": HDM,
    "mdm": MDM,
    "neuromask": NeuroMask,
    "gradcam": GradCAM,
    "gradcampp": GradCAMpp,
    "gradientinput": GradientInput,
    "gxi": GradientInput,
    "smoothgrad": GradientInput,
    "occlusion": Occlusion,
    "rise": RISE,
}


def method_key(name: str) -> str:
    """The :data:`METHODS` key of ``name``; ``ValueError`` naming the choices if there is none."""
    key = str(name).lower().replace("-", "").replace("_", "").replace("+", "pp")
    if key not in METHODS:
        raise ValueError(f"method: unknown {name!r}; expected one of {', '.join(sorted(METHODS))}")
    return key


def is_mask_method(name: str) -> bool:
    """Whether the method called ``name`` optimises masks (and so takes ``steps``)."""
    return issubclass(METHODS[method_key(name)], MaskExplainer)


def make_explainer(name: str, model: nn.Module, steps: int | None = None, **kwargs) -> Explainer:
    """The explainer called ``name`` for ``model``.

    Args:
        name: one of :data:`METHODS` (case-insensitive).
        model: the classifier.
        steps: for mask methods (HDM, MDM, NeuroMask), the optimiser steps of every phase.
        kwargs: passed to the explainer's constructor.
    """
    key = method_key(name)
    if key == "smoothgrad":
        kwargs = {"n_samples": 16, **kwargs}
    if steps is not None and not is_mask_method(key):
        raise ValueError(f"steps: {name} is not an optimised-mask method")
    try:
        explainer = METHODS[key](model, **kwargs)
    except TypeError as err:
        raise ValueError(f"method arguments for {name}: {err}") from None
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps: expected at least 1, got {steps}")
        explainer.set_steps(int(steps))
    return explainer
