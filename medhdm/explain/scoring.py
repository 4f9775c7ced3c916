"""Class scores of a classifier, in probability and in log-odds.

Every explainer in medhdm talks to the model through :class:`ClassScorer`. It
turns the model's raw output into per-class log-probabilities, whatever the
model's head looks like:

- a multi-logit head ``(B, K)``, ``K >= 2``: softmax over the ``K`` logits;
- a single-logit head ``(B, 1)`` (sigmoid classifier): the logit ``z`` is
  expanded to the two logits ``(-z/2, z/2)``, whose softmax is exactly
  ``(1 - sigmoid(z), sigmoid(z))``. Class 1 is "positive", class 0 "negative".

Log-odds ``log p_c - log(1 - p_c)`` are what HDM uses to measure evidence:
softmax saturates (``p_c`` is 0.999 with two lesions and with three), log-odds
keep the remaining evidence visible.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ClassScorer", "TwoClassFromLogit", "first_output"]


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


class ClassScorer:
    """Runs a classifier and reads class scores from its output.

    Args:
        model: any ``torch.nn.Module`` mapping ``(N, C, *S)`` to ``(N, K)`` logits.
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
        single_logit: whether the model has a single sigmoid logit.
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
        self.passes = 0
        self.images = 0
        self.largest_batch = 0

    def as_logits_module(self) -> nn.Module:
        """The model as a module returning ``(N, K >= 2)`` logits (for MONAI's own explainers)."""
        if self.num_classes is None:
            raise RuntimeError("as_logits_module: run logits() once first")
        return TwoClassFromLogit(self.model, expand=self.single_logit)

    def _autocast(self, x: torch.Tensor):
        if self.amp and x.device.type == "cuda":
            return torch.autocast(device_type="cuda")
        return nullcontext()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Two-or-more-class logits ``(N, K)`` in float32 for the images ``x`` ``(N, C, *S)``."""
        with self._autocast(x):
            out = self._forward(x)
        self.passes += 1
        self.images += int(x.shape[0])
        out = self._check_output(first_output(out), x.shape[0])
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

    def _check_output(self, out, batch: int) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"model: expected the forward pass to return a tensor of logits of shape (B, num_classes), "
                f"got {type(out).__name__}"
            )
        if out.ndim != 2 or out.shape[0] != batch:
            raise ValueError(
                f"model: expected an output of shape (B, num_classes) = ({batch}, K), got {tuple(out.shape)}; "
                "medhdm explains classifiers (segmentation networks are not supported)"
            )
        if not torch.is_floating_point(out):
            raise TypeError(f"model: expected floating-point logits, got dtype {out.dtype}")
        k = int(out.shape[1])
        if self.num_classes is None:
            self.single_logit = k == 1
            self.num_classes = 2 if k == 1 else k
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

    @staticmethod
    def log_prob(logits: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
        """``log p_c``, shape ``(N,)``, for logits ``(N, K)`` and targets ``(N,)``."""
        return torch.log_softmax(logits, dim=1).gather(1, class_idx[:, None])[:, 0]

    @staticmethod
    def log_not_prob(logits: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
        """``log(1 - p_c)``, shape ``(N,)``, computed stably from the other logits."""
        others = logits.scatter(1, class_idx[:, None], float("-inf"))
        return torch.logsumexp(others, dim=1) - torch.logsumexp(logits, dim=1)

    @classmethod
    def log_odds(cls, logits: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
        """``log p_c - log(1 - p_c)``, shape ``(N,)``."""
        return cls.log_prob(logits, class_idx) - cls.log_not_prob(logits, class_idx)

    @classmethod
    def prob(cls, logits: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
        """``p_c``, shape ``(N,)``."""
        return cls.log_prob(logits, class_idx).exp()
