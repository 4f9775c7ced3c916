"""Reference images: what "removed" means when a mask hides part of an image.

Compositing is ``phi(x, m) = m * x + (1 - m) * r`` with a mask ``m`` in ``[0, 1]``
of shape ``(B, 1, *S)`` broadcast over channels and a reference ``r`` of the
shape of ``x``. Medical images are not natural images: a black fill lies far
outside what a CT/MR model was trained on, so the default reference is a strong
Gaussian blur of the image itself (sigma ``max(S) / 20`` voxels per axis),
which removes lesion-sized detail and keeps the anatomy's low frequencies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.networks.layers import gaussian_1d, separable_filtering

__all__ = ["ReferenceSpec", "blur_reference", "composite", "gaussian_blur", "make_reference"]

#: ``"blur"``, ``"min"``, ``"mean"``, a float (constant fill), a tensor broadcastable
#: to ``x``, or a callable ``x -> r``.
ReferenceSpec = str | float | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


def gaussian_blur(x: torch.Tensor, sigma: float | tuple[float, ...], padding: str = "replicate") -> torch.Tensor:
    """Gaussian blur of ``x`` ``(B, C, *S)`` per channel, edges replicated (or zeros outside).

    Args:
        x: images or maps ``(B, C, *S)``.
        sigma: standard deviation in voxels, one value or one per spatial axis.
        padding: ``"replicate"`` (default: an image continues as its edge) or ``"zeros"`` (a
            signal that is 0 outside the field of view; a replicated edge voxel would weigh
            half the kernel).
    Returns:
        the blurred tensor, shape and dtype of ``x``.
    """
    spatial = x.shape[2:]
    sigmas = (float(sigma),) * len(spatial) if isinstance(sigma, (int, float)) else tuple(float(s) for s in sigma)
    if len(sigmas) != len(spatial) or any(s <= 0 for s in sigmas):
        raise ValueError(f"sigma: expected one positive value or {len(spatial)} positive values, got {sigma!r}")
    kernels = [gaussian_1d(torch.tensor(s), truncated=3.0, approx="sampled").to(x) for s in sigmas]
    # Replicate padding cannot pad wider than the image; clip the kernels to fit.
    clipped = []
    for k, n in zip(kernels, spatial):
        half = (k.numel() - 1) // 2
        if half >= n:
            cut = half - (n - 1)
            k = k[cut:-cut]
            k = k / k.sum()
        clipped.append(k)
    if padding not in ("replicate", "zeros"):
        raise ValueError(f"padding: expected 'replicate' or 'zeros', got {padding!r}")
    return separable_filtering(x, clipped, mode=padding)


def blur_reference(x: torch.Tensor, sigma: float | tuple[float, ...] | None = None) -> torch.Tensor:
    """The blur reference: :func:`gaussian_blur` of ``x`` ``(B, C, *S)``, default sigma ``max(S) / 20`` voxels."""
    return gaussian_blur(x, max(x.shape[2:]) / 20.0 if sigma is None else sigma)


def make_reference(x: torch.Tensor, reference: ReferenceSpec = "blur") -> torch.Tensor:
    """Build the reference ``r`` ``(B, C, *S)`` for images ``x`` ``(B, C, *S)``.

    ``reference`` is ``"blur"`` (default), ``"min"`` (each image's minimum),
    ``"mean"`` (each image's mean), a float (constant), a tensor that
    broadcasts to ``x`` (for example a healthy reference scan), or a callable.
    """
    if isinstance(reference, str):
        dims = tuple(range(1, x.ndim))
        if reference == "blur":
            r = blur_reference(x)
        elif reference == "min":
            r = x.amin(dim=dims, keepdim=True).expand_as(x)
        elif reference == "mean":
            r = x.mean(dim=dims, keepdim=True).expand_as(x)
        else:
            raise ValueError(
                f"reference: expected 'blur', 'min', 'mean', a float, a tensor or a callable, got {reference!r}"
            )
    elif isinstance(reference, bool):
        raise TypeError("reference: expected 'blur', 'min', 'mean', a float, a tensor or a callable, got a bool")
    elif isinstance(reference, (int, float)):
        r = torch.full_like(x, float(reference))
    elif isinstance(reference, torch.Tensor):
        try:
            r = torch.broadcast_to(reference.to(x), x.shape)
        except RuntimeError:
            raise ValueError(
                f"reference: a tensor reference must broadcast to the images' shape {tuple(x.shape)}, "
                f"got {tuple(reference.shape)}"
            ) from None
    elif callable(reference):
        r = reference(x)
        if not isinstance(r, torch.Tensor) or r.shape != x.shape:
            raise ValueError(f"reference: the callable must return a tensor of shape {tuple(x.shape)}")
    else:
        raise TypeError(
            "reference: expected 'blur', 'min', 'mean', a float, a tensor or a callable, "
            f"got {type(reference).__name__}"
        )
    if not bool(torch.isfinite(r).all()):
        raise ValueError("reference: the reference image has NaN or infinite values")
    return r.detach().contiguous()


def composite(x: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``phi(x, m) = m * x + (1 - m) * r``.

    Args:
        x: images ``(B, C, *S)`` (or ``(B, 1, C, *S)`` broadcast against several masks).
        mask: ``(B, 1, *S)``, or ``(B, K, 1, *S)`` for ``K`` masks per image.
        reference: like ``x``.
    """
    return reference + mask * (x - reference)
