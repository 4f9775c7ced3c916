"""How faithful maps are to the model: deletion/insertion, average drop, confidence gain, sanity check.

All functions take the model, a batch ``x`` ``(B, C, *S)``, the maps ``(B, 1, *S)`` (or
``(B, *S)``), the explained class per image, and return one plain float per image.
"Removing" a voxel replaces it with the reference image, the same reference the
explainers use (:func:`medhdm.explain.reference.make_reference`, default a strong blur),
so a method is scored against the same notion of "absent" it was built with. Scores
are class probabilities (softmax; a single-logit model is read as a sigmoid), as in
the papers.

- :func:`deletion_curve` (Petsiuk et al., 2018, RISE): voxels are removed from (inserted
  into) the image in order of decreasing saliency and the class probability recorded after
  each share. Where to sample: on lesion images the curves change in the first per cent of
  the voxels (a lesion is a few per cent of the image) and are flat after it, so
  :func:`faithfulness_scores` (what ``medhdm evaluate`` reports) samples them by default at
  0 and log-spaced shares from 0.01 % (:func:`~medhdm.metrics.curves.log_fractions`) and
  reads them as ``deletion_auc_log`` / ``insertion_auc_log``, the area over ``log10(share)``
  scaled to [0, 1] (:func:`~medhdm.metrics.curves.area_log_share`). With ``steps=n`` it
  samples ``n`` equal shares and reports the classic ``deletion_auc`` / ``insertion_auc``
  over the share 0..1, as :func:`deletion_auc` / :func:`insertion_auc` do (default 64
  steps; insertion then reads 0.98-0.99 for every method on the demo's 2D cases: its curves
  are near the full score after the first step, 1/64 of the voxels). Lower deletion and higher insertion are
  better. The perturbed images of a case are scored in batches of ``batch_size``.
- :func:`half_evidence_fraction` (``deletion_half`` / ``insertion_half`` in
  :func:`faithfulness_scores`): the share of voxels, in order of decreasing saliency, that
  must be removed (inserted) to take away (restore) half of the evidence, in log-odds
  between the image and the reference (:func:`~medhdm.metrics.curves.half_point`), lower
  is better for both. Log-odds, because probabilities saturate: removing one lesion of three
  leaves ``p`` at 0.999.
- :func:`average_drop` / :func:`increase_in_confidence` (Chattopadhyay et al., 2018,
  Grad-CAM++): the model sees the map-weighted image ``r + S (x - r)`` (with ``r = 0``
  this is the papers' ``S * x``); average drop is ``max(0, p - p_S) / p`` in per cent,
  increase in confidence is 1.0 when ``p_S > p``.
- :func:`sanity_check` (Adebayo et al., 2018, model randomisation): the Spearman rank
  correlation between the maps of the trained model and of a copy whose weights are
  re-drawn at random, each model explained with another explainer seed so that random
  methods are not correlated through shared draws. A method whose maps do not depend on
  the weights scores near 1; a faithful one scores low. :func:`seed_agreement` gives the
  noise floor of random methods: the correlation of two seeds on the trained model.
  For a segmenter the target region is held fixed (the trained model's) and the maps are
  compared within bands of equal distance from it (:func:`banded_spearman`; see
  :func:`sanity_check`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage, stats
from torch import nn

from ..explain.checks import frozen_eval, resolve_class_idx
from ..explain.reference import ReferenceSpec, make_reference
from ..explain.scoring import ClassScorer
from ..explain.targets import RegionSpec, resolve_targets
from .curves import (
    area_linear,
    area_log_share,
    auc_key,
    check_fractions,
    curve_fractions,
    half_point,
    log_fractions,
)

__all__ = [
    "average_drop",
    "deletion_auc",
    "deletion_curve",
    "faithfulness_scores",
    "half_evidence_fraction",
    "increase_in_confidence",
    "insertion_auc",
    "log_fractions",
    "randomised_copy",
    "sanity_check",
    "seed_agreement",
]


def _maps(saliency, x: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(saliency.detach() if hasattr(saliency, "detach") else np.asarray(saliency))
    s = s.to(device=x.device, dtype=torch.float32)
    if s.ndim == x.ndim - 1:
        s = s[:, None]
    if s.shape[0] != x.shape[0] or s.shape[2:] != x.shape[2:] or s.shape[1] != 1:
        raise ValueError(
            f"saliency: expected shape {(x.shape[0], 1, *x.shape[2:])} for x of shape "
            f"{tuple(x.shape)}, got {tuple(s.shape)}"
        )
    if not torch.isfinite(s).all():
        raise ValueError("saliency: the maps have NaN or infinite values")
    return s


def _scores(scorer: ClassScorer, images: torch.Tensor, cls: int, batch_size: int) -> dict[str, torch.Tensor]:
    """The class probability and log-odds of ``images`` ``(N, C, *S)``, each ``(N,)``, in batches."""
    prob, log_odds = [], []
    for lo in range(0, images.shape[0], batch_size):
        chunk = images[lo : lo + batch_size]
        idx = torch.full((chunk.shape[0],), cls, dtype=torch.long, device=chunk.device)
        logits = scorer.logits(chunk)
        prob.append(scorer.prob(logits, idx))
        log_odds.append(scorer.log_odds(logits, idx))
    return {"prob": torch.cat(prob), "log_odds": torch.cat(log_odds)}


def _curves(
    model, x, saliency, class_idx, mode: str, fractions, reference, batch_size, region: RegionSpec = None
) -> dict[str, np.ndarray]:
    """The class probability and log-odds after changing each fraction of the top voxels: ``{"prob",
    "log_odds"}``, each ``(B, F)`` for ``x`` ``(B, C, *S)`` and ``F`` fractions (one model pass per image).
    A segmenter's score is read over each image's target region (:mod:`~medhdm.explain.targets`, resolved
    on ``x`` and held fixed while voxels change)."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode: expected 'deletion' or 'insertion', got {mode!r}")
    maps = _maps(saliency, x)
    with frozen_eval(model), torch.no_grad():
        scorer = ClassScorer(model)
        logits = scorer.logits(x)
        if scorer.segmenter:
            cls = scorer.set_targets(*resolve_targets(logits, class_idx, region))  # the targets: image indices
        else:
            cls = resolve_class_idx(class_idx, logits)
        ref = make_reference(x, reference)
        n_vox = int(np.prod(x.shape[2:]))
        cuts = torch.round(torch.as_tensor(np.asarray(fractions, dtype=np.float64) * n_vox)).long().to(x.device)
        curves: dict[str, list] = {"prob": [], "log_odds": []}
        for b in range(x.shape[0]):
            order = torch.argsort(maps[b, 0].flatten(), descending=True, stable=True)
            rank = torch.empty(n_vox, dtype=torch.long, device=x.device)
            rank[order] = torch.arange(n_vox, device=x.device)
            changed = (rank[None] < cuts[:, None]).reshape(len(cuts), 1, *x.shape[2:]).float()
            start, end = (x[b], ref[b]) if mode == "deletion" else (ref[b], x[b])
            images = start[None] * (1 - changed) + end[None] * changed
            for read, values in _scores(scorer, images, int(cls[b]), batch_size).items():
                curves[read].append(values.cpu().numpy())
    return {read: np.stack(values) for read, values in curves.items()}


