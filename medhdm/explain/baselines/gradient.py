"""Gradient x (Input - Reference), optionally SmoothGrad and Gaussian-smoothed.

One forward/backward pass (``n_samples`` with SmoothGrad, in one batch):
``|sum_channels d log p_c / dx * (x - r)|``, smoothed with a Gaussian of
``sigma`` voxels and min-max normalised. With the blur reference, ``x - r`` is
the lesion-scale detail of the image, so the product asks "how much does the
class score depend on the detail here". It costs one pass and is often hard to
beat on localisation: it is the bar the mask methods must clear.
"""

from __future__ import annotations

import torch
from torch import nn

from ..base import Explainer, Explanation
from ..maps import normalise
from ..reference import ReferenceSpec, gaussian_blur
from ..scoring import ClassScorer

__all__ = ["GradientInput"]


class GradientInput(Explainer):
    """Gradient x (input - reference), the one-pass baseline.

    Args:
        model: the classifier.
        smooth_sigma: Gaussian smoothing of the map in voxels; default ``max(S) / 48``; 0 for none.
        n_samples: SmoothGrad samples (1: plain gradient, no noise).
        noise_level: SmoothGrad noise std as a fraction of each image's intensity range.
        reference, seed, amp, max_batch: see :class:`~medhdm.explain.base.Explainer`.
    """

    name = "GradientInput"

    def __init__(
        self,
        model: nn.Module,
        *,
        smooth_sigma: float | None = None,
        n_samples: int = 1,
        noise_level: float = 0.1,
        reference: ReferenceSpec = "blur",
        seed: int = 0,
        amp: bool = False,
        max_batch: int | None = None,
    ) -> None:
        super().__init__(model, reference=reference, seed=seed, amp=amp, max_batch=max_batch)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples: expected an int >= 1, got {n_samples!r}")
        if smooth_sigma is not None and smooth_sigma < 0:
            raise ValueError(f"smooth_sigma: expected a non-negative value, got {smooth_sigma!r}")
        self.smooth_sigma = smooth_sigma
        self.n_samples = n_samples
        self.noise_level = float(noise_level)

    def _explain(self, x, class_idx, scorer: ClassScorer, logits, reference) -> Explanation:
        b, n = x.shape[0], self.n_samples
        xs = x.repeat_interleave(n, dim=0)
        if n > 1:
            dims = tuple(range(1, x.ndim))
            span = (x.amax(dim=dims, keepdim=True) - x.amin(dim=dims, keepdim=True)).repeat_interleave(n, dim=0)
            xs = xs + torch.randn_like(xs) * self.noise_level * span
        attribution = scorer.sensitivity(xs, reference.repeat_interleave(n, dim=0), class_idx.repeat_interleave(n))
        attribution = attribution.view(b, n, *x.shape[2:]).mean(1, keepdim=True).abs()
        sigma = self.smooth_sigma if self.smooth_sigma is not None else max(x.shape[2:]) / 48
        if sigma > 0:
            attribution = gaussian_blur(attribution, sigma)
        return self._result(normalise(attribution), class_idx, scorer, logits, reference, backward_passes=1)
