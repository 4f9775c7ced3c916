"""Occlusion sensitivity through ``monai.visualize.OcclusionSensitivity``.

MONAI returns, for every voxel, the class probabilities when a patch centred
there is occluded. medhdm's map is the drop of the target class probability,
``p_c(x) - p_c(x occluded)``, clipped at 0 and min-max normalised.
MONAI explains one image at a time; batches are looped over.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from monai.visualize import OcclusionSensitivity
from torch import nn

from ..base import Explainer, Explanation
from ..maps import normalise
from ..scoring import ClassScorer

__all__ = ["Occlusion"]


class Occlusion(Explainer):
    """Occlusion sensitivity (Zeiler and Fergus, 2014) via MONAI.

    Args:
        model: the classifier.
        mask_size: occluded patch size in voxels (int or one per axis); default ``max(S) / 10``, odd.
        overlap: overlap of neighbouring patches in ``[0, 1)``.
        mode: MONAI's fill: ``"gaussian"``, ``"mean_patch"``, ``"mean_img"`` or a float.
        n_batch: patches per forward pass.
        seed, amp, max_batch: see :class:`~medhdm.explain.base.Explainer`.
    """

    name = "Occlusion"
    uses_reference = False

    def __init__(
        self,
        model: nn.Module,
        *,
        mask_size: int | Sequence[int] | None = None,
        overlap: float = 0.6,
        mode: str | float = "gaussian",
        n_batch: int = 32,
        seed: int = 0,
        amp: bool = False,
        max_batch: int | None = None,
    ) -> None:
        super().__init__(model, seed=seed, amp=amp, max_batch=max_batch)
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap: expected a value in [0, 1), got {overlap!r}")
        sizes = [mask_size] if isinstance(mask_size, int) or mask_size is None else list(mask_size)
        if not all(s is None or (isinstance(s, int) and not isinstance(s, bool) and s >= 1) for s in sizes):
            raise ValueError(f"mask_size: expected None, a positive int or one per axis, got {mask_size!r}")
        if isinstance(n_batch, bool) or not isinstance(n_batch, int) or n_batch < 1:
            raise ValueError(f"n_batch: expected a positive int, got {n_batch!r}")
        self.mask_size = mask_size
        self.overlap = overlap
        self.mode = mode
        self.n_batch = n_batch

    def _explain(self, x, class_idx, scorer: ClassScorer, logits, reference) -> Explanation:
        size = self.mask_size
        if size is None:
            size = max(3, int(round(max(x.shape[2:]) / 10)) | 1)
        p = scorer.prob(logits, class_idx)
        maps = []
        with torch.no_grad(), warnings.catch_warnings():
            # MONAI's sliding-window indexing triggers PyTorch deprecation warnings
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
            for i in range(x.shape[0]):
                net = scorer.as_logits_module(class_idx[i : i + 1])
                occ = OcclusionSensitivity(
                    net, mask_size=size, n_batch=self.n_batch, verbose=False, mode=self.mode, overlap=self.overlap
                )
                sens, _ = occ(x[i : i + 1])
                sens = torch.as_tensor(sens)
                # MONAI: (1, K, *S) for per_channel=False
                maps.append((p[i] - sens[:, int(scorer.class_of(class_idx[i : i + 1]))]).clamp_min(0)[:, None])
        saliency = normalise(torch.cat(maps).float())
        return self._result(saliency, class_idx, scorer, logits, None)