def deletion_curve(
    model: nn.Module,
    x: torch.Tensor,
    saliency,
    class_idx: int | Sequence[int] | None = None,
    mode: str = "deletion",
    n_steps: int = 64,
    reference: ReferenceSpec = "blur",
    batch_size: int = 33,
    fractions: Sequence[float] | None = None,
    region: RegionSpec = None,
) -> np.ndarray:
    """The class probability after removing (``"deletion"``) or inserting (``"insertion"``)
    each share of the most salient voxels: ``(B, n_steps + 1)``, column 0 before any change.

    ``fractions`` (e.g. :func:`log_fractions`) samples the curve at those shares of the voxels
    instead of ``n_steps`` equal ones; the result is then ``(B, len(fractions))``. For a segmenter
    the score is the class's over the target ``region`` (as ``explain``'s ``region=``; default its
    predicted mask on ``x``), held fixed along the curve."""
    if fractions is None:
        if n_steps < 1:
            raise ValueError(f"n_steps: expected at least 1, got {n_steps}")
        fractions = np.linspace(0.0, 1.0, n_steps + 1)
    return _curves(model, x, saliency, class_idx, mode, fractions, reference, batch_size, region)["prob"]


def half_evidence_fraction(
    model: nn.Module,
    x: torch.Tensor,
    saliency,
    class_idx: int | Sequence[int] | None = None,
    mode: str = "deletion",
    reference: ReferenceSpec = "blur",
    fractions: Sequence[float] | None = None,
    batch_size: int = 32,
    region: RegionSpec = None,
) -> list[float]:
    """The share of voxels, taken in order of decreasing saliency, that must be removed
    (``"deletion"``) to take away half of the evidence, or inserted into the reference
    (``"insertion"``) to restore half of it, per image (lower is better for both).

    Evidence is measured in log-odds ``o`` of the class, from the reference's ``o(r)`` to the
    image's ``o(x)`` (probabilities saturate: removing one lesion of three leaves ``p`` at
    0.999). Deletion: the first fraction where ``o <= (o(x) + o(r)) / 2``; insertion: where
    ``o >= (o(x) + o(r)) / 2``; interpolated linearly in log-fraction between the samples
    ``fractions`` (default :func:`~medhdm.metrics.curves.log_fractions`, 0 and 0.01 % to 100 %;
    linearly in fraction on the first segment, from 0), see
    :func:`~medhdm.metrics.curves.half_point`. NaN where the image carries no evidence above
    its reference (``o(x) <= o(r)``). ``x`` ``(B, C, *S)``, ``saliency`` ``(B, 1, *S)``; ``region``: a
    segmenter's target, as for :func:`deletion_curve`.
    """
    grid = check_fractions(log_fractions() if fractions is None else fractions)
    curves = _curves(model, x, saliency, class_idx, mode, grid, reference, batch_size, region)["log_odds"]
    return [float(v) for v in half_point(curves, grid, mode)]


