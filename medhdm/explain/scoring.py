"""Target scores of a classifier or a segmenter, in probability and in log-odds.

Every explainer in medhdm talks to the model through :class:`ClassScorer`. It
turns the model's raw output into per-class log-probabilities, whatever the
model's head looks like:

- a multi-logit head ``(B, K)``, ``K >= 2``: softmax over the ``K`` logits;
- a single-logit head ``(B, 1)`` (sigmoid classifier): the logit ``z`` is
  expanded to the two logits ``(-z/2, z/2)``, whose softmax is exactly
  ``(1 - sigmoid(z), sigmoid(z))``. Class 1 is "positive", class 0 "negative".
- a segmenter ``(B, K, *S)`` (the input's spatial size ``S``; ``K = 1``: sigmoid,
  expanded per voxel as above): each image's target is a class ``c`` and a fixed
  region ``R`` (:meth:`ClassScorer.set_targets`); the scorer reduces the output to the
  region's mean logits ``(B, K)``, ``z_k = mean_{v in R} z_k(v)``, and reads the class
  scores from them as for a classifier. For a sigmoid segmenter the log-odds of class 1
  are exactly the mean logit over the region.

The explainers pass one *target* per image to the scores (:meth:`ClassScorer.log_prob`
and the others): the class index for a classifier; for a segmenter the image's index into
the targets set on the scorer, so a composite of image ``b`` is always read over ``b``'s
region. They replicate targets along with images and never need to know which kind of
model they explain; :meth:`ClassScorer.class_of` gives the class of a target.

Log-odds ``log p_c - log(1 - p_c)`` are what HDM uses to measure evidence:
softmax saturates (``p_c`` is 0.999 with two lesions and with three), log-odds
keep the remaining evidence visible.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ClassScorer", "RegionLogits", "TwoClassFromLogit", "first_output", "region_mean"]


def first_output(out):
    """The logits of a model output: the tensor itself, or the first element of a tuple/list.

    MONAI's ``ViT`` with ``classification=True`` returns ``(logits, hidden_states)``.
    """
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return out


def _first_output_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return first_output(model(x))


class TwoClassFromLogit(nn.Module):
    """A classifier seen as returning plain logits of at least two classes.

    Takes the first element of a tuple output (MONAI ``ViT``) and, for a
    single-logit model (``expand=True``), expands ``z`` to ``(-z/2, z/2)``:
    ``softmax((-z/2, z/2)) == (1 - sigmoid(z), sigmoid(z))``, and the gradient of
    either logit is non-zero, so gradient methods (Grad-CAM) work for both classes.
    """

    def __init__(self, model: nn.Module, expand: bool = True) -> None:
        super().__init__()
        self.model = model
        self.expand = expand

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, *S) -> (B, K)
        z = first_output(self.model(x))
        return torch.cat([-0.5 * z, 0.5 * z], dim=1) if self.expand else z


class RegionLogits(nn.Module):
    """A segmenter seen as a classifier: the mean logits ``(N, K >= 2)`` over fixed regions.

    ``regions`` ``(N, 1, *S)`` (or one row for every input) weighs each input's voxels;
    a single-logit segmenter (``expand=True``) is expanded per voxel as by
    :class:`TwoClassFromLogit`.
    """

    def __init__(self, model: nn.Module, regions: torch.Tensor, expand: bool = True) -> None:
        super().__init__()
        self.model = model
        self.expand = expand
        self.regions = regions

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, *S) -> (N, K)
        z = first_output(self.model(x))
        if self.expand:
            z = torch.cat([-0.5 * z, 0.5 * z], dim=1)
        return region_mean(z, self.regions)


def region_mean(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """The mean of ``maps`` ``(N, K, *S)`` over ``regions`` ``(N or 1, 1, *S)`` (weights >= 0): ``(N, K)``."""
    w = regions.to(maps.dtype)
    return (maps * w).flatten(2).sum(-1) / w.flatten(2).sum(-1).clamp_min(1e-12)


class ClassScorer:
    """Runs a classifier or a segmenter and reads target scores from its output.

    Args:
        model: any ``torch.nn.Module`` mapping ``(N, C, *S)`` to ``(N, K)`` logits (a classifier)
            or to ``(N, K, *S)`` logit maps on the input's grid (a segmenter).
        amp: run the forward pass under ``torch.autocast`` (CUDA only; ignored on CPU).
            Scores are always returned in float32.
        max_batch: the most images sent through the model at once (None: no limit). A
            larger batch runs in chunks; when gradients are needed each chunk is
            checkpointed (:func:`torch.utils.checkpoint.checkpoint`), so the backward pass
            recomputes one chunk's activations at a time: peak memory is one chunk's, for
            one extra forward pass per chunk. The logits and gradients are those of the
            whole batch.

    Attributes:
        num_classes: ``K`` as the explainer sees it (2 for a single-logit model).
        single_logit: whether the model has a single sigmoid logit (per voxel for a segmenter).
        segmenter: whether the model returns logit maps ``(N, K, *S)``.
        classes, regions: a segmenter's targets once set (:meth:`set_targets`): the class ``(B,)``
            and the region ``(B, 1, *S)`` (bool) of each image; None before, and for a classifier.
        passes: number of forward passes run so far (a chunked batch counts once).
        images: number of images pushed through the model so far.
        largest_batch: the most images the model has been called on at once so far (after the chunking).
    """

    def __init__(self, model: nn.Module, amp: bool = False, max_batch: int | None = None) -> None:
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch: expected None or an int >= 1, got {max_batch!r}")
        self.model = model
        self.amp = amp
        self.max_batch = max_batch
        self.num_classes: int | None = None
        self.single_logit = False
        self.segmenter = False
        self.classes: torch.Tensor | None = None
        self.regions: torch.Tensor | None = None
        self.passes = 0
        self.images = 0
        self.largest_batch = 0

    def as_logits_module(self, targets: torch.Tensor | None = None) -> nn.Module:
        """The model as a module returning ``(N, K >= 2)`` logits (for MONAI's own explainers).

        For a segmenter, the mean logits over the regions of ``targets``: one target per input
        row, or a single target for every row.
        """
        if self.num_classes is None:
            raise RuntimeError("as_logits_module: run logits() once first")
        if not self.segmenter:
            return TwoClassFromLogit(self.model, expand=self.single_logit)
        if self.regions is None or targets is None:
            raise RuntimeError("as_logits_module: a segmenter needs its targets (set_targets, targets=)")
        return RegionLogits(self.model, self.regions[targets.to(self.regions.device)], expand=self.single_logit)

    def set_targets(self, classes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """A segmenter's targets: class ``(B,)`` and region ``(B, 1, *S)`` per image; returns the
        targets to pass to the scores, the image indices ``(B,)``."""
        self.classes = classes
        self.regions = regions.bool()
        return torch.arange(classes.numel(), device=classes.device)

    def class_of(self, targets: torch.Tensor) -> torch.Tensor:
        """The class index of each target ``(N,)``: the target itself for a classifier."""
        if self.classes is None:
            return targets
        return self.classes[targets.to(self.classes.device)]

    def _autocast(self, x: torch.Tensor):
        if self.amp and x.device.type == "cuda":
            return torch.autocast(device_type="cuda")
        return nullcontext()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Two-or-more-class logits ``(N, K)`` in float32 for the images ``x`` ``(N, C, *S)``;
        for a segmenter the logit maps ``(N, K, *S)``, which the scores reduce over each target's region."""
        with self._autocast(x):
            out = self._forward(x)
        self.passes += 1
        self.images += int(x.shape[0])
        out = self._check_output(first_output(out), x)
        if self.single_logit:
            out = torch.cat([-0.5 * out, 0.5 * out], dim=1)
        return out.float()

    def _forward(self, x: torch.Tensor):
        """The model's output for ``x``, in chunks of at most ``max_batch`` images (see the class docstring)."""
        self.largest_batch = max(self.largest_batch, min(int(x.shape[0]), self.max_batch or int(x.shape[0])))
        if self.max_batch is None or x.shape[0] <= self.max_batch:
            return self.model(x)
        chunks = x.split(self.max_batch)
        if torch.is_grad_enabled() and x.requires_grad:
            outs = [checkpoint(_first_output_of, self.model, c, use_reentrant=False) for c in chunks]
        else:
            outs = [first_output(self.model(c)) for c in chunks]
        return torch.cat(outs)

    def _check_output(self, out, x: torch.Tensor) -> torch.Tensor:
        """``out`` checked: a classifier's ``(B, K)`` or a segmenter's ``(B, K, *S)`` on ``x``'s grid."""
        batch, spatial = int(x.shape[0]), tuple(x.shape[2:])
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"model: expected the forward pass to return a tensor of logits of shape (B, num_classes), "
                f"got {type(out).__name__}"
            )
        segmenter = out.ndim == x.ndim and tuple(out.shape[2:]) == spatial
        if (
            out.shape[0] != batch
            or not (out.ndim == 2 or segmenter)
            or (self.num_classes and segmenter != self.segmenter)
        ):
            raise ValueError(
                f"model: expected an output of shape (B, K) = ({batch}, K) (a classifier) or (B, K, *S) = "
                f"({batch}, K, {', '.join(map(str, spatial))}) (a segmenter on the input's grid), "
                f"got {tuple(out.shape)}"
            )
        if not torch.is_floating_point(out):
            raise TypeError(f"model: expected floating-point logits, got dtype {out.dtype}")
        k = int(out.shape[1])
        if self.num_classes is None:
            self.single_logit = k == 1
            self.num_classes = 2 if k == 1 else k
            self.segmenter = segmenter
        return out

    def sensitivity(
        self, x: torch.Tensor, reference: torch.Tensor, class_idx: torch.Tensor, measure: str = "log_prob"
    ) -> torch.Tensor:
        """Gradient x (input - reference), summed over channels, signed: ``(N, 1, *S)``.

        For ``x`` ``(N, C, *S)``, ``reference`` of the same shape and targets ``(N,)``:
        ``sum_channels d f(x) / dx * (x - r)`` with ``f`` the class's ``"log_prob"`` or
        ``"log_odds"``. It is also the derivative of ``f(r + m * (x - r))`` with respect to
        a full-resolution mask ``m`` at ``m = 1``: how much keeping each voxel's detail
        supports the class. One forward/backward pass.
        """
        grad, xs = self._input_gradient(x, class_idx, measure)
        return (grad * (xs - reference)).sum(1, keepdim=True)

    def gradient(
        self, x: torch.Tensor, class_idx: torch.Tensor, measure: str = "log_prob", signed: bool = False
    ) -> torch.Tensor:
        """The gradient's magnitude, summed over channels: ``sum_channels |d f(x) / dx|``, ``(N, 1, *S)``;
        with ``signed=True`` the signed sum ``sum_channels d f(x) / dx``.

        Unlike :meth:`sensitivity` it has no ``(x - r)`` factor: no image edges against the
        reference, only the model's local response (what a model-randomisation check asks of
        a map). One forward/backward pass.
        """
        grad, _ = self._input_gradient(x, class_idx, measure)
        return grad.sum(1, keepdim=True) if signed else grad.abs().sum(1, keepdim=True)

    def _input_gradient(self, x: torch.Tensor, class_idx: torch.Tensor, measure: str):
        if measure not in ("log_prob", "log_odds"):
            raise ValueError(f"measure: expected 'log_prob' or 'log_odds', got {measure!r}")
        read = self.log_prob if measure == "log_prob" else self.log_odds
        xs = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            value = read(self.logits(xs), class_idx)
            (grad,) = torch.autograd.grad(value.sum(), xs)
        return grad, xs.detach()

    def _reduce(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``(N, K)`` and classes ``(N,)`` of targets ``(N,)``: a segmenter's maps
        ``(N, K, *S)`` averaged over each target's region; a classifier's logits as they are."""
        if logits.ndim == 2:
            return logits, targets
        if self.regions is None:
            raise RuntimeError("scores: a segmenter's output needs its targets (set_targets)")
        return region_mean(logits, self.regions[targets]), self.class_of(targets)

    def log_prob(self, logits: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
        """``log p_c``, shape ``(N,)``, for logits ``(N, K)`` (or a segmenter's ``(N, K, *S)``) and targets ``(N,)``."""
        return _log_prob(*self._reduce(logits, class_idx))

    def log_not_prob(self, logits: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
        """``log(1 - p_c)``, shape ``(N,)``, computed stably from the other logits."""
        return _log_not_prob(*self._reduce(logits, class_idx))

    def log_odds(self, logits: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
        """``log p_c - log(1 - p_c)``, shape ``(N,)``."""
        z, c = self._reduce(logits, class_idx)
        return _log_prob(z, c) - _log_not_prob(z, c)

    def prob(self, logits: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
        """``p_c``, shape ``(N,)``."""
        return self.log_prob(logits, class_idx).exp()


def _log_prob(logits: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=1).gather(1, class_idx[:, None])[:, 0]


def _log_not_prob(logits: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
    others = logits.scatter(1, class_idx[:, None], float("-inf"))
    return torch.logsumexp(others, dim=1) - torch.logsumexp(logits, dim=1)
