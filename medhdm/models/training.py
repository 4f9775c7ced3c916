"""Small MONAI lesion classifiers and the loop that trains them on synthetic cases.

The network is a MONAI ``DenseNet`` cut down to run on two CPU cores:
``init_features=16, growth_rate=8, block_config=(3, 3, 3)``, two output logits
("no lesion", "lesion"). Training is plain Adam on cross-entropy with flips as
augmentation, seeded so the same call gives the same weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from monai.networks.nets import DenseNet
from torch import nn

from ..data.lesions import LesionCase, stack_cases

__all__ = ["lesion_classifier", "train_classifier", "accuracy_and_auc"]


def lesion_classifier(spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2) -> nn.Module:
    """The small MONAI DenseNet used for the benchmark and the demo (untrained)."""
    return DenseNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        init_features=16,
        growth_rate=8,
        block_config=(3, 3, 3),
        bn_size=2,
    )


def train_classifier(
    model: nn.Module,
    cases: Sequence[LesionCase],
    epochs: int = 8,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> list[float]:
    """Train ``model`` in place on ``cases``; return the mean loss per epoch."""
    x, _, y = stack_cases(cases)
    return fit(model, x, y, nn.CrossEntropyLoss(), epochs, batch_size, lr, seed, log)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    log: Callable[[str], None] | None,
) -> list[float]:
    """Adam with a one-cycle schedule over shuffled batches of ``x`` with random flips of every spatial
    axis (the same flips of ``y`` when it is a map ``(N, C, *S)``); the model in place, back in eval mode.

    Returns:
        the mean loss per epoch.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * (-(-len(x) // batch_size)))
    losses = []
    model.train()
    for epoch in range(epochs):
        start, total = time.perf_counter(), 0.0
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            xb, yb = x[idx], y[idx]
            for axis in range(2, xb.ndim):  # random flips per batch
                if torch.rand((), generator=gen) < 0.5:
                    xb = xb.flip(axis)
                    yb = yb.flip(axis) if yb.ndim == xb.ndim else yb
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
        if log:
            log(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} ({time.perf_counter() - start:.1f} s)")
    model.eval()
    return losses


@torch.no_grad()
def accuracy_and_auc(model: nn.Module, cases: Sequence[LesionCase], batch_size: int = 64) -> tuple[float, float]:
    """Accuracy and ROC AUC of "lesion present" on ``cases``."""
    from ..metrics.localisation import auroc

    x, _, y = stack_cases(cases)
    model.eval()
    p = torch.cat([torch.softmax(model(x[i : i + batch_size]), 1)[:, 1] for i in range(0, len(x), batch_size)])
    acc = float(((p > 0.5).long() == y).float().mean())
    return acc, auroc(p.numpy()[None], y.numpy()[None]) if 0 < int(y.sum()) < len(y) else float("nan")