def faithfulness_scores(
    model: nn.Module,
    x: torch.Tensor,
    saliency,
    class_idx: int | Sequence[int] | None = None,
    steps: int | None = None,
    reference: ReferenceSpec = "blur",
    batch_size: int = 33,
    region: RegionSpec = None,
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Deletion and insertion read four ways from one set of curves: what ``medhdm evaluate`` reports.

    Each curve is sampled at :func:`~medhdm.metrics.curves.curve_fractions` ``(steps)``: by default
    (``steps=None``) 0 and 41 log-spaced shares from 0.01 % to 100 %, read as ``deletion_auc_log``
    and ``insertion_auc_log`` (area over ``log10(share)``, scaled to [0, 1]); with ``steps=n``,
    ``n`` equal shares read as ``deletion_auc`` and ``insertion_auc`` (area over the share 0..1,
    equal to :func:`deletion_auc` / :func:`insertion_auc` with ``n_steps=n``). Both grids also
    give ``deletion_half`` and ``insertion_half`` (:func:`half_evidence_fraction`, read off the
    same samples: on the equal-step grid only as fine as ``1 / n``).

    Args:
        model, x, saliency, class_idx, reference, batch_size: as :func:`deletion_curve`;
            ``x`` ``(B, C, *S)``, ``saliency`` ``(B, 1, *S)`` or ``(B, *S)``.
        steps: ``None`` (log-spaced shares) or the number of equal shares.
        region: a segmenter's target region (as ``explain``'s ``region=``; default the predicted
            mask on ``x``), held fixed along the curves.
    Returns:
        the scores, ``{column: one value per image}`` (the four columns above), and the
        probability curves ``{"deletion", "insertion"}``, each ``(B, F)``, sampled at
        ``curve_fractions(steps)``.
    """
    grid = curve_fractions(steps)
    area = area_log_share if steps is None else area_linear
    scores: dict[str, list[float]] = {}
    curves: dict[str, np.ndarray] = {}
    for mode in ("deletion", "insertion"):
        read = _curves(model, x, saliency, class_idx, mode, grid, reference, batch_size, region)
        curves[mode] = read["prob"]
        scores[f"{mode}_half"] = [float(v) for v in half_point(read["log_odds"], grid, mode)]
        scores[auc_key(mode, steps)] = [float(v) for v in area(read["prob"], grid)]
    return scores, curves


def _area(curve: np.ndarray) -> list[float]:
    return [float(v) for v in area_linear(curve, np.linspace(0.0, 1.0, curve.shape[1]))]


def deletion_auc(
    model, x, saliency, class_idx=None, n_steps: int = 64, reference: ReferenceSpec = "blur", batch_size: int = 33
) -> list[float]:
    """Area under the deletion curve over the share 0..1, ``n_steps`` equal shares, per image (lower is better).

    The classic AUC; :func:`faithfulness_scores` gives the log-spaced one (see the module docstring)."""
    return _area(deletion_curve(model, x, saliency, class_idx, "deletion", n_steps, reference, batch_size))


def insertion_auc(
    model, x, saliency, class_idx=None, n_steps: int = 64, reference: ReferenceSpec = "blur", batch_size: int = 33
) -> list[float]:
    """Area under the insertion curve over the share 0..1, ``n_steps`` equal shares, per image (higher is better).

    The classic AUC; :func:`faithfulness_scores` gives the log-spaced one (see the module docstring)."""
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


def randomised_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every weight redrawn from N(0, std of that tensor) (0.05 for a constant tensor) and
    every bias 0, from generator ``seed``: the randomised model of :func:`sanity_check`."""
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


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # a constant map has no ranking
    return float(stats.spearmanr(a, b).statistic)


