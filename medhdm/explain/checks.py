"""Input checks and the model-state guard shared by every explainer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["check_model", "check_images", "resolve_class_idx", "frozen_eval", "model_device"]


def check_model(model: object) -> nn.Module:
    """Raise ``TypeError`` unless ``model`` is a ``torch.nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module classifier, got {type(model).__name__}")
    return model


def check_images(x: object, name: str = "x") -> torch.Tensor:
    """Check a batch of images ``(B, C, *S)`` with ``S`` of length 2 or 3.

    Returns the tensor unchanged (detached). Raises ``TypeError`` for a
    non-tensor or a non-floating dtype, ``ValueError`` for a wrong number of
    dimensions, an empty batch or non-finite values.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name}: expected a torch.Tensor of shape (B, C, H, W) or (B, C, D, H, W), got {type(x).__name__}"
        )
    if x.ndim not in (4, 5):
        raise ValueError(
            f"{name}: expected 4 dimensions (B, C, H, W) or 5 dimensions (B, C, D, H, W), "
            f"got {x.ndim} dimensions with shape {tuple(x.shape)}"
        )
    if not torch.is_floating_point(x):
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}; convert with x.float()")
    if x.shape[0] == 0 or any(s == 0 for s in x.shape[1:]):
        raise ValueError(f"{name}: expected a non-empty batch, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite values, found {bad} NaN or infinite value(s)")
    # MONAI MetaTensors carry metadata that the optimisation does not need.
    x = x.detach()
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    return x


def resolve_class_idx(class_idx: int | Sequence[int] | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """Turn ``class_idx`` into a ``(B,)`` long tensor on the logits' device.

    ``None`` takes the predicted class (argmax of the logits ``(B, K)``); an int
    applies to every image; a sequence or tensor gives one class per image.
    """
    batch, num_classes = int(logits.shape[0]), int(logits.shape[1])
    if class_idx is None:
        return logits.argmax(dim=1)
    if isinstance(class_idx, bool):
        raise TypeError(f"class_idx: expected None, an int or one int per image, got a bool ({class_idx})")
    if isinstance(class_idx, int):
        idx = torch.full((batch,), class_idx, dtype=torch.long)
    else:
        if isinstance(class_idx, torch.Tensor):
            if torch.is_floating_point(class_idx) or class_idx.dtype == torch.bool:
                raise TypeError(f"class_idx: expected integer class indices, got dtype {class_idx.dtype}")
            idx = class_idx.detach().to("cpu", torch.long).reshape(-1)
        else:
            try:
                values = list(class_idx)
            except TypeError:
                raise TypeError(
                    f"class_idx: expected None, an int or one int per image, got {type(class_idx).__name__}"
                ) from None
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise TypeError(f"class_idx: expected integer class indices, got {values!r}")
            idx = torch.tensor(values, dtype=torch.long)
        if idx.numel() != batch:
            raise ValueError(f"class_idx: expected one class index per image ({batch}), got {idx.numel()}")
    bad = (idx < 0) | (idx >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            f"class_idx: expected indices in [0, {num_classes - 1}] for a model with {num_classes} classes "
            f"(a single-logit model counts as 2), got {idx[bad].tolist()}"
        )
    return idx.to(logits.device)


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with frozen parameters; restore everything on exit.

    Train/eval flags of every submodule and ``requires_grad`` of every parameter
    are put back exactly as they were, also when the body raises.
    """
    training = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    try:
        model.eval()
        for p in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, flag in training.items():
            m.training = flag
        for p, flag in grads.items():
            p.requires_grad_(flag)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    return next(iter(model.parameters()), torch.empty(0)).device
