"""Operations on saliency maps that every method shares."""

from __future__ import annotations

import torch

__all__ = ["normalise"]


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of ``(B, K, *S)`` to ``[0, 1]``; a constant map becomes zeros."""
    flat = maps.flatten(2)
    lo = flat.amin(dim=2, keepdim=True)
    hi = flat.amax(dim=2, keepdim=True)
    span = hi - lo
    out = torch.where(span > 1e-12, (flat - lo) / span.clamp_min(1e-12), torch.zeros_like(flat))
    return out.view_as(maps)