def _with_seed(explainer, seed: int):
    """``explainer`` drawing its random numbers from ``seed`` (medhdm explainers read ``.seed`` per call)."""
    if isinstance(getattr(explainer, "seed", None), int) and not isinstance(explainer.seed, bool):
        explainer.seed = int(seed)
    return explainer


def _targets(model: nn.Module, x: torch.Tensor, class_idx, region) -> tuple[torch.Tensor, dict]:
    """The classes ``(B,)`` to explain and, for a segmenter, ``{"region": masks (B, 1, *S)}`` (else ``{}``)."""
    with frozen_eval(model), torch.no_grad():
        scorer = ClassScorer(model)
        logits = scorer.logits(x)
        if not scorer.segmenter:
            return resolve_class_idx(class_idx, logits), {}
        classes, regions = resolve_targets(logits, class_idx, region)
    return classes, {"region": regions}


def sanity_check(
    make_explainer: Callable[[nn.Module], object],
    model: nn.Module,
    x: torch.Tensor,
    class_idx: int | Sequence[int] | None = None,
    seed: int = 0,
    explainer_seeds: tuple[int, int] | None = (0, 1),
    region: RegionSpec = None,
    bands: float | None = 2.0,
) -> list[float]:
    """Spearman correlation between maps of ``model`` and of a weight-randomised copy, per image.

    Near 0: the map depends on the model (what Adebayo et al., 2018, ask of a map); near 1:
    the map would look the same whatever the weights (it shows the image, not the model).

    Fair to random methods: an explainer that draws random numbers (RISE's masks) would
    correlate with itself through the shared draws if both models were explained with the
    same seed (RISE read 0.70 that way, the shared masks, not the model). By default the
    trained model's explainer runs with seed ``explainer_seeds[0]`` and the randomised
    model's with ``explainer_seeds[1]`` (an explainer with an int ``seed`` attribute, as every
    medhdm explainer has, gets it set; other callables are used as built). Pass
    ``explainer_seeds=None`` to keep the seeds as ``make_explainer`` sets them. The other
    side of the same question, how much a random method's map varies between seeds on the
    *same* model, is :func:`seed_agreement`: report it beside this figure (a value here
    near that agreement means the map ignores the weights; 1.0 there for a deterministic
    method).

    Args:
        make_explainer: builds the explainer for a model, e.g. ``lambda m: HDM(m)``.
        model: the trained classifier (left unchanged; the copy is re-drawn from a normal
            distribution with each weight tensor's own standard deviation, biases zeroed).
        x: ``(B, C, *S)``.
        class_idx: the class explained on both models (default: the trained model's prediction,
            kept for the random copy).
        seed: seed of the randomised weights.
        explainer_seeds: the explainers' seeds for the trained and the randomised model.
        region: a segmenter's target region (:mod:`~medhdm.explain.targets`), resolved on the
            trained model and given to both explainers as a mask (the random copy's own mask
            would be another target).
        bands: a segmenter's maps are compared within bands of this width (voxels) of equal
            distance from the target region (:func:`banded_spearman`); None compares them over
            the whole image, as for a classifier. Why: the region is the question, the same for
            both models, and a convolutional segmenter's mean logit over it depends on the
            region's own voxels and their neighbourhood whatever its weights (the randomised
            UNet's score, too, rises from the reference to the image there). A faithful map of
            either model then ranks voxels by their proximity to the region, and over the whole
            image two faithful maps correlate through it (on the shipped 2D UNet, HDM's maps of
            the trained and of the randomised model each correlated 0.6-0.75 with proximity to
            the region). Within a band the region's footprint is the same for every voxel, and
            what is left to rank them is the model. A map that shows the image (Gradient x
            Input's ``x - r``) still correlates there (0.55 in 2D, 0.7 in 3D). Classifiers ignore it.
    Returns:
        one correlation per image (NaN where either map is constant).
    """
    if bands is not None and not (isinstance(bands, (int, float)) and not isinstance(bands, bool) and bands > 0):
        raise ValueError(f"bands: expected None or a band width > 0 (voxels), got {bands!r}")
    trained, random_maps, regions = sanity_maps(make_explainer, model, x, class_idx, seed, explainer_seeds, region)
    return map_correlations(trained, random_maps, regions, bands)


