"""How faithful maps are to the model: deletion/insertion, average drop, confidence gain, sanity check.

All functions take the model, a batch ``x`` ``(B, C, *S)``, the maps ``(B, 1, *S)`` (or
``(B, *S)``), the explained class per image, and return one plain float per image.
"Removing" a voxel replaces it with the reference image, the same reference the
explainers use (:func:`medhdm.explain.reference.make_reference`, default a strong blur),
so a method is scored against the same notion of "absent" it was built with. Scores
are class probabilities (softmax; a single-logit model is read as a sigmoid), as in
the papers.

- :func:`deletion_auc` / :func:`insertion_auc` (Petsiuk et al., 2018, RISE): voxels are
  removed from (inserted into) the image in order of decreasing saliency, in
  ``n_steps`` equal shares (default 64: with small lesions, a few per cent of the voxels,
  coarser steps saturate after the first share and stop telling methods apart); the
  probability after each share is recorded, and the area under that curve over the
  removed fraction 0..1 (trapezoid rule) is returned. Lower
  deletion and higher insertion are better. All ``n_steps + 1`` perturbed images of a
  case are scored in batches of ``batch_size``.
- :func:`average_drop` / :func:`increase_in_confidence` (Chattopadhyay et al., 2018,
  Grad-CAM++): the model sees the map-weighted image ``r + S (x - r)`` (with ``r = 0``
  this is the papers' ``S * x``); average drop is ``max(0, p - p_S) / p`` in per cent,
  increase in confidence is 1.0 when ``p_S > p``.
- :func:`sanity_check` (Adebayo et al., 2018, model randomisation): the Spearman rank
  correlation between the maps of the trained model and of a copy whose weights are
  re-drawn at random. A method whose maps do not depend on the weights scores near 1;
  a faithful one scores low.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from ..explain.checks import frozen_eval, resolve_class_idx
from ..explain.reference import ReferenceSpec, make_reference
from ..explain.scoring import ClassScorer

__all__ = ["average_drop", "deletion_auc", "deletion_curve", "increase_in_confidence", "insertion_auc",
           "sanity_check"]


def _maps(saliency, x: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(saliency.detach() if hasattr(saliency, "detach") else np.asarray(saliency))
    s = s.to(device=x.device, dtype=torch.float32)
    if s.ndim == x.ndim - 1:
        s = s[:, None]
    if s.shape[0] != x.shape[0] or s.shape[2:] != x.shape[2:] or s.shape[1] != 1:
        raise ValueError(f"saliency: expected shape {(x.shape[0], 1, *x.shape[2:])} for x of shape "
                         f"{tuple(x.shape)}, got {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError("saliency: the maps have NaN or infinite values")
    return s


def _probabilities(scorer: ClassScorer, images: torch.Tensor, cls: int, batch_size: int) -> torch.Tensor:
    out = []
    for lo in range(0, images.shape[0], batch_size):
        chunk = images[lo : lo + batch_size]
        idx = torch.full((chunk.shape[0],), cls, dtype=torch.long, device=chunk.device)
        out.append(scorer.prob(scorer.logits(chunk), idx))
    return torch.cat(out)


def deletion_curve(
    model: nn.Module,
    x: torch.Tensor,
    saliency,
    class_idx: int | Sequence[int] | None = None,
    mode: str = "deletion",
    n_steps: int = 64,
    reference: ReferenceSpec = "blur",
    batch_size: int = 33,
) -> np.ndarray:
    """The class probability after removing (``"deletion"``) or inserting (``"insertion"``)
    each share of the most salient voxels: ``(B, n_steps + 1)``, column 0 before any change."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode: expected 'deletion' or 'insertion', got {mode!r}")
    if n_steps < 1:
        raise ValueError(f"n_steps: expected at least 1, got {n_steps}")
    maps = _maps(saliency, x)
    with frozen_eval(model), torch.no_grad():
        scorer = ClassScorer(model)
        cls = resolve_class_idx(class_idx, scorer.logits(x))
        ref = make_reference(x, reference)
        n_vox = int(np.prod(x.shape[2:]))
        curves = []
        for b in range(x.shape[0]):
            order = torch.argsort(maps[b, 0].flatten(), descending=True, stable=True)
            rank = torch.empty(n_vox, dtype=torch.long, device=x.device)
            rank[order] = torch.arange(n_vox, device=x.device)
            cuts = torch.round(torch.linspace(0, n_vox, n_steps + 1, device=x.device)).long()
            changed = (rank[None] < cuts[:, None]).reshape(n_steps + 1, 1, *x.shape[2:]).float()
            start, end = (x[b], ref[b]) if mode == "deletion" else (ref[b], x[b])
            images = start[None] * (1 - changed) + end[None] * changed
            curves.append(_probabilities(scorer, images, int(cls[b]), batch_size).cpu().numpy())
    return np.stack(curves)


