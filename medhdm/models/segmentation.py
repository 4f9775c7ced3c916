"""Small MONAI lesion segmenters and the loop that trains them on the cue task.

The network is a MONAI ``UNet`` with tiny channels, ``(4, 8, 16, 32)`` and three
stride-2 levels, one residual unit each, and one sigmoid logit per voxel ("lesion
marked"); its receptive field spans most of a 64 x 64 image, so it can learn a
decision that depends on context away from the lesion (:func:`medhdm.data.make_cue_case`).
Training is Adam on MONAI's ``DiceLoss`` (over the batch, so cases without a target count) with flips as
augmentation, seeded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.losses import DiceLoss
from monai.networks.nets import UNet
from torch import nn

from ..data.lesions import LesionCase
from .training import fit

__all__ = ["lesion_segmenter", "segmentation_scores", "train_segmenter"]


def lesion_segmenter(spatial_dims: int = 2) -> nn.Module:
    """The small MONAI UNet of the shipped segmenters (untrained): ``(B, 1, *S) -> (B, 1, *S)`` logits."""
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=1,
        channels=(4, 8, 16, 32),
        strides=(2, 2, 2),
        num_res_units=1,
    )


def _stack(cases: Sequence[LesionCase]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.stack([c.image for c in cases]))
    y = torch.from_numpy(np.stack([c.target for c in cases]).astype(np.float32))
    return x, y


def train_segmenter(
    model: nn.Module,
    cases: Sequence[LesionCase],
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 1e-2,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> list[float]:
    """Train ``model`` in place on ``cases`` (their :attr:`~medhdm.data.LesionCase.target`); the mean loss per epoch."""
    x, y = _stack(cases)
    return fit(model, x, y, DiceLoss(sigmoid=True, batch=True), epochs, batch_size, lr, seed, log)


@torch.no_grad()
def segmentation_scores(model: nn.Module, cases: Sequence[LesionCase], batch_size: int = 32) -> dict[str, float]:
    """Held-out figures of a cue task segmenter: ``dice`` of the marked voxels on the cases with the cue
    (their lesion), and ``marked_without_cue``, the share of cases without the cue where any voxel of
    the lesion is marked (0 for a model that learned the cue)."""
    x, y = _stack(cases)
    model.eval()
    marked = torch.cat([model(x[i : i + batch_size]) > 0 for i in range(0, len(x), batch_size)]).float()
    with_cue = y.flatten(1).any(1)
    inter = (marked * y).flatten(1).sum(1)
    dice = 2 * inter / (marked.flatten(1).sum(1) + y.flatten(1).sum(1)).clamp_min(1)
    lesions = torch.from_numpy(np.stack([c.lesions > 0 for c in cases]))
    hit = (marked.bool() & lesions).flatten(1).any(1)
    return {
        "dice": round(float(dice[with_cue].mean()), 4),
        "marked_without_cue": round(float(hit[~with_cue].float().mean()), 4),
    }
