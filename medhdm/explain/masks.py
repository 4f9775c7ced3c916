"""Learned mask vectors: grids, upsampling, and the batched mask optimisation.

A mask *vector* of grid size ``g`` is a parameter ``theta`` of shape
``(B, 1, *g)`` turned into a mask on the image grid by
``m = upsample(sigmoid(theta), S)`` with (bi/tri)linear interpolation.
:func:`optimise_masks` trains ``K`` such vectors of different grid sizes for
``B`` images at once: each step is one forward and one backward pass of the
model on ``B * K`` composites (``2 * B * K`` with the deletion term). The loss
of every image is independent of the others, so explaining a batch gives the
same masks as explaining its images one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .reference import composite
from .scoring import ClassScorer

__all__ = [
    "MaskObjective",
    "area_penalty",
    "grid_key",
    "grid_shapes",
    "ladder_shapes",
    "optimise_masks",
    "relative_cells",
    "total_variation",
    "upsample_masks",
]

GridSpec = int | Sequence[int]


@dataclass(frozen=True)
class MaskObjective:
    """Loss weights and optimiser settings for one set of mask vectors.

    The loss of mask ``m`` for target class ``c`` is::

        lambda_keep * -log p_c(phi(x, m))                # keep the decision
        + lambda_area * mean(m)                          # keep the mask small
          (or, with ``area=a``: lambda_area * mean((sort(m) - t_a)^2), see below)
        + lambda_tv * TV(m)                              # keep it smooth (optional)
        + lambda_del * -log(1 - p_c(phi(x, 1 - m)))      # deleting it must break the decision (optional)

    Attributes:
        steps: Adam steps.
        lr: Adam learning rate on the mask logits ``theta``.
        lambda_keep, lambda_area, lambda_tv, lambda_del: loss weights (see above).
        init: initial mask value in ``(0, 1)``.
        trajectory_mean: return the last mask times the mean of the masks over all
            optimisation steps instead of the last mask alone. A converged mask is nearly
            binary (sigmoid saturates), with no ranking inside the kept region; the mean over
            the trajectory ranks voxels by how early and how long the optimisation kept them,
            and the last mask keeps what was dropped near zero. No extra model passes.
        area: ``None`` (default) penalises the mask's mean, as in the papers. A fraction
            ``a`` in ``(0, 1)`` instead pulls the sorted mask values towards a target with
            the top ``a`` of the voxels at 1 and the rest at 0 (the area constraint of
            Fong et al., 2019, "extremal perturbations"): the mask must spend a fixed budget
            of area, so it cannot shrink to nothing when one region suffices, nor grow over
            context when the deletion term asks for more.
        final_lr: ``None`` (default) keeps ``lr`` for every step; a value anneals the learning
            rate from ``lr`` to ``final_lr`` along a half cosine over ``steps``: large early steps
            move the masks from their start quickly, small late ones let them settle, so fewer
            steps reach the same masks.
        tol: ``None`` (default) runs every step. A value stops the phase early, once no mask
            value (on its grid, after the sigmoid) moved by more than ``tol`` in one step, for
            any image of the batch, after at least ``min_steps`` steps: a converged phase
            spends no further model passes. The trajectory mean then runs over the steps taken.
        min_steps: see ``tol``.
    """

    steps: int = 100
    lr: float = 0.1
    lambda_area: float = 1.0
    lambda_tv: float = 0.0
    lambda_del: float = 0.0
    lambda_keep: float = 1.0
    init: float = 0.5
    trajectory_mean: bool = True
    area: float | None = None
    final_lr: float | None = None
    tol: float | None = None
    min_steps: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps: expected a positive int, got {self.steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {self.lr!r}")
        for name in ("lambda_keep", "lambda_area", "lambda_tv", "lambda_del"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected a non-negative weight, got {getattr(self, name)!r}")
        if self.lambda_keep == 0 and self.lambda_del == 0:
            raise ValueError("lambda_keep, lambda_del: at least one of the two must be positive")
        if self.area is not None and not 0 < self.area < 1:
            raise ValueError(f"area: expected None or a fraction strictly between 0 and 1, got {self.area!r}")
        if self.final_lr is not None and not self.final_lr > 0:
            raise ValueError(f"final_lr: expected None or a positive learning rate, got {self.final_lr!r}")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol: expected None or a positive change of mask value, got {self.tol!r}")
        if not isinstance(self.min_steps, int) or self.min_steps < 1:
            raise ValueError(f"min_steps: expected a positive int, got {self.min_steps!r}")
        if not 0 < self.init < 1:
            raise ValueError(f"init: expected a mask value strictly between 0 and 1, got {self.init!r}")


def grid_shapes(spatial: Sequence[int], grids: Sequence[GridSpec], *, relative: bool = True) -> list[tuple[int, ...]]:
    """Grid shapes for an image of spatial size ``spatial``.

    Args:
        spatial: ``S``, e.g. ``(96, 96)`` or ``(32, 64, 64)``.
        grids: with ``relative=True``, divisors of the image size (``32`` means
            ``S / 32`` on every axis, so anisotropic images get anisotropic grids);
            with ``relative=False``, absolute grid sizes (an int for every axis, or
            one per axis).
        relative: how to read ``grids``.
    Returns:
        distinct grid shapes, each axis clipped to ``[2, S_i]``, in the given order.
    """
    shapes: list[tuple[int, ...]] = []
    for g in grids:
        per_axis = (g,) * len(spatial) if isinstance(g, (int, float)) else tuple(g)
        if len(per_axis) != len(spatial) or any(v <= 0 for v in per_axis):
            raise ValueError(f"grids: expected positive sizes for {len(spatial)} spatial axes, got {g!r}")
        if relative:
            shape = tuple(int(round(n / d)) for n, d in zip(spatial, per_axis))
        else:
            shape = tuple(int(v) for v in per_axis)
        shape = tuple(min(max(v, 2), n) for v, n in zip(shape, spatial))
        if shape not in shapes:
            shapes.append(shape)
    if not shapes:
        raise ValueError("grids: expected at least one grid size")
    return shapes


def ladder_shapes(
    spatial: Sequence[int], cells_at: Callable[[int], tuple[list, list]]
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]], int]:
    """HDM's grid ladder (benchmark, then auxiliary grids) fitted to an image of size ``spatial``.

    ``cells_at(f)`` gives the benchmark and auxiliary grids' cells per axis, before any clip, with
    every cell size divided by ``f`` (``f = 1``: as asked). Where a benchmark grid would have fewer than
    2 cells on an axis of at least 2 voxels (a divisor or cell size larger than about two thirds of the
    axis: ``S/16`` on an axis of under 24 voxels), the whole ladder moves one octave finer (``f``
    doubled) until every benchmark grid fits, instead of clipping that axis alone: the clip left the
    16 x 32 x 32 segmenter volumes a benchmark grid of 2 x 2 x 2 cells, an eighth of the volume each,
    whose upsampled masks are the same ramp for any model that keeps the target's cell. Returns the
    benchmark and auxiliary shapes (clipped to ``[2, S_i]`` and deduplicated, :func:`grid_shapes`) and
    ``f``.
    """
    factor = 1
    while True:
        bench, aux = cells_at(factor)
        short = any(v < 2 <= n for shape in bench for v, n in zip(shape, spatial))
        if not short or factor >= max(spatial):
            return grid_shapes(spatial, bench, relative=False), grid_shapes(spatial, aux, relative=False), factor
        factor *= 2


def relative_cells(spatial: Sequence[int], grids: Sequence[GridSpec], finer: int = 1) -> list[tuple[int, ...]]:
    """Cells per axis of the grids ``S / d`` (``d`` in ``grids``: one for every axis, or one per axis) with
    the cell sizes divided by ``finer``, at least 1, before the clip (see :func:`grid_shapes`)."""
    cells = []
    for g in grids:
        per_axis = (g,) * len(spatial) if isinstance(g, (int, float)) else tuple(g)
        if len(per_axis) != len(spatial) or any(v <= 0 for v in per_axis):
            raise ValueError(f"grids: expected positive sizes for {len(spatial)} spatial axes, got {g!r}")
        cells.append(tuple(max(1, int(round(n * finer / d))) for n, d in zip(spatial, per_axis)))
    return cells


def grid_key(shape: Sequence[int]) -> str:
    """A grid shape as a key of :attr:`Explanation.masks`: ``(6, 6) -> "6x6"``."""
    return "x".join(str(v) for v in shape)


def upsample_masks(thetas: Sequence[torch.Tensor], spatial: Sequence[int]) -> torch.Tensor:
    """``sigmoid(theta_k)`` upsampled to ``S`` and stacked: ``K`` x ``(B, 1, *g_k)`` -> ``(B, K, *S)``."""
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return torch.cat(
        [F.interpolate(torch.sigmoid(t), size=tuple(spatial), mode=mode, align_corners=False) for t in thetas], dim=1
    )


def total_variation(masks: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbours along every spatial axis: ``(B, K, *S) -> (B, K)``."""
    tv = masks.new_zeros(masks.shape[:2])
    for axis in range(2, masks.ndim):
        tv = tv + masks.diff(dim=axis).abs().flatten(2).mean(-1)
    return tv