def _area(curve: np.ndarray) -> list[float]:
    fractions = np.linspace(0.0, 1.0, curve.shape[1])
    return [float(np.trapezoid(c, fractions)) for c in curve]


def deletion_auc(model, x, saliency, class_idx=None, n_steps: int = 64, reference: ReferenceSpec = "blur",
                 batch_size: int = 33) -> list[float]:
    """Area under the deletion curve per image (lower is better), see the module docstring."""
    return _area(deletion_curve(model, x, saliency, class_idx, "deletion", n_steps, reference, batch_size))


def insertion_auc(model, x, saliency, class_idx=None, n_steps: int = 64, reference: ReferenceSpec = "blur",
                  batch_size: int = 33) -> list[float]:
    """Area under the insertion curve per image (higher is better), see the module docstring."""
    return _area(deletion_curve(model, x, saliency, class_idx, "insertion", n_steps, reference, batch_size))


def _masked_scores(model, x, saliency, class_idx, reference) -> tuple[torch.Tensor, torch.Tensor]:
    maps = _maps(saliency, x)
    if maps.min() < 0 or maps.max() > 1 + 1e-6:
        raise ValueError("saliency: average drop needs maps in [0, 1]")
    with frozen_eval(model), torch.no_grad():
        scorer = ClassScorer(model)
        logits = scorer.logits(x)
        cls = resolve_class_idx(class_idx, logits)
        ref = make_reference(x, reference)
        masked = ref + maps * (x - ref)
        return scorer.prob(logits, cls), scorer.prob(scorer.logits(masked), cls)


def average_drop(model, x, saliency, class_idx=None, reference: ReferenceSpec = 0.0) -> list[float]:
    """``100 * max(0, p - p_S) / p`` per image (lower is better), see the module docstring.

    ``reference`` defaults to zeros, the papers' ``S * x``; pass the explainer's to compare like with like.
    """
    p, p_masked = _masked_scores(model, x, saliency, class_idx, reference)
    return [float(v) for v in (100.0 * torch.clamp(p - p_masked, min=0) / p.clamp_min(1e-12)).cpu()]


def increase_in_confidence(model, x, saliency, class_idx=None, reference: ReferenceSpec = 0.0) -> list[float]:
    """1.0 where the map-weighted image scores higher than the image, else 0.0."""
    p, p_masked = _masked_scores(model, x, saliency, class_idx, reference)
    return [float(v) for v in (p_masked > p).float().cpu()]


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    clone = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in clone.named_parameters():
            scale = float(param.std()) if param.numel() > 1 and float(param.std()) > 0 else 0.05
            if name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return clone


def sanity_check(
    make_explainer: Callable[[nn.Module], object],
    model: nn.Module,
    x: torch.Tensor,
    class_idx: int | Sequence[int] | None = None,
    seed: int = 0,
) -> list[float]:
    """Spearman correlation between maps of ``model`` and of a weight-randomised copy, per image.

    Args:
        make_explainer: builds the explainer for a model, e.g. ``lambda m: HDM(m, seed=0)``.
        model: the trained classifier (left unchanged; the copy is re-drawn from a normal
            distribution with each weight tensor's own standard deviation, biases zeroed).
        x: ``(B, C, *S)``.
        class_idx: the class explained on both models (default: the trained model's prediction,
            kept for the random copy).
    """
    with frozen_eval(model), torch.no_grad():
        cls = resolve_class_idx(class_idx, ClassScorer(model).logits(x))
    trained = make_explainer(model)(x, cls)
    random_maps = make_explainer(_randomised(model, seed))(x, cls)
    out = []
    for a, b in zip(trained.flatten(1).cpu().numpy(), random_maps.flatten(1).cpu().numpy()):
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            out.append(float("nan"))  # a constant map has no ranking
        else:
            out.append(float(stats.spearmanr(a, b).statistic))
    return out
