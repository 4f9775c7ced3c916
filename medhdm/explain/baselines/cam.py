"""Grad-CAM and Grad-CAM++ through ``monai.visualize``, in medhdm's interface.

The target layer is found automatically: the last module, in execution order,
whose output is a spatial feature map ``(B, C', *S')`` and which runs once per
forward pass (``class_layers.relu`` in MONAI's DenseNets, ``layer4`` in its ResNets,
``_bn1`` in its EfficientNets). On inputs so
small that this map is ``1 x 1`` Grad-CAM is constant (an all-zero map), as it is
in MONAI. Pass
``target_layer=`` to choose another. Networks without spatial feature maps
(ViT) are rejected with a clear error.

MONAI's ``ModelWithHooks`` registers hooks that it never removes and turns off
``inplace`` on the target layer; medhdm removes those hooks and restores the
flag after every call, so the user's model is left as it was. MONAI also reads
one class index for the whole batch, so images are grouped by target class
(Grad-CAM++ goes one image at a time: MONAI's version only broadcasts for B = 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from monai.visualize import GradCAM as MonaiGradCAM
from monai.visualize import GradCAMpp as MonaiGradCAMpp
from torch import nn

from ..base import Explainer, Explanation
from ..checks import frozen_eval
from ..maps import normalise
from ..scoring import ClassScorer, first_output

__all__ = ["GradCAM", "GradCAMpp", "find_target_layer"]


def _is_feature_map(out_spatial, in_spatial, spatial_dims: int) -> bool:
    """Whether ``out_spatial`` is ``in_spatial`` downsampled by one integer factor.

    Unpadded convolutions may shave a few voxels off (``ceil(n / f) - 4 <= o <= ceil(n / f)``);
    nothing may be larger. The factor ``f`` is read on the input's longest axis, where rounding
    errs least (a 24 x 48 x 48 volume downsampled 16 times is 1 x 3 x 3: its first axis alone
    would say 24). This rules out same-rank tensors that are not image grids,
    such as a transformer's attention weights ``(B, heads, L, L)`` with ``L`` tokens.
    """
    if len(out_spatial) != spatial_dims or min(out_spatial) < 1:
        return False
    longest = max(range(spatial_dims), key=lambda axis: in_spatial[axis])
    factor = max(1, round(in_spatial[longest] / out_spatial[longest]))
    return all(-(-n // factor) - 4 <= o <= -(-n // factor) for o, n in zip(out_spatial, in_spatial))


def find_target_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the module whose spatial feature map output, for input ``x`` ``(B, C, *S)``, is
    completed last in the forward pass (a leaf or a whole block, called once; not a pooling layer).

    For a segmenter (an output ``(B, K, *S)`` on the input's grid) the last map at the coarsest
    resolution instead, the bottleneck, as Seg-Grad-CAM (Vinogradova et al., 2020) does: the
    last full-resolution map would be the logits themselves."""
    order: list[tuple[str, int]] = []  # spatial-output modules and the positions they finished at
    sizes: dict[str, int] = {}  # their outputs' number of voxels
    executed: list[str] = []  # every module (leaves and blocks), in the order their forward finished
    handles = []

    def record(name: str, is_pooling: bool):
        def hook(_module, _inputs, output):
            executed.append(name)
            if is_pooling:  # the global pooling before the head is not a feature map
                return
            if isinstance(output, torch.Tensor) and _is_feature_map(output.shape[2:], x.shape[2:], x.ndim - 2):
                order.append((name, len(executed) - 1))
                sizes[name] = output.shape[2:].numel()

        return hook

    pooling = (
        nn.modules.pooling._AdaptiveAvgPoolNd,
        nn.modules.pooling._AdaptiveMaxPoolNd,
        nn.modules.pooling._AvgPoolNd,
        nn.modules.pooling._MaxPoolNd,
    )
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(record(name, isinstance(module, pooling))))
    try:
        with frozen_eval(model), torch.no_grad():
            out = first_output(model(x[:1]))
    finally:
        for h in handles:
            h.remove()
    # Grad-CAM is defined on the last feature map before the classifier head (pooling,
    # flattening, dropout, linear: a handful of modules). A spatial map followed by many
    # more modules (a ViT's patch embedding) is an input embedding instead.
    # A module called more than once per forward pass (the activation of a MONAI ResNet block,
    # the shared one of its EfficientNet) cannot be hooked unambiguously: MONAI's hooks would
    # pair its last output with the gradient of its first call. Whole blocks are called once.
    order = [(name, pos) for name, pos in order if executed.count(name) == 1]
    if order and isinstance(out, torch.Tensor) and out.ndim == x.ndim and out.shape[2:] == x.shape[2:]:
        coarsest = min(sizes[name] for name, _ in order)
        if coarsest < x.shape[2:].numel():
            return [name for name, _ in order if sizes[name] == coarsest][-1]
    if not order or len(executed) - 1 - order[-1][1] > 5:
        raise ValueError(
            f"target_layer: found no late layer of {type(model).__name__} with a spatial feature map output "
            f"({x.ndim - 2}D); Grad-CAM needs a convolutional network. Pass target_layer= explicitly or use "
            "another method (HDM, GradientInput, Occlusion, RISE)"
        )
    return order[-1][0]


