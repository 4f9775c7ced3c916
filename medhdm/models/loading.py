"""Classifiers from a specification (for the CLI, pipelines and tutorials).

Model specifications:

- ``default`` (or ``default2d``), ``default3d``: the shipped 2D / 3D lesion classifiers
  (:func:`medhdm.models.load_default_classifier`); ``segmenter2d``, ``segmenter3d``: the
  shipped 2D / 3D lesion segmenters (UNets, the cue task);
- a TorchScript file (``torch.jit.save``), any suffix;
- a MONAI bundle folder (``configs/inference.json`` or ``.yaml`` with ``network_def``,
  weights in ``models/model.pt``; the network alone, :func:`medhdm.models.bundle.bundle_network`; with its
  preprocessing and class names, ``--bundle`` and :func:`medhdm.models.load_bundle`);
- a network class path ``package.module.Class`` (or ``package.module:Class``), built with
  ``model_args`` (keyword arguments) and loaded from ``weights`` (a state-dict file).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_model"]


def _import_class(path: str) -> type[nn.Module]:
    """The ``torch.nn.Module`` subclass named by ``path``; anything else is refused before it is called.

    A class path comes from the command line, so it must not be a way to call an
    arbitrary function (``os.system``, ``subprocess.call``, ``builtins.eval``): the
    object found is checked to be a class deriving from ``torch.nn.Module`` and is
    returned uncalled.
    """
    module_name, _, class_name = path.replace(":", ".").rpartition(".")
    if not module_name or not class_name.isidentifier() or not all(p.isidentifier() for p in module_name.split(".")):
        raise ValueError(f"model: {path!r} is not a class path like package.module.Class")
    try:
        module = importlib.import_module(module_name)
        obj = getattr(module, class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"model: cannot import {path!r} ({err})") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        kind = type(obj).__name__
        raise ValueError(  # noqa: TRY004 (a bad value of --model, not a wrong Python type)
            f"model: {path!r} is a {kind}, not a torch.nn.Module subclass; only network classes "
            "may be built from a class path"
        )
    return obj


def load_state(
    model: nn.Module, weights: str | os.PathLike, device, what: str = "weights", target: str | None = None
) -> None:
    """Load a state-dict file (or a checkpoint holding one under ``state_dict``) into ``model``; errors start
    ``what:``, name the file and what it must fit (``target``, default the model's class)."""
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"{what}: no such file {weights}")
    try:
        state = torch.load(weights, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 (pickle, zip and torch errors alike mean: not a state dict)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{what}: {weights} is not a PyTorch state-dict file ({first})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"{what}: {weights} does not fit {target or type(model).__name__} ({first})") from None


def load_model(
    spec: str | os.PathLike = "default",
    weights: str | os.PathLike | None = None,
    model_args: dict | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A model (classifier or segmenter) in eval mode from a specification (see the module docstring)."""
    spec = str(spec)
    if spec in ("segmenter2d", "segmenter3d"):
        from .shipped import SEGMENTER_2D, SEGMENTER_3D, load_default_classifier

        return load_default_classifier(SEGMENTER_3D if spec == "segmenter3d" else SEGMENTER_2D, device=device)
    if spec in ("default", "default2d", "default3d"):
        from .shipped import DEFAULT_2D, DEFAULT_3D, load_default_classifier

        return load_default_classifier(DEFAULT_3D if spec == "default3d" else DEFAULT_2D, device=device)
    path = Path(spec)
    if path.is_dir():
        from .bundle import bundle_network

        model = bundle_network(path, device)
    elif path.is_file():
        try:
            model = torch.jit.load(str(path), map_location=device)
        except RuntimeError as err:
            raise ValueError(
                f"model: {path} is not a TorchScript file ({str(err).splitlines()[0]}); "
                "for a state dict give the network class path and weights="
            ) from None
    elif ("." in spec or ":" in spec) and "/" not in spec:
        cls = _import_class(spec)  # a torch.nn.Module subclass, checked before it is called
        if weights is None:
            raise ValueError(f"weights: a state-dict file is needed for the network class {spec}")
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights: no such file {weights}")
        try:
            model = cls(**(model_args or {}))
        except TypeError as err:
            raise ValueError(f"model arguments for {spec}: {err}") from None
        load_state(model, weights, device)
    else:
        raise FileNotFoundError(
            f"model: {spec} is neither 'default', 'segmenter2d', a file, a bundle folder nor a class path"
        )
    return model.to(device).eval()
