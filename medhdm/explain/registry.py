"""Explainers by name (for the CLI, pipelines and benchmarks).

Method names (case-insensitive, ``-``/``_`` ignored, ``+`` read as ``p``): ``hdm``, ``mdm``,
``neuromask``, ``gradcam``, ``gradcampp``, ``gradientinput`` (alias ``gxi``), ``smoothgrad``
(Gradient x Input with 16 noisy samples), ``occlusion``, ``rise``.

A method's arguments (:func:`method_keywords`) are its constructor's keyword arguments and,
for the optimised-mask methods, ``steps`` (the optimiser steps of every phase, which
:meth:`~medhdm.explain.mask_explainer.MaskExplainer.set_steps` sets). :func:`method_arguments`
checks a dict of them, such as the CLI's ``--method-args``, and takes ``steps`` out of it.
"""

from __future__ import annotations

import inspect

from torch import nn

from .base import Explainer
from .baselines import RISE, GradCAM, GradCAMpp, GradientInput, Occlusion
from .hdm import HDM
from .mask_explainer import MaskExplainer
from .mdm import MDM
from .neuromask import NeuroMask

__all__ = ["METHODS", "is_mask_method", "make_explainer", "method_arguments", "method_key", "method_keywords"]

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


def method_keywords(name: str) -> tuple[str, ...]:
    """The arguments the method called ``name`` takes, sorted: its constructor's keywords (``model`` aside)
    and, for the optimised-mask methods, ``steps``."""
    key = method_key(name)
    parameters = inspect.signature(METHODS[key].__init__).parameters.values()
    names = {
        p.name
        for p in parameters
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("self", "model")
    }
    return tuple(sorted(names | ({"steps"} if is_mask_method(key) else set())))


def _check_steps(steps, option: str) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{option}: expected an integer >= 1, got {steps!r}")
    return steps


def method_arguments(
    name: str,
    steps: int | None,
    arguments: dict,
    option: str = "method arguments",
    steps_option: str = "steps",
) -> tuple[int | None, dict]:
    """``steps`` and the constructor's keyword arguments of the method ``name``, from ``arguments``.

    ``arguments`` may hold ``steps`` (mask methods): it is taken out and returned, and must agree
    with ``steps`` when both are given.

    Args:
        name: one of :data:`METHODS`.
        steps: the steps given on their own (the CLI's ``--steps``), or ``None``.
        arguments: the method's arguments (the CLI's ``--method-args``).
        option, steps_option: how messages name ``arguments`` and ``steps``.

    Raises:
        ValueError: a key the method does not take (naming it and the keys it takes), ``steps``
            that is not an integer >= 1 or for a method that does not optimise masks, or two
            different values of ``steps``.
    """
    if steps is not None:
        if not is_mask_method(name):
            raise ValueError(f"{steps_option}: {name} is not an optimised-mask method")
        _check_steps(steps, steps_option)
    unknown = sorted(str(k) for k in arguments if k not in method_keywords(name))
    if unknown:
        raise ValueError(
            f"{option}: {name} takes no {', '.join(repr(k) for k in unknown)}; "
            f"its keys are {', '.join(method_keywords(name))}"
        )
    kwargs = dict(arguments)
    if "steps" in kwargs:
        given = _check_steps(kwargs.pop("steps"), f"{option}: 'steps'")
        if steps is not None and steps != given:
            raise ValueError(f"{option}: 'steps' is {given} but {steps_option} is {steps}; give the steps once")
        steps = given
    return steps, kwargs


def make_explainer(name: str, model: nn.Module, steps: int | None = None, **kwargs) -> Explainer:
    """The explainer called ``name`` for ``model``.

    Args:
        name: one of :data:`METHODS` (case-insensitive).
        model: the classifier.
        steps: for mask methods (HDM, MDM, NeuroMask), the optimiser steps of every phase.
        kwargs: passed to the explainer's constructor (the keys :func:`method_keywords` lists).

    Raises:
        ValueError: an unknown method or argument (naming the method's keys), ``steps`` for a
            method that does not optimise masks, or a value the explainer refuses.
    """
    key = method_key(name)
    steps, kwargs = method_arguments(name, steps, kwargs)
    if key == "smoothgrad":
        kwargs = {"n_samples": 16, **kwargs}
    try:
        explainer = METHODS[key](model, **kwargs)
    except TypeError as err:
        raise ValueError(f"method arguments for {name}: {err}") from None
    if steps is not None:
        explainer.set_steps(steps)
    return explainer
