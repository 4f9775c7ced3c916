"""The explainer interface shared by HDM, MDM, NeuroMask and the baselines.

Modelled on ``monai.visualize.GradCAM``::

    explainer = HDM(model)
    saliency = explainer(x, class_idx=None)        # (B, 1, *S) in [0, 1], on x's device
    result = explainer.explain(x, class_idx=None)  # an Explanation with everything else

Subclasses implement :meth:`Explainer._explain`. The base class checks the
input, resolves ``class_idx``, builds the reference image, puts the model in
eval mode with frozen parameters for the duration of the call (and restores its
train/eval flags and ``requires_grad`` afterwards), and seeds a private copy of
the random number generators so results are reproducible and the caller's
global RNG state is left alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .checks import check_images, check_model, frozen_eval, resolve_class_idx
from .findings import Finding, explanation_findings
from .reference import ReferenceSpec, make_reference
from .scoring import ClassScorer
from .targets import RegionSpec, resolve_targets
from .units import check_spacing, input_spacing

__all__ = [
    "Explainer",
    "Explanation",
    "Finding",
    "StageRecord",
    "explain_at",
    "is_out_of_memory",
    "merge_explanations",
]


#: attributes that do not change a map (the model is identified apart; the memory guard only splits batches)
_NOT_SETTINGS = ("model", "max_batch")


class _OutOfMemory(RuntimeError):
    """An out-of-memory error during a call, with the most images the call had sent to the model at once."""

    def __init__(self, message: str, largest_batch: int) -> None:
        super().__init__(message)
        self.largest_batch = largest_batch


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocator's out-of-memory error (CUDA's, or the CPU allocator's)."""
    if isinstance(err, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _plain(value):
    """``value`` as JSON-able data: see :meth:`Explainer.settings`."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.numel() <= 16:
        return value.detach().cpu().tolist()
    return repr(value)


@dataclass
class StageRecord:
    """One HDM stage (one DM module) for a batch of ``B`` images.

    Images that had stopped before this stage have all-zero maps, ``active`` False
    and ``alpha`` 0.

    Attributes:
        map: the stage's normalised map ``M_l`` ``(B, 1, *S)``.
        removed: the region removed after the stage, ``R_l`` ``(B, 1, *S)``.
        score_before: ``s(x_l)``, probability of the target class on the stage's input ``(B,)``.
        score_after: ``s(x_{l+1})``, after removing ``R_l`` ``(B,)``.
        log_odds_before, log_odds_after: the same in log-odds ``(B,)``.
        alpha: the stage's fusion weight ``(B,)``.
        active: whether the stage ran for each image ``(B,)``.
        sensitivity: HDM's pixel refinement: the stage input's first-order sensitivity
            ``|d o / d m|`` at a full-resolution mask ``m = 1``, smoothed and normalised,
            ``(B, 1, *S)``; ``None`` when HDM runs without refinement.
        magnitude: HDM's pixel refinement: the magnitude of the same gradient, smoothed and normalised,
            ``a_l`` ``(B, 1, *S)``; ``None`` without refinement or with ``refine_by`` other than
            ``"positive_gradient"``.
    """

    map: torch.Tensor
    removed: torch.Tensor
    score_before: torch.Tensor
    score_after: torch.Tensor
    log_odds_before: torch.Tensor
    log_odds_after: torch.Tensor
    alpha: torch.Tensor
    active: torch.Tensor
    sensitivity: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None


@dataclass
class Explanation:
    """The full record of one call of an explainer on a batch of ``B`` images.

    Attributes:
        saliency: the map ``(B, 1, *S)``, float in ``[0, 1]``, on the input grid and device.
        class_idx: the explained class per image ``(B,)``.
        score: ``s(x)``, the probability of that class on the input ``(B,)`` (for a segmenter, read
            from the mean logits over the target region: :mod:`~medhdm.explain.scoring`).
        reference_score: ``s(r)``, on the reference image ``(B,)`` (NaN where a method uses none).
        method: the explainer's name.
        stages: HDM's per-stage records (empty for single-stage methods).
        masks: per mask grid, its final mask ``(B, 1, *S)``; keys like ``"stage1/benchmark/6x6"``.
            HDM with pixel refinement also keeps its fused mask map before refinement, ``"fused"``.
        forward_passes: model forward passes run for this call (each on a batch).
        backward_passes: backward passes run for this call.
        images_evaluated: images (composites) pushed through the model in total.
        max_batch: the memory guard's limit this call ran with (None: no limit; smaller than
            the explainer's ``max_batch`` after an out-of-memory retry).
        spacing: the voxel spacing in mm that the method read its physical sizes from, per image
            and spatial axis ``(B, d)`` (float64, CPU); None when it worked in voxels (no spacing
            known, or a method without physical units: every method but HDM).
        region: a segmenter's target region per image ``(B, 1, *S)`` (bool), fixed for the whole
            call (:mod:`~medhdm.explain.targets`); None for a classifier.
        findings: per image, its :class:`~medhdm.explain.findings.Finding` list, highest score first
            (HDM's from its stages, ranked by evidence; every other method's from its map, ranked by
            the map's peak; :mod:`~medhdm.explain.findings`). Measuring their evidence takes one more
            batched model call, not counted in ``forward_passes``. Empty for a segmenter's explanation (none
            yet) and when :meth:`Explainer.explain` ran with ``findings=False`` (as ``explainer(x)`` does).
    """

    saliency: torch.Tensor
    class_idx: torch.Tensor
    score: torch.Tensor
    reference_score: torch.Tensor
    method: str
    stages: list[StageRecord] = field(default_factory=list)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    forward_passes: int = 0
    backward_passes: int = 0
    images_evaluated: int = 0
    max_batch: int | None = None
    spacing: torch.Tensor | None = None
    region: torch.Tensor | None = None
    findings: list[list[Finding]] = field(default_factory=list)


class Explainer:
    """Base class of every medhdm explainer.

    Args:
        model: a classifier ``(B, C, *S) -> (B, K)`` logits (``K = 1``: a sigmoid model), or a
            segmenter ``(B, C, *S) -> (B, K, *S)`` logit maps, explained for a class over a region
            (:mod:`~medhdm.explain.targets`).
        reference: what "removed" means (see :func:`medhdm.explain.reference.make_reference`).
        seed: seed of the private RNG used for the call (only methods that draw random
            numbers use it; the caller's global RNG state is left as it was).
        amp: run forward passes under ``torch.autocast`` on CUDA.
        max_batch: memory guard: the most images sent through the model at once (None: no
            limit; a mask method sends all its masks of all images in one batch per step).
            Larger batches run in checkpointed chunks with the same result (see
            :class:`~medhdm.explain.scoring.ClassScorer`). Whatever the setting, a call that runs
            out of memory is run again with the limit halved (down to 1) before it fails.
    """

    name = "explainer"
    uses_reference = True

    def __init__(
        self,
        model: nn.Module,
        *,
        reference: ReferenceSpec = "blur",
        seed: int = 0,
        amp: bool = False,
        max_batch: int | None = None,
    ) -> None:
        self.model = check_model(model)
        ClassScorer(model, max_batch=max_batch)  # checks max_batch
        self.max_batch = max_batch
        self.reference = reference
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        self.seed = seed
        self.amp = bool(amp)

    def settings(self) -> dict:
        """The method's settings as plain JSON values (the model excluded), for provenance records.

        Every public attribute set on the explainer: numbers, strings, ``None``, tuples and
        lists of them, dataclasses (a :class:`~medhdm.explain.masks.MaskObjective`) as dicts,
        anything else as its ``repr``. Two explainers with equal settings on the same model
        give the same maps.
        """
        settings = {k: _plain(v) for k, v in sorted(vars(self).items()) if k not in _NOT_SETTINGS}
        return {"method": self.name, **settings}

    #: whether the method reads sizes in mm when the input's spacing is known (see :mod:`~medhdm.explain.units`)
    reads_spacing = False

    def __call__(
        self,
        x: torch.Tensor,
        class_idx: int | Sequence[int] | torch.Tensor | None = None,
        spacing=None,
        region: RegionSpec = None,
    ) -> torch.Tensor:
        """The saliency map ``(B, 1, *S)`` in ``[0, 1]`` for images ``x`` ``(B, C, *S)`` (see :meth:`explain`); the
        findings are not measured (``findings=False``: no evidence pass)."""
        return self.explain(x, class_idx, spacing, region=region, findings=False).saliency

    def explain(
        self,
        x: torch.Tensor,
        class_idx: int | Sequence[int] | torch.Tensor | None = None,
        spacing=None,
        region: RegionSpec = None,
        findings: bool = True,
    ) -> Explanation:
        """Explain ``x`` ``(B, C, *S)`` for ``class_idx`` (None: the predicted class) and return the full record.

        ``region`` (segmenters only): the target region, ``"predicted"`` (None: the model's own
        mask for the class), ``"component:k"`` or a mask (:mod:`~medhdm.explain.targets`); the
        explained score is the class's mean logit over it, the region fixed for the whole call.

        ``spacing``: the voxel size in mm per spatial axis, ``d`` values for the batch or ``(B, d)``
        one row per image; None reads it from a MONAI ``MetaTensor`` ``x`` (its affine), else it is
        unknown. Methods with physical units (:attr:`reads_spacing`: HDM) then size their grids and
        Gaussians in mm (:mod:`~medhdm.explain.units`); the others ignore it. Images of different
        spacing are explained in groups of equal spacing, each group as one batch.

        ``findings``: measure the findings (:attr:`Explanation.findings`, one more batched model call for
        their evidence); False leaves ``findings`` empty and makes no model call for them.
        """
        if not isinstance(findings, bool):
            raise TypeError(f"findings: expected True or False, got {type(findings).__name__}")
        spacing = input_spacing(x, spacing)
        x = check_images(x)
        if isinstance(region, np.ndarray):
            region = torch.from_numpy(region)
        sizes = None  # the findings' sizes and suppression radius read the spacing whatever the method
        if spacing is not None:
            spacing = check_spacing(spacing, x.shape[0], x.ndim - 2)  # a bad spacing fails for every method
            sizes = spacing
            if not self.reads_spacing:
                spacing = None
            elif not (spacing == spacing[0]).all():
                return self._explain_by_spacing(x, class_idx, spacing, region, findings)
        max_batch = self.max_batch
        while True:
            try:
                return self._explain_once(x, class_idx, max_batch, spacing, region, sizes, findings)
            except _OutOfMemory as err:
                if err.largest_batch <= 1:
                    raise MemoryError(
                        f"{self.name}: out of memory with one image per model call (input {tuple(x.shape)}); "
                        "explain fewer or smaller images, or use a device with more memory"
                    ) from err
                max_batch = err.largest_batch // 2
                if x.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _explain_by_spacing(
        self, x: torch.Tensor, class_idx, spacing: np.ndarray, region=None, findings: bool = True
    ) -> Explanation:
        """:meth:`explain` of images of several spacings ``(B, d)``: one call per spacing, merged in input order."""
        b = x.shape[0]
        rows, group = np.unique(spacing, axis=0, return_inverse=True)
        if not (class_idx is None or isinstance(class_idx, int)):
            class_idx = torch.as_tensor(class_idx if isinstance(class_idx, torch.Tensor) else list(class_idx))
            if class_idx.numel() != b:
                raise ValueError(f"class_idx: expected one class index per image ({b}), got {class_idx.numel()}")
            class_idx = class_idx.reshape(-1)
        parts = []
        for g, row in enumerate(rows):
            idx = torch.from_numpy(np.flatnonzero(group.reshape(-1) == g))
            targets = class_idx if class_idx is None or isinstance(class_idx, int) else class_idx[idx]
            regions = region[idx.to(region.device)] if _per_image_mask(region, b) else region
            parts.append((idx, self.explain(x[idx.to(x.device)], targets, row, region=regions, findings=findings)))
        return merge_explanations(parts, b)

    def _explain_once(
        self,
        x: torch.Tensor,
        class_idx,
        max_batch: int | None,
        spacing=None,
        region=None,
        sizes=None,
        findings: bool = True,
    ) -> Explanation:
        """:meth:`explain` with at most ``max_batch`` images per model call (``sizes``: the ``(B, d)`` spacing
        the findings read, or None; ``findings``: whether to measure them); an out-of-memory error is raised as
        :class:`_OutOfMemory` with the largest model call made."""
        devices = [x.device] if x.device.type == "cuda" else []
        with frozen_eval(self.model), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            scorer = ClassScorer(self.model, amp=self.amp, max_batch=max_batch)
            try:
                result = self._run(x, class_idx, scorer, spacing, region)
                if findings and result.region is None:  # a classifier (a segmenter's: not defined yet)
                    result.findings = self._findings(result, x, scorer, sizes)
                return result
            except Exception as err:  # noqa: BLE001 - re-raised as it was unless it is an out-of-memory error
                if is_out_of_memory(err):
                    raise _OutOfMemory(str(err), scorer.largest_batch) from err
                raise

    def _run(
        self, x: torch.Tensor, class_idx, scorer: ClassScorer, spacing: np.ndarray | None = None, region=None
    ) -> Explanation:
        """Score ``x``, resolve the targets, build the reference, and run the method (with ``spacing``
        ``(B, d)`` for a method that :attr:`reads_spacing`).

        The method sees one target per image: the class for a classifier, the image's index into
        the scorer's (class, region) targets for a segmenter (:mod:`~medhdm.explain.scoring`)."""
        with torch.no_grad():
            try:
                logits = scorer.logits(x)
            except (TypeError, ValueError) as err:
                if str(err).startswith("model:"):
                    raise
                raise ValueError(f"x: the model rejected input of shape {tuple(x.shape)}: {err}") from err
            except RuntimeError as err:
                if is_out_of_memory(err):
                    raise
                raise ValueError(
                    f"x: the model rejected input of shape {tuple(x.shape)} "
                    f"({x.shape[1]} channel(s), spatial size {tuple(x.shape[2:])}): {err}"
                ) from err
        classes, targets = _targets(scorer, logits, class_idx, region)
        if spacing is None:
            reference = make_reference(x, self.reference) if self.uses_reference else None
            result = self._explain(x, targets, scorer, logits, reference)
        else:
            reference = self._make_reference(x, spacing) if self.uses_reference else None
            result = self._explain(x, targets, scorer, logits, reference, spacing=spacing)
            result.spacing = torch.from_numpy(spacing)
        result.class_idx = classes
        result.region = scorer.regions
        result.forward_passes = scorer.passes
        result.images_evaluated = scorer.images
        result.max_batch = scorer.max_batch
        result.saliency = result.saliency.to(device=x.device, dtype=torch.float32).clamp_(0, 1)
        return result

    def _findings(self, result: Explanation, x: torch.Tensor, scorer: ClassScorer, sizes) -> list[list[Finding]]:
        """The findings of ``result`` (:func:`~medhdm.explain.findings.explanation_findings`), their evidence
        measured against the method's reference (a blur for a method without one)."""
        spacing = None if result.spacing is None else result.spacing.numpy()
        if self.uses_reference and spacing is not None:
            reference = self._make_reference(x, spacing)
        else:
            reference = make_reference(x, self.reference if self.uses_reference else "blur")
        with frozen_eval(self.model), torch.no_grad():  # a method's hooks may have left the model in train mode
            logits = scorer.logits(x)
            return explanation_findings(result, x, reference, scorer, logits, sizes)

    def _make_reference(self, x: torch.Tensor, spacing: np.ndarray) -> torch.Tensor:
        """The reference of images ``x`` ``(B, C, *S)`` of known ``spacing`` (methods with physical units)."""
        return make_reference(x, self.reference)

    def _explain(
        self,
        x: torch.Tensor,
        class_idx: torch.Tensor,
        scorer: ClassScorer,
        logits: torch.Tensor,
        reference: torch.Tensor | None,
    ) -> Explanation:
        raise NotImplementedError

    def _result(
        self,
        saliency: torch.Tensor,
        class_idx: torch.Tensor,
        scorer: ClassScorer,
        logits: torch.Tensor,
        reference: torch.Tensor | None,
        **record,
    ) -> Explanation:
        """An :class:`Explanation` of this method with the scores filled in; ``record`` adds fields."""
        return Explanation(
            saliency=saliency,
            class_idx=class_idx,
            score=scorer.prob(logits, class_idx),
            reference_score=self._reference_score(scorer, reference, class_idx),
            method=self.name,
            **record,
        )

    def _reference_score(
        self, scorer: ClassScorer, reference: torch.Tensor | None, class_idx: torch.Tensor
    ) -> torch.Tensor:
        if reference is None:
            return torch.full(class_idx.shape, float("nan"), device=class_idx.device)
        with torch.no_grad():
            return scorer.prob(scorer.logits(reference), class_idx)


def _per_image_mask(region, batch: int) -> bool:
    """Whether ``region`` is a mask with one row per image of a batch of ``batch`` (``batch > 1``)."""
    return hasattr(region, "shape") and len(region.shape) > 2 and region.shape[0] == batch and batch > 1


def _targets(scorer: ClassScorer, logits: torch.Tensor, class_idx, region) -> tuple[torch.Tensor, torch.Tensor]:
    """The classes ``(B,)`` and the targets the method passes to the scores ``(B,)``: the classes of a
    classifier; for a segmenter the image indices, its (class, region) targets set on ``scorer``."""
    if not scorer.segmenter:
        if region is not None:
            raise ValueError(
                f"region: the model is a classifier (output of shape {tuple(logits.shape)}); "
                "a target region applies to segmentation models, output (B, K, *S)"
            )
        classes = resolve_class_idx(class_idx, logits)
        return classes, classes
    classes, regions = resolve_targets(logits, class_idx, region)
    return classes, scorer.set_targets(classes, regions)


def _scatter(parts: list[tuple[torch.Tensor, torch.Tensor | None]], batch: int, fill: float = 0.0):
    """Per-image tensors of several groups ``(n_g, ...)`` put back at their images' places ``(B, ...)``."""
    present = [(idx, v) for idx, v in parts if v is not None]
    if not present:
        return None
    first = present[0][1]
    out = torch.full((batch, *first.shape[1:]), fill, dtype=first.dtype, device=first.device)
    for idx, value in present:
        out[idx.to(out.device)] = value.to(out.device)
    return out


def _stage_filler(last: StageRecord) -> StageRecord:
    """A stage that did not run for a group whose last stage was ``last``: no map, its region kept, no scores."""
    nan = torch.full_like(last.score_before, float("nan"))
    return StageRecord(
        map=torch.zeros_like(last.map),
        removed=last.removed,
        score_before=nan,
        score_after=nan,
        log_odds_before=nan,
        log_odds_after=nan,
        alpha=torch.zeros_like(last.alpha),
        active=torch.zeros_like(last.active),
        sensitivity=None if last.sensitivity is None else torch.zeros_like(last.sensitivity),
        magnitude=None if last.magnitude is None else torch.zeros_like(last.magnitude),
    )


def merge_explanations(parts: Sequence[tuple[torch.Tensor, Explanation]], batch: int) -> Explanation:
    """One :class:`Explanation` of ``batch`` images from explanations of groups of them.

    Args:
        parts: per group, the indices of its images in the batch ``(n_g,)`` and its explanation.
        batch: ``B``.
    Returns:
        the per-image fields in batch order; stages a group did not reach as stopped stages (zero
        maps, NaN scores, ``alpha`` 0, its last region kept); masks a group does not have (another
        grid) as zeros; pass counts summed; ``max_batch`` the smallest limit a group ran with.
    """
    first = parts[0][1]

    def field_of(get, fill: float = 0.0):
        return _scatter([(idx, get(e)) for idx, e in parts], batch, fill)

    levels = max(len(e.stages) for _, e in parts)
    stages = []
    for level in range(levels):
        records = [(idx, e.stages[level] if level < len(e.stages) else _stage_filler(e.stages[-1])) for idx, e in parts]
        values = {
            f.name: _scatter([(i, getattr(r, f.name)) for i, r in records], batch)
            for f in dataclasses.fields(StageRecord)
        }
        stages.append(StageRecord(**values))
    keys = list(dict.fromkeys(k for _, e in parts for k in e.masks))
    limits = [e.max_batch for _, e in parts if e.max_batch is not None]
    any_findings = any(e.findings for _, e in parts)  # none when explained without (findings=False)
    return Explanation(
        saliency=field_of(lambda e: e.saliency),
        class_idx=field_of(lambda e: e.class_idx),
        score=field_of(lambda e: e.score),
        reference_score=field_of(lambda e: e.reference_score, float("nan")),
        method=first.method,
        stages=stages,
        masks={k: field_of(lambda e, k=k: e.masks.get(k)) for k in keys},
        forward_passes=sum(e.forward_passes for _, e in parts),
        backward_passes=sum(e.backward_passes for _, e in parts),
        images_evaluated=sum(e.images_evaluated for _, e in parts),
        max_batch=min(limits) if limits else None,
        spacing=field_of(lambda e: e.spacing, float("nan")),
        region=field_of(lambda e: e.region, False),
        findings=_scatter_lists([(idx, e.findings) for idx, e in parts], batch) if any_findings else [],
    )


def _scatter_lists(parts: list[tuple[torch.Tensor, list]], batch: int) -> list:
    """Per-image lists of several groups put back at their images' places (empty lists where a group has none)."""
    out: list = [[] for _ in range(batch)]
    for idx, values in parts:
        for i, value in zip(idx.tolist(), values):
            out[i] = value
    return out


def explain_at(explainer: Explainer, x: torch.Tensor, class_idx, spacing, region=None):
    """``explainer.explain(x, class_idx, spacing=spacing)``, ``spacing`` in mm per axis (or one row per image),
    for every method: one that sizes in mm (:attr:`Explainer.reads_spacing`) sizes its map by it, and every
    method's findings read their sizes and suppression radius in mm from it (as a map read from a file with
    the same affine). ``region`` (a segmenter's target) is passed on when given."""
    target = {} if region is None else {"region": region}
    return explainer.explain(x, class_idx, spacing=spacing, **target)