def area_penalty(masks: torch.Tensor, area: float | None = None) -> torch.Tensor:
    """The area term of :class:`MaskObjective` for masks ``(B, K, *S)``, shape ``(B, K)``.

    ``area=None``: the mean mask value. ``area=a``: the mean squared difference between
    the sorted mask values and a target whose top ``round(a * N)`` of ``N`` voxels are 1
    and the rest 0; it is 0 exactly for a binary mask covering a share ``a`` of the image.
    """
    flat = masks.flatten(2)
    if area is None:
        return flat.mean(-1)
    n = flat.shape[-1]
    target = torch.zeros(n, device=flat.device, dtype=flat.dtype)
    target[n - max(1, int(round(area * n))) :] = 1
    return (flat.sort(dim=-1).values - target).pow(2).mean(-1)


@dataclass
class MaskFit:
    """What :func:`optimise_masks` returns.

    Attributes:
        masks: masks on the image grid ``(B, K, *S)`` (the last step's, or with
            ``trajectory_mean`` the last times the mean over the steps), already multiplied
            by ``base``.
        grids: the ``K`` grid shapes.
        steps: forward/backward passes run (one per Adam step; fewer than ``objective.steps``
            when the phase stopped on convergence, see :attr:`MaskObjective.tol`).
    """

    masks: torch.Tensor
    grids: list[tuple[int, ...]]
    steps: int