@contextmanager
def _hooks_removed_after(model: nn.Module) -> Iterator[None]:
    """Remove every hook added to ``model`` inside the block and restore ``inplace`` flags."""
    before = {m: (set(m._forward_hooks), set(m._backward_hooks)) for m in model.modules()}
    inplace = {m: m.inplace for m in model.modules() if hasattr(m, "inplace")}
    try:
        yield
    finally:
        for m, (fwd, bwd) in before.items():
            for key in set(m._forward_hooks) - fwd:
                del m._forward_hooks[key]
            for key in set(m._backward_hooks) - bwd:
                del m._backward_hooks[key]
        for m, flag in inplace.items():
            m.inplace = flag


class GradCAM(Explainer):
    """Grad-CAM (Selvaraju et al., 2017) through ``monai.visualize.GradCAM``.

    Args:
        model: a convolutional classifier.
        target_layer: module name, as in ``model.named_modules()``; default found automatically.
        seed, amp, max_batch: see :class:`~medhdm.explain.base.Explainer` (no reference image is used).
    """

    name = "GradCAM"
    uses_reference = False
    _monai_cls = MonaiGradCAM
    _per_image = False  # MONAI's GradCAM handles a batch with one class index

    def __init__(
        self,
        model: nn.Module,
        *,
        target_layer: str | None = None,
        seed: int = 0,
        amp: bool = False,
        max_batch: int | None = None,
    ) -> None:
        super().__init__(model, seed=seed, amp=amp, max_batch=max_batch)
        if isinstance(model, torch.jit.ScriptModule):
            raise ValueError(  # noqa: TRY004 (a module of the right type that cannot be hooked: a bad value)
                f"model: {self.name} needs forward hooks, which TorchScript modules do not support; "
                "use a mask or gradient method, or load the network class with its state dict"
            )
        names = {n for n, _ in model.named_modules()}
        if target_layer is not None and target_layer not in names:
            raise ValueError(f"target_layer: {target_layer!r} is not a module of {type(model).__name__}")
        self.target_layer = target_layer

    def _explain(self, x, class_idx, scorer: ClassScorer, logits, reference) -> Explanation:
        layer = f"model.{self.target_layer or find_target_layer(self.model, x)}"
        saliency = torch.zeros_like(x[:, :1], dtype=torch.float32)
        with _hooks_removed_after(self.model), torch.enable_grad():
            if self._per_image:
                groups = [torch.tensor([i], device=x.device) for i in range(x.shape[0])]
            else:
                groups = [(class_idx == c).nonzero().flatten() for c in class_idx.unique().tolist()]
            for sel in groups:
                cam = self._monai_cls(nn_module=scorer.as_logits_module(class_idx[sel]), target_layers=layer)
                # the input needs a gradient path: the model's parameters are frozen
                xs = x[sel].clone().requires_grad_(True)
                raw = cam.compute_map(xs, class_idx=int(scorer.class_of(class_idx[sel][:1])))
                scorer.passes += 1
                scorer.images += int(sel.numel())
                mode = "bilinear" if x.ndim == 4 else "trilinear"
                up = torch.nn.functional.interpolate(raw.float(), size=x.shape[2:], mode=mode, align_corners=False)
                saliency[sel] = normalise(up.detach())
        return self._result(saliency, class_idx, scorer, logits, None, backward_passes=len(groups))


class GradCAMpp(GradCAM):
    """Grad-CAM++ (Chattopadhyay et al., 2018) through ``monai.visualize.GradCAMpp``."""

    name = "GradCAM++"
    _monai_cls = MonaiGradCAMpp
    # MONAI's GradCAMpp multiplies the (B,) score into (B, C, *S) gradients, which
    # only broadcasts for B == 1: explain one image at a time.
    _per_image = True
