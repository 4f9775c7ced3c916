"""NeuroMask (Alzantot et al., 2019): one learned mask per image.

Minimises over one mask ``m`` on a fine grid (default ``S / 4``)::

    L(m) = -log s(phi(x, m)) + lambda_area * mean(m) + lambda_tv * TV(m)
           [+ lambda_del * -log(1 - s(phi(x, 1 - m)))]

with Adam. The map is ``m`` (min-max normalised).
"""

from __future__ import annotations

from torch import nn

from .base import Explanation
from .maps import normalise
from .mask_explainer import MaskExplainer
from .masks import GridSpec, MaskObjective, grid_key, grid_shapes, optimise_masks
from .reference import ReferenceSpec
from .scoring import ClassScorer

__all__ = ["NeuroMask"]


class NeuroMask(MaskExplainer):
    """One learned mask per image.

    Args:
        model: the classifier.
        grid: the mask grid as a divisor of the input size (4: ``S / 4``; 1: full resolution).
        objective: loss weights and optimiser settings (default: 150 steps, lr 0.1,
            ``lambda_area=2, lambda_tv=0.5``, no deletion term, as in the paper).
        reference, seed, amp, max_batch: see :class:`~medhdm.explain.base.Explainer`.
    """

    name = "NeuroMask"
    objective_names = ("objective",)

    def __init__(
        self,
        model: nn.Module,
        *,
        grid: GridSpec = 4,
        objective: MaskObjective | None = None,
        reference: ReferenceSpec = "blur",
        seed: int = 0,
        amp: bool = False,
        max_batch: int | None = None,
    ) -> None:
        super().__init__(model, reference=reference, seed=seed, amp=amp, max_batch=max_batch)
        self.grid = grid
        self.objective = objective or MaskObjective(steps=150, lambda_area=2.0, lambda_tv=0.5, lambda_del=0.0)

    def _explain(self, x, class_idx, scorer: ClassScorer, logits, reference) -> Explanation:
        grids = grid_shapes(x.shape[2:], [self.grid])
        fit = optimise_masks(scorer, x, reference, class_idx, grids, self.objective)
        masks = {f"mask/{grid_key(grids[0])}": fit.masks}
        return self._result(
            normalise(fit.masks), class_idx, scorer, logits, reference, masks=masks, backward_passes=fit.steps
        )