def optimise_masks(
    scorer: ClassScorer,
    x: torch.Tensor,
    reference: torch.Tensor,
    class_idx: torch.Tensor,
    grids: Sequence[tuple[int, ...]],
    objective: MaskObjective,
    base: torch.Tensor | None = None,
) -> MaskFit:
    """Train ``K`` mask vectors per image, all images and grids in one batch per step.

    Args:
        scorer: the classifier, wrapped.
        x: images ``(B, C, *S)``.
        reference: reference images ``(B, C, *S)``.
        class_idx: target class per image ``(B,)``.
        grids: ``K`` grid shapes (see :func:`grid_shapes`).
        objective: loss weights and optimiser settings.
        base: optional fixed mask ``(B, 1, *S)`` that every mask is superimposed on
            (``m_hat = base * m``), as DM's auxiliary masks are on the benchmark mean.
    Returns:
        a :class:`MaskFit` with masks ``(B, K, *S)``.
    """
    b, spatial = x.shape[0], tuple(x.shape[2:])
    init = float(torch.logit(torch.tensor(objective.init)))
    thetas = [torch.full((b, 1, *g), init, device=x.device, dtype=torch.float32, requires_grad=True) for g in grids]
    optimiser = torch.optim.Adam(thetas, lr=objective.lr)
    running, steps = None, 0
    for step in range(objective.steps):
        if objective.final_lr is not None:
            for group in optimiser.param_groups:
                group["lr"] = _cosine(objective.lr, objective.final_lr, step, objective.steps)
        before = [torch.sigmoid(t.detach()) for t in thetas] if objective.tol is not None else None
        masks = _mask_step(scorer, x, reference, class_idx, thetas, objective, base, optimiser)
        running = masks if running is None else running + masks
        steps += 1
        if before is not None and steps >= objective.min_steps:
            moved = max(float((torch.sigmoid(t.detach()) - m).abs().max()) for t, m in zip(thetas, before))
            if moved < objective.tol:
                break
    with torch.no_grad():
        masks = upsample_masks(thetas, spatial)
        if base is not None:
            masks = masks * base
        if objective.trajectory_mean:
            masks = masks * (running + masks) / (steps + 1)
    return MaskFit(masks=masks.detach(), grids=[tuple(g) for g in grids], steps=steps)


def _cosine(start: float, end: float, step: int, steps: int) -> float:
    """The learning rate of ``step`` of ``steps`` on a half cosine from ``start`` to ``end``."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / max(1, steps - 1)))


def _mask_step(scorer, x, reference, class_idx, thetas, objective: MaskObjective, base, optimiser) -> torch.Tensor:
    """One Adam step on the mask vectors (one forward/backward pass); returns the masks it scored ``(B, K, *S)``."""
    b, spatial, k = x.shape[0], tuple(x.shape[2:]), len(thetas)
    targets = class_idx.repeat_interleave(k)
    x_k, r_k = x[:, None], reference[:, None]  # (B, 1, C, *S) broadcast against K masks
    masks = upsample_masks(thetas, spatial)
    if base is not None:
        masks = masks * base
    m = masks[:, :, None].to(x.dtype)  # (B, K, 1, *S)
    batch = composite(x_k, m, r_k).flatten(0, 1)  # (B*K, C, *S)
    use_del = objective.lambda_del > 0
    if use_del:
        batch = torch.cat([batch, composite(x_k, 1 - m, r_k).flatten(0, 1)])
    logits = scorer.logits(batch)
    loss = -objective.lambda_keep * scorer.log_prob(logits[: b * k], targets)
    loss = loss + objective.lambda_area * area_penalty(masks, objective.area).flatten()
    if objective.lambda_tv > 0:
        loss = loss + objective.lambda_tv * total_variation(masks).flatten()
    if use_del:
        loss = loss - objective.lambda_del * scorer.log_not_prob(logits[b * k :], targets)
    optimiser.zero_grad(set_to_none=True)
    loss.sum().backward()
    optimiser.step()
    return masks.detach()
