"""RISE (Petsiuk et al., 2018): randomised input sampling.

``N`` random masks: binary cells on a coarse grid (each kept with probability
``p``), upsampled (bi/tri)linearly to a grid one cell larger than the image and
cropped at a random shift, so the masks are smooth and not aligned to the grid.
The map is the score-weighted average of the masks,
``sum_i p_c(phi(x, M_i)) M_i / (N p)``, min-max normalised. The composites use
the same reference image as the mask methods (blur by default), not black.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Explainer, Explanation
from ..maps import normalise
from ..reference import ReferenceSpec, composite
from ..scoring import ClassScorer

__all__ = ["RISE"]


class RISE(Explainer):
    """Randomised input sampling for explanation.

    Args:
        model: the classifier.
        n_masks: random masks per image.
        cells: cells of the coarse grid along each axis.
        p_keep: probability that a cell is kept.
        batch_size: composites per forward pass.
        reference, seed, amp, max_batch: see :class:`~medhdm.explain.base.Explainer`.
    """

    name = "RISE"

    def __init__(
        self,
        model: nn.Module,
        *,
        n_masks: int = 1000,
        cells: int = 8,
        p_keep: float = 0.5,
        batch_size: int = 100,
        reference: ReferenceSpec = "blur",
        seed: int = 0,
        amp: bool = False,
        max_batch: int | None = None,
    ) -> None:
        super().__init__(model, reference=reference, seed=seed, amp=amp, max_batch=max_batch)
        if n_masks < 1 or cells < 1 or batch_size < 1:
            raise ValueError("n_masks, cells and batch_size: expected positive ints")
        if not 0 < p_keep < 1:
            raise ValueError(f"p_keep: expected a probability in (0, 1), got {p_keep!r}")
        self.n_masks, self.cells, self.p_keep, self.batch_size = (
            int(n_masks),
            int(cells),
            float(p_keep),
            int(batch_size),
        )

    def _random_masks(self, n: int, spatial: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """``n`` smooth random masks ``(n, 1, *S)``."""
        cell = [-(-s // self.cells) for s in spatial]  # ceil
        up = [(self.cells + 1) * c for c in cell]
        grid = (torch.rand(n, 1, *([self.cells] * len(spatial)), device=device) < self.p_keep).float()
        mode = "bilinear" if len(spatial) == 2 else "trilinear"
        big = F.interpolate(grid, size=up, mode=mode, align_corners=False)
        shifts = [torch.randint(0, c, (n,), device=device) for c in cell]
        idx = [sh[:, None] + torch.arange(s, device=device)[None] for sh, s in zip(shifts, spatial)]
        if len(spatial) == 2:
            masks = big[
                torch.arange(n, device=device)[:, None, None], :, idx[0][:, :, None], idx[1][:, None, :]
            ].permute(0, 3, 1, 2)
        else:
            masks = big[
                torch.arange(n, device=device)[:, None, None, None],
                :,
                idx[0][:, :, None, None],
                idx[1][:, None, :, None],
                idx[2][:, None, None, :],
            ].permute(0, 4, 1, 2, 3)
        return masks.clamp_(0, 1)  # bilinear weights can overshoot 1 by a rounding error

    def _explain(self, x, class_idx, scorer: ClassScorer, logits, reference) -> Explanation:
        spatial = tuple(x.shape[2:])
        saliency = torch.zeros_like(x[:, :1], dtype=torch.float32)
        with torch.no_grad():
            for i in range(x.shape[0]):
                done = 0
                while done < self.n_masks:
                    n = min(self.batch_size, self.n_masks - done)
                    masks = self._random_masks(n, spatial, x.device)
                    batch = composite(x[i : i + 1], masks.to(x.dtype), reference[i : i + 1])
                    p = scorer.prob(scorer.logits(batch), class_idx[i].repeat(n))
                    saliency[i] += (p.view(n, *([1] * (x.ndim - 1))) * masks).sum(0)
                    done += n
        saliency = saliency / (self.n_masks * self.p_keep)
        return self._result(normalise(saliency), class_idx, scorer, logits, reference)
