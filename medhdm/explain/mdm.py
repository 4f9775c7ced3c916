"""MDM (Peng et al., 2022): multiple dynamic masks of different grid sizes.

``K`` mask vectors of grid sizes ``g_1 < ... < g_K`` (default ``S/32 .. S/2``:
7, 14, 28, 56, 112 for a 224 input), each trained with::

    L_k = -log s(phi(x, m_k)) + lambda_area * mean(m_k)
          [+ lambda_del * -log(1 - s(phi(x, 1 - m_k)))]

All ``K`` masks of all ``B`` images are optimised as one batch of ``B * K``
composites per step. Small grids carry coarse, semantic evidence, large grids
spatial detail; the map is the normalised weighted sum ``norm(sum_k w_k m_k)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import Explanation
from .maps import normalise
from .mask_explainer import MaskExplainer
from .masks import GridSpec, MaskObjective, grid_key, grid_shapes, optimise_masks
from .reference import ReferenceSpec
from .scoring import ClassScorer

__all__ = ["MDM"]


class MDM(MaskExplainer):
    """Multiple dynamic masks, stacked.

    Args:
        model: the classifier.
        grids: mask grids as divisors of the input size (default ``(32, 16, 8, 4, 2)``).
        weights: one weight per grid for the stack (default equal).
        objective: loss weights and optimiser settings (default: 150 steps, lr 0.1,
            ``lambda_area=2``, no deletion term, as in the paper).
        reference, seed, amp, max_batch: see :class:`~medhdm.explain.base.Explainer`.
    """

    name = "MDM"
    objective_names = ("objective",)

    def __init__(
        self,
        model: nn.Module,
        *,
        grids: Sequence[GridSpec] = (32, 16, 8, 4, 2),
        weights: Sequence[float] | None = None,
        objective: MaskObjective | None = None,
        reference: ReferenceSpec = "blur",
        seed: int = 0,
        amp: bool = False,
        max_batch: int | None = None,
    ) -> None:
        super().__init__(model, reference=reference, seed=seed, amp=amp, max_batch=max_batch)
        self.grids = tuple(grids)
        if weights is not None and len(weights) != len(self.grids):
            raise ValueError(f"weights: expected one weight per grid ({len(self.grids)}), got {len(weights)}")
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        self.objective = objective or MaskObjective(steps=150, lambda_area=2.0, lambda_del=0.0)

    def _explain(self, x, class_idx, scorer: ClassScorer, logits, reference) -> Explanation:
        per_spec = [grid_shapes(x.shape[2:], [g])[0] for g in self.grids]
        grids = list(dict.fromkeys(per_spec))  # on small images several divisors clip to one grid
        fit = optimise_masks(scorer, x, reference, class_idx, grids, self.objective)
        spec_weights = self.weights or (1.0,) * len(self.grids)
        w = torch.tensor(
            [sum(wt for g, wt in zip(per_spec, spec_weights) if g == grid) for grid in grids],
            device=x.device,
            dtype=torch.float32,
        )
        w = w / w.sum()
        stack = (fit.masks * w.view(1, -1, *([1] * (x.ndim - 2)))).sum(1, keepdim=True)
        masks = {f"mask/{grid_key(g)}": fit.masks[:, i : i + 1] for i, g in enumerate(grids)}
        return self._result(
            normalise(stack), class_idx, scorer, logits, reference, masks=masks, backward_passes=fit.steps
        )
