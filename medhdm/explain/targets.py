"""What a segmentation model is asked to explain: a class and a fixed region per image.

A segmenter ``(B, C, *S) -> (B, K, *S)`` has no single decision per image; medhdm
defines one as the mean class-``c`` logit over a target region ``R`` (Seg-Grad-CAM's
choice, Vinogradova et al., 2020), and :class:`~medhdm.explain.scoring.ClassScorer`
reads every score from it. ``R`` is fixed before any mask is learned, from the
unperturbed input, so deleting evidence can lower the score but never shrink the target.

``region`` is one of:

- ``None`` or ``"predicted"``: the model's own mask for ``c`` on the input, the voxels
  whose most likely class is ``c`` (a sigmoid segmenter: logit > 0 for ``c = 1``,
  logit <= 0 for ``c = 0``);
- ``"component:k"``: the ``k``-th connected component of that mask (full connectivity:
  8 neighbours in 2D, 26 in 3D), ``k = 1`` the largest; components of equal size in
  the order of their first voxel in C (row-major) order;
- a mask: a tensor ``(B, 1, *S)``, ``(1, 1, *S)`` or ``(*S)`` of 0/1 values (or bool),
  the same region for every image unless one per image is given.

Every image's region must hold at least one voxel. ``class_idx=None`` takes, per image,
the foreground class (``c >= 1``) with the largest predicted mask (class 1 where none
is predicted).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .checks import resolve_class_idx

__all__ = ["RegionSpec", "component_index", "component_mask", "resolve_targets", "predicted_classes"]

#: what ``region=`` accepts (see the module docstring)
RegionSpec = str | torch.Tensor | np.ndarray | None


def predicted_classes(maps: torch.Tensor) -> torch.Tensor:
    """The most likely class per voxel ``(B, 1, *S)`` of logit maps ``(B, K >= 2, *S)``."""
    return maps.argmax(dim=1, keepdim=True)


def resolve_targets(maps: torch.Tensor, class_idx, region: RegionSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The class ``(B,)`` and the region ``(B, 1, *S)`` (bool) of each image, for a segmenter's
    logit maps ``maps`` ``(B, K >= 2, *S)`` on the unperturbed input (see the module docstring)."""
    b, k = int(maps.shape[0]), int(maps.shape[1])
    labels = predicted_classes(maps)
    counts = torch.nn.functional.one_hot(labels[:, 0].flatten(1), k).sum(1).float()  # (B, K)
    counts[:, 0] = -1.0  # None: the largest foreground class
    classes = resolve_class_idx(class_idx, counts)
    spatial = tuple(maps.shape[2:])
    if region is None or (isinstance(region, str) and region == "predicted"):
        regions = labels == classes.view(-1, *([1] * (maps.ndim - 1)))
        what = "the model's predicted mask"
    elif isinstance(region, str):
        regions = component_mask(labels == classes.view(-1, *([1] * (maps.ndim - 1))), component_index(region))
        what = f"region {region!r}"
    else:
        regions = _mask(region, b, spatial).to(maps.device)
        what = "region"
    empty = (~regions.flatten(1).any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"region: {what} for class(es) {classes[empty].tolist()} is empty in image(s) {empty}; "
            "pass class_idx= for a class the model predicts, or a mask as region="
        )
    return classes, regions


def component_index(region: str) -> int:
    """``k`` of ``"component:k"`` (k >= 1); ``ValueError`` for any other text."""
    head, _, tail = region.partition(":")
    if head != "component" or not tail.strip().isdigit() or int(tail) < 1:
        raise ValueError(f"region: expected 'predicted', 'component:k' (k >= 1) or a mask, got {region!r}")
    return int(tail)


def component_mask(masks: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest connected component (1-based) of each mask ``(B, 1, *S)``; empty where it has fewer."""
    out = torch.zeros_like(masks)
    structure = np.ones((3,) * (masks.ndim - 2), dtype=bool)
    for i, mask in enumerate(masks[:, 0].cpu().numpy()):
        labelled, n = ndimage.label(mask, structure=structure)
        if n < k:
            continue
        sizes = np.bincount(labelled.ravel())[1:]
        first = ndimage.minimum(np.arange(labelled.size).reshape(labelled.shape), labelled, np.arange(1, n + 1))
        order = sorted(range(n), key=lambda j: (-sizes[j], first[j]))
        out[i, 0] = torch.from_numpy(labelled == order[k - 1] + 1)
    return out


def _mask(region, batch: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """A mask region checked and broadcast to ``(B, 1, *S)`` bool."""
    if isinstance(region, np.ndarray):
        region = torch.from_numpy(region)
    if not isinstance(region, torch.Tensor):
        raise TypeError(f"region: expected 'predicted', 'component:k' or a mask tensor, got {type(region).__name__}")
    if hasattr(region, "as_tensor"):
        region = region.as_tensor()
    shape = tuple(region.shape)
    if shape == spatial:
        region = region[None, None]
    if region.ndim != len(spatial) + 2 or region.shape[1] != 1 or tuple(region.shape[2:]) != spatial:
        raise ValueError(
            f"region: expected a mask of shape (B, 1, {', '.join(map(str, spatial))}) or the spatial size alone, "
            f"got {shape}"
        )
    if region.shape[0] not in (1, batch):
        raise ValueError(f"region: expected one mask or one per image ({batch}), got {region.shape[0]}")
    if region.dtype != torch.bool:
        if not bool(((region == 0) | (region == 1)).all()):
            raise ValueError("region: expected a binary mask (0/1 or bool values)")
        region = region != 0
    return region.expand(batch, *region.shape[1:]).clone()
