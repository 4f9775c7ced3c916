"""What the tests, benchmarks and tutorials share: models whose decision depends only on known
regions, images with planted lesions, a small CT volume (and its uncompressed DICOM originals at 16, 12
and 8 bits stored), and a small MONAI network trained on blobs.

Like ``captum.testing``: helpers for checking explainers, not part of the analysis API.
"""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from torch import nn

__all__ = [
    "BlobDetector",
    "ct_originals",
    "CueSegmenter",
    "ThresholdSegmenter",
    "ct_volume",
    "lesion_cases",
    "load_network",
    "marked_cue_cases",
    "plant",
    "sanity_network",
    "train_blob_densenet",
    "with_bits_stored",
]


class BlobDetector(nn.Module):
    """A fixed "lesion detector": box filter, a smooth ReLU above a threshold, pooled over space.

    ``v = pool(softplus(20 (box(x) - threshold)) / 20)`` and ``logits = (0, gain * (v / v0 - 0.5))``,
    where ``v0`` is the response to a reference image given to :meth:`calibrate` (so the
    planted image scores ``gain / 2`` and an image without blobs about ``-gain / 2``). With
    the default ``kernel=1`` only the bright voxels themselves respond: the evidence lies
    inside the planted boxes (the background, at 0.1 to 0.15, contributes about 1e-5 each).
    ``pool="max"``: one blob suffices (a classifier that pools by maximum).
    ``single_logit=True`` returns only the second logit, as a sigmoid classifier does.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        pool: str = "mean",
        kernel: int = 1,
        threshold: float = 0.5,
        gain: float = 8.0,
        single_logit: bool = False,
    ) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.conv = conv(1, 1, kernel, padding=kernel // 2, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / kernel**spatial_dims)
        self.pool, self.threshold, self.gain = pool, threshold, gain
        self.register_buffer("v0", torch.tensor(1.0))
        self.single_logit = single_logit

    def response(self, x: torch.Tensor) -> torch.Tensor:
        h = (nn.functional.softplus(20 * (self.conv(x[:, :1]) - self.threshold)) / 20).flatten(1)
        return h.amax(1, keepdim=True) if self.pool == "max" else h.mean(1, keepdim=True)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> BlobDetector:
        self.v0.fill_(float(self.response(x[:1])))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.gain * (self.response(x) / self.v0 - 0.5)
        return z if self.single_logit else torch.cat([torch.zeros_like(z), z], dim=1)


class ThresholdSegmenter(nn.Module):
    """A fixed segmenter: one sigmoid logit per voxel, ``gain * (x - threshold)`` on the first channel."""

    def __init__(self, threshold: float = 0.5, gain: float = 10.0) -> None:
        super().__init__()
        self.threshold, self.gain = threshold, gain
        self.scale = nn.Parameter(torch.tensor(1.0))  # a parameter, so the model has a device and weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, *S) -> (B, 1, *S)
        return self.scale * self.gain * (x[:, :1] - self.threshold)


class CueSegmenter(nn.Module):
    """A fixed segmenter whose decision depends on a planted cue elsewhere in the image.

    One sigmoid logit per voxel, ``z(v) = gain * (l(v) / l0 + cue_weight * (s / s0 - 1) - 0.5)``:
    ``l(v) = softplus(20 (x(v) - threshold)) / 20`` is the voxel's own brightness response,
    ``s`` the mean of ``l`` over the fixed ``cue`` box and ``l0``, ``s0`` their values for a
    voxel of intensity 1. A bright voxel is marked (``z > 0``) only when the cue box is
    bright too: without the cue every voxel scores at most ``-gain * (cue_weight - 0.5)``. The
    cue box itself is never marked (a marker, not a lesion: ``z = -gain`` there).
    The mean logit over a marked lesion depends ``cue_weight`` times more, per voxel, on the
    cue's voxels than on the lesion's own when the two boxes are of equal size: the right
    explanation of the lesion's mask puts its maximum on the cue.
    """

    def __init__(self, cue: tuple[slice, ...], cue_weight: float = 3.0, threshold: float = 0.5, gain: float = 4.0):
        super().__init__()
        self.cue, self.cue_weight, self.threshold, self.gain = cue, cue_weight, threshold, gain
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("l0", nn.functional.softplus(torch.tensor(20 * (1.0 - threshold))) / 20)

    def _response(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(20 * (x[:, :1] - self.threshold)) / 20

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, *S) -> (B, 1, *S)
        local = self._response(x) / self.l0
        s = local[(slice(None), slice(None), *self.cue)].flatten(1).mean(1)
        shape = (-1,) + (1,) * (x.ndim - 1)
        z = local + self.cue_weight * (s.view(shape) - 1) - 0.5
        marker = torch.zeros_like(z[:1], dtype=torch.bool)
        marker[(slice(None), slice(None), *self.cue)] = True
        return self.scale * self.gain * torch.where(marker, -torch.ones_like(z), z)


def plant(
    shape: tuple[int, ...], boxes: list[tuple[slice, ...]], value: float = 1.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """An image ``(1, 1, *shape)`` of low noise with bright boxes, and their label map ``(1, 1, *shape)``."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.05 * torch.rand((1, 1, *shape), generator=g)
    labels = torch.zeros((1, 1, *shape), dtype=torch.long)
    for i, box in enumerate(boxes, start=1):
        x[(0, 0, *box)] = value
        labels[(0, 0, *box)] = i
    return x, labels


