"""Who explained what: the model's identity (class and weights hash) and a run's configuration fingerprint.

One record, used wherever a result must say what produced it or be recognised again:
the archive's deterministic derived UIDs and structured reports (:mod:`medhdm.pacs`),
and a cohort run's per-case record that decides whether a case is already done::

    config = run_configuration(model, explainer, extra={"slices": "top-1"})
    key = configuration_hash(config)      # 64 hex digits, equal for equal configurations

The weights hash covers every parameter and buffer (names, dtypes, shapes, values), so
retraining, fine-tuning or randomising the model changes it, and loading the same
weights on another device or in another process does not.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from ..explain.base import Explainer

__all__ = ["configuration_hash", "model_identity", "run_configuration", "weights_hash"]


def weights_hash(model: nn.Module) -> str:
    """SHA-256 (hex) of the model's ``state_dict``: names, dtypes, shapes and values, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            digest.update(f"{name}={tensor!r};".encode())
            continue
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def model_identity(model: nn.Module, name: str | None = None) -> dict:
    """``{"name", "class", "weights_sha256"}`` of ``model`` (``name`` defaults to the class name)."""
    cls = type(model)
    return {
        "name": name or cls.__name__,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "weights_sha256": weights_hash(model),
    }


def run_configuration(
    model: nn.Module, explainer: Explainer, model_name: str | None = None, extra: dict | None = None
) -> dict:
    """The record of a run's configuration: medhdm's version, the model's identity, the method and its settings.

    ``extra`` holds whatever else changes the outputs (the classifier's input spec, the
    slice selection, export formats); its values must be JSON-able.
    """
    from .. import __version__

    return {
        "medhdm_version": __version__,
        "model": model_identity(model, model_name),
        "method": explainer.name,
        "settings": explainer.settings(),
        "extra": dict(extra or {}),
    }


def configuration_hash(config: dict) -> str:
    """SHA-256 (hex) of ``config`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()
