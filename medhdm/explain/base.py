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

import torch
from torch import nn

from .checks import check_images, check_model, frozen_eval, resolve_class_idx
from .reference import ReferenceSpec, make_reference
from .scoring import ClassScorer

__all__ = ["Explainer", "Explanation", "StageRecord", "is_out_of_memory"]


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


@dataclass
class Explanation:
    """The full record of one call of an explainer on a batch of ``B`` images.

    Attributes:
        saliency: the map ``(B, 1, *S)``, float in ``[0, 1]``, on the input grid and device.
        class_idx: the explained class per image ``(B,)``.
        score: ``s(x)``, the probability of that class on the input ``(B,)``.
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


class Explainer:
    """Base class of every medhdm explainer.

    Args:
        model: a classifier ``(B, C, *S) -> (B, K)`` logits (``K = 1``: a sigmoid model).
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

    def __call__(self, x: torch.Tensor, class_idx: int | Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """The saliency map ``(B, 1, *S)`` in ``[0, 1]`` for images ``x`` ``(B, C, *S)``."""
        return self.explain(x, class_idx).saliency

    def explain(self, x: torch.Tensor, class_idx: int | Sequence[int] | torch.Tensor | None = None) -> Explanation:
        """Explain ``x`` ``(B, C, *S)`` for ``class_idx`` (None: the predicted class) and return the full record."""
        x = check_images(x)
        max_batch = self.max_batch
        while True:
            try:
                return self._explain_once(x, class_idx, max_batch)
            except _OutOfMemory as err:
                if err.largest_batch <= 1:
                    raise MemoryError(
                        f"{self.name}: out of memory with one image per model call (input {tuple(x.shape)}); "
                        "explain fewer or smaller images, or use a device with more memory"
                    ) from err
                max_batch = err.largest_batch // 2
                if x.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _explain_once(self, x: torch.Tensor, class_idx, max_batch: int | None) -> Explanation:
        """:meth:`explain` with at most ``max_batch`` images per model call; an out-of-memory error is raised
        as :class:`_OutOfMemory` with the largest model call made."""
        devices = [x.device] if x.device.type == "cuda" else []
        with frozen_eval(self.model), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            scorer = ClassScorer(self.model, amp=self.amp, max_batch=max_batch)
            try:
                return self._run(x, class_idx, scorer)
            except Exception as err:  # noqa: BLE001 - re-raised as it was unless it is an out-of-memory error
                if is_out_of_memory(err):
                    raise _OutOfMemory(str(err), scorer.largest_batch) from err
                raise

    def _run(self, x: torch.Tensor, class_idx, scorer: ClassScorer) -> Explanation:
        """Score ``x``, resolve the targets, build the reference, and run the method."""
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
        targets = resolve_class_idx(class_idx, logits)
        reference = make_reference(x, self.reference) if self.uses_reference else None
        result = self._explain(x, targets, scorer, logits, reference)
        result.forward_passes = scorer.passes
        result.images_evaluated = scorer.images
        result.max_batch = scorer.max_batch
        result.saliency = result.saliency.to(device=x.device, dtype=torch.float32).clamp_(0, 1)
        return result

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