def lesion_cases(
    n: int, size: tuple[int, ...] = (96, 96), seed: int = 4242
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` synthetic lesion cases of ``size`` with 1, 2 and 3 lesions in turn, drawn from ``seed``:
    images ``(n, 1, *size)``, lesion label maps ``(n, 1, *size)`` and labels ``(n,)`` (see
    :func:`medhdm.data.stack_cases`). The first ``k`` of ``n`` cases do not depend on ``n``."""
    from .data import make_case, stack_cases

    rng = np.random.default_rng(seed)
    return stack_cases([make_case(rng, size, 1 + i % 3) for i in range(n)])


def marked_cue_cases(model: nn.Module, n: int, seed: int = 31) -> torch.Tensor:
    """``n`` cue task cases of ``seed`` (:func:`medhdm.data.make_cue_dataset`, at the segmenter's recipe size)
    with the cue whose lesion the segmenter ``model`` marks, so its predicted region exists: the first ``n`` of
    the cases with a lesion among ``6 n`` drawn, images ``(n, 1, *S)``."""
    from .data import make_cue_dataset, stack_cases

    size = tuple(model.medhdm_card["recipe"]["spatial_size"])
    cases = [c for c in make_cue_dataset(seed, 6 * n, size) if c.label == 1]
    x, lesions, _ = stack_cases(cases)
    with torch.no_grad():
        marked = ((model(x) > 0) & (lesions > 0)).flatten(1).any(1)
    return x[marked.nonzero().flatten()[:n]]


def ct_volume(depth: int = 5) -> tuple[pydicom.Dataset, np.ndarray]:
    """pydicom's CT_small as a template and ``depth`` shifted copies of its HU image, ``(D, H, W)``."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = apply_modality_lut(template.pixel_array, template).astype(np.float64)
    return template, np.stack([np.roll(hu, 4 * k, axis=0) for k in range(depth)])


def with_bits_stored(template: pydicom.Dataset, volume: np.ndarray, bits_stored: int):
    """A copy of ``template`` and ``volume`` (modality units) to write with ``bits_stored`` bits per pixel.

    16: as they are (CT_small's own format, signed); 12: unsigned, Rescale Intercept -1024 (CT numbers
    clipped to -1024 to 3071); 8: unsigned, Rescale Slope 8, Intercept -1024 (CT numbers clipped to -1024
    to 1016, stored in steps of 8). For :func:`medhdm.data.dicom_series.write_series` ``(..., bits_stored=)``.
    """
    template = copy.deepcopy(template)
    volume = np.asarray(volume, dtype=np.float64)
    if bits_stored != 16:
        template.PixelRepresentation = 0
        template.RescaleIntercept = -1024
        template.RescaleSlope = 8 if bits_stored == 8 else 1
        volume = np.clip(volume, -1024, -1024 + float(template.RescaleSlope) * (2**bits_stored - 1))
    return template, volume


def ct_originals(folder, depth: int = 3, bits_stored: int = 16, upsample: int = 1):
    """:func:`ct_volume` written uncompressed as a series of ``depth`` slices into ``folder``.

    ``bits_stored``: see :func:`with_bits_stored`; ``upsample``: rows and columns ``upsample`` times as
    many (linear interpolation, pixel spacing divided alike; 4 gives 512 x 512 slices). These are the
    originals that :func:`medhdm.data.transfer_syntaxes.encode` compresses.

    Returns:
        the written paths, in slice order (``depth`` 1: a single 2D file).
    """
    from scipy import ndimage

    from .data.dicom_series import write_series

    template, volume = with_bits_stored(*ct_volume(depth), bits_stored)
    spacing = None
    if upsample != 1:
        volume = ndimage.zoom(volume, (1, upsample, upsample), order=1)
        spacing = tuple(float(v) / upsample for v in template.PixelSpacing)
    seed = f"ct_originals/{depth}/{bits_stored}/{upsample}"
    return write_series(
        template, volume, folder, uid_seed=seed, bits_stored=bits_stored, file_order_seed=None, pixel_spacing=spacing
    )


def train_blob_densenet():
    """A small MONAI DenseNet trained (seeded, about 20 s on 2 cores) to detect one bright blob in 32 x 32 noise.

    Returns:
        the model in eval mode and 60 held-out :class:`~medhdm.data.lesions.LesionCase` (half with one blob).
    """
    from monai.networks.nets import DenseNet

    from .data import make_dataset
    from .models import train_classifier

    blobs = {
        "lesion_counts": (0, 1),
        "weights": (0.5, 0.5),
        "background": "noise",
        "n_distractors": 0,
        "radius_range": (2.5, 4.0),
        "contrast_range": (0.3, 0.5),
    }
    train = make_dataset(0, 600, (32, 32), **blobs)
    test = make_dataset(1, 60, (32, 32), **blobs)
    torch.manual_seed(0)
    model = DenseNet(
        spatial_dims=2, in_channels=1, out_channels=2, init_features=8, growth_rate=8, block_config=(2, 2), bn_size=2
    )
    train_classifier(model, train, epochs=6, batch_size=32, lr=3e-3, seed=0, log=None)
    return model, test


def sanity_network(architecture: str, spatial_dims: int) -> nn.Module:
    """An untrained network of the extra sanity-check classifiers (``benchmarks/sanity_networks.py``):
    ``"densenet"``, the shipped models' small MONAI DenseNet, or ``"resnet"``, a small MONAI ResNet
    (basic blocks, one per layer, widths 8-32, its first convolution at stride 2)."""
    from monai.networks.nets import ResNet

    from .models import lesion_classifier

    if architecture == "densenet":
        return lesion_classifier(spatial_dims)
    if architecture != "resnet":
        raise ValueError(f"architecture: expected 'densenet' or 'resnet', got {architecture!r}")
    return ResNet(
        block="basic",
        layers=[1, 1, 1, 1],
        block_inplanes=[8, 16, 32, 32],
        spatial_dims=spatial_dims,
        n_input_channels=1,
        conv1_t_size=3,
        conv1_t_stride=2,
        num_classes=2,
    )


def load_network(weights) -> nn.Module:
    """A network written by ``benchmarks/sanity_networks.py`` (``<name>.pt`` beside its card ``<name>.json``),
    in eval mode, with the card as ``medhdm_card``."""
    import json
    from pathlib import Path

    weights = Path(weights)
    card = json.loads(weights.with_suffix(".json").read_text())
    model = sanity_network(card["architecture"], len(card["recipe"]["spatial_size"]))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    model.medhdm_card = card  # type: ignore[attr-defined]
    return model