def sanity_maps(
    make_explainer: Callable[[nn.Module], object],
    model: nn.Module,
    x: torch.Tensor,
    class_idx: int | Sequence[int] | None = None,
    seed: int = 0,
    explainer_seeds: tuple[int, int] | None = (0, 1),
    region: RegionSpec = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The maps :func:`sanity_check` compares: the trained model's, the randomised copy's (both
    ``(B, 1, *S)``) and a segmenter's fixed target regions ``(B, 1, *S)`` (None for a classifier);
    the arguments as for :func:`sanity_check`."""
    cls, target = _targets(model, x, class_idx, region)
    trained_explainer = make_explainer(model)
    random_explainer = make_explainer(randomised_copy(model, seed))
    if explainer_seeds is not None:
        _with_seed(trained_explainer, explainer_seeds[0])
        _with_seed(random_explainer, explainer_seeds[1])
    return trained_explainer(x, cls, **target), random_explainer(x, cls, **target), target.get("region")


def map_correlations(
    trained: torch.Tensor, random_maps: torch.Tensor, regions: torch.Tensor | None = None, bands: float | None = 2.0
) -> list[float]:
    """Per image, the Spearman correlation of two maps ``(B, 1, *S)``: within bands of width ``bands``
    around ``regions`` (:func:`banded_spearman`) when both are given, else over the whole image."""
    if regions is not None and bands is not None:
        pairs = zip(trained[:, 0].cpu().numpy(), random_maps[:, 0].cpu().numpy(), regions[:, 0].cpu().numpy())
        return [banded_spearman(a, b, r, float(bands)) for a, b, r in pairs]
    return [_spearman(a, b) for a, b in zip(trained.flatten(1).cpu().numpy(), random_maps.flatten(1).cpu().numpy())]


def banded_spearman(a: np.ndarray, b: np.ndarray, region: np.ndarray, width: float = 2.0) -> float:
    """Spearman correlation of maps ``a`` and ``b`` (``*S``) within bands of equal distance from ``region``.

    The voxels are grouped by their signed Euclidean distance (in voxels) to the region's
    boundary, ``floor(d / width)`` (negative inside the region); the result is the mean of
    each band's Spearman correlation weighted by its voxel count (bands of fewer than 3
    voxels, or where either map is constant, left out). NaN when no band is left.
    """
    region = np.asarray(region, dtype=bool)
    if not region.any() or region.all():
        return _spearman(a.ravel(), b.ravel())
    distance = ndimage.distance_transform_edt(~region) - ndimage.distance_transform_edt(region)
    band = np.floor(distance / width).astype(np.int64).ravel()
    a, b = a.ravel(), b.ravel()
    total, weight = 0.0, 0
    for k in np.unique(band):
        sel = band == k
        n = int(sel.sum())
        if n < 3 or np.ptp(a[sel]) == 0 or np.ptp(b[sel]) == 0:
            continue
        total += n * float(stats.spearmanr(a[sel], b[sel]).statistic)
        weight += n
    return total / weight if weight else float("nan")


def seed_agreement(
    make_explainer: Callable[[nn.Module], object],
    model: nn.Module,
    x: torch.Tensor,
    class_idx: int | Sequence[int] | None = None,
    seeds: tuple[int, int] = (0, 1),
    region: RegionSpec = None,
) -> list[float]:
    """Spearman correlation between two maps of the same (trained) model drawn with two explainer seeds.

    The noise floor of :func:`sanity_check` for random methods: how much of a map is the
    method's own randomness. 1.0 for a deterministic method (HDM, Gradient x Input,
    occlusion); a random method (RISE) reads below 1, and its sanity figure is only
    meaningful well below this agreement.
    """
    cls, target = _targets(model, x, class_idx, region)
    first = _with_seed(make_explainer(model), seeds[0])(x, cls, **target)
    second = _with_seed(make_explainer(model), seeds[1])(x, cls, **target)
    return [_spearman(a, b) for a, b in zip(first.flatten(1).cpu().numpy(), second.flatten(1).cpu().numpy())]
