"""Physical units: HDM's sizes in millimetres, turned into voxels from the input's spacing.

HDM's size settings are written in voxels and in shares of the image: mask grids as
divisors of the image size (``S/16``: cells of 16 voxels), the fused map's Gaussian as a
share of the image's largest side, the benchmark masks' area budget as a share of the
image, the blur reference's sigma as ``max(S) / 20`` voxels. On the same anatomy at 96 and
at 192 voxels across these are different physical sizes. When the input's spacing is known
(``spacing=`` or a MONAI ``MetaTensor``'s affine, see :func:`input_spacing`), HDM reads
them in millimetres instead (:class:`PhysicalSettings`):

- a grid cell of ``c`` mm on an axis of ``n`` voxels of ``s`` mm: ``round(n s / c)`` cells
  (at least 2, at most ``n``);
- a Gaussian of ``sigma`` mm: ``sigma / s`` voxels on that axis (anisotropic spacing gives
  an anisotropic Gaussian);
- an area (2D, mm^2) or volume (3D, mm^3) ``a``: the share ``a / prod(n_i s_i)`` of the image,
  clipped to ``[1 / N, 0.5]`` for an image of ``N`` voxels.

The millimetre defaults are HDM's voxel defaults read at a :class:`NativeGrid`, the grid on
which those voxel defaults were chosen: by default the shipped models' (:data:`SHIPPED_GRIDS`,
the LesionBench files' geometry, 250 mm across: 96 x 96 at 250/96 = 2.604 mm in 2D,
24 x 48 x 48 at 3 x 5.208 x 5.208 mm in 3D). At that spacing and size the millimetre settings
give exactly the voxel settings, so results at the native resolution do not change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "BLUR_FRACTION",
    "SHIPPED_GRIDS",
    "NativeGrid",
    "PhysicalSettings",
    "check_spacing",
    "input_spacing",
    "resolve_units",
    "units_from_json",
]

#: the blur reference's sigma as a share of the image's largest side (``max(S) / 20`` voxels)
BLUR_FRACTION = 1 / 20

PerAxis = float | Sequence[float]


def _snap(value: float) -> float:
    """``value`` rounded to 12 significant digits: a conversion there and back gives the voxel default exactly."""
    return float(f"{value:.12g}")


def _per_axis(value: PerAxis, dims: int, name: str) -> tuple[float, ...]:
    """One positive value per spatial axis from one value or ``dims`` values."""
    values = (value,) * dims if isinstance(value, (int, float)) else tuple(value)
    if len(values) != dims or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name}: expected one positive size in mm or {dims} (one per spatial axis), got {value!r}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class NativeGrid:
    """The grid on which voxel settings were chosen: ``size`` voxels of ``spacing`` mm per axis.

    Attributes:
        spacing: voxel size in mm per spatial axis, in the image's axis order (``(H, W)`` or ``(D, H, W)``).
        size: voxels per spatial axis.
    """

    spacing: tuple[float, ...]
    size: tuple[int, ...]

    def __post_init__(self) -> None:
        spacing, size = tuple(self.spacing), tuple(self.size)
        if len(spacing) not in (2, 3) or len(size) != len(spacing):
            raise ValueError(f"NativeGrid: expected 2 or 3 spacings and as many sizes, got {spacing} and {size}")
        _per_axis(spacing, len(spacing), "NativeGrid.spacing")
        if not all(isinstance(n, int) and n >= 1 for n in size):
            raise ValueError(f"NativeGrid.size: expected positive ints, got {size}")
        object.__setattr__(self, "spacing", tuple(float(s) for s in spacing))
        object.__setattr__(self, "size", size)


#: the shipped models' input grids (LesionBench files, 250 mm across): HDM's voxel defaults are meant there
SHIPPED_GRIDS = {
    2: NativeGrid(spacing=(250 / 96, 250 / 96), size=(96, 96)),
    3: NativeGrid(spacing=(3.0, 250 / 48, 250 / 48), size=(24, 48, 48)),
}


@dataclass(frozen=True)
class PhysicalSettings:
    """HDM's size settings in millimetres (one value for every axis, or one per spatial axis).

    Attributes:
        benchmark_cells_mm: the DM benchmark grids' cell sizes, one entry per grid.
        auxiliary_cells_mm: the DM auxiliary grids' cell sizes, one entry per grid.
        smooth_mm: the fused map's Gaussian sigma (the refinement's signal: 1.5 times it); None: no smoothing.
        area_mm: the benchmark masks' area budget, mm^2 (2D) or mm^3 (3D), where their objective has one
            (:attr:`~medhdm.explain.masks.MaskObjective.area`); None keeps the objective's share.
        blur_mm: the blur reference's sigma; None keeps ``max(S) / 20`` voxels.
    """

    benchmark_cells_mm: tuple[PerAxis, ...]
    auxiliary_cells_mm: tuple[PerAxis, ...]
    smooth_mm: PerAxis | None = None
    area_mm: float | None = None
    blur_mm: PerAxis | None = None

    def __post_init__(self) -> None:
        for name in ("benchmark_cells_mm", "auxiliary_cells_mm"):
            cells = tuple(getattr(self, name))
            if not cells:
                raise ValueError(f"{name}: expected at least one cell size")
            for cell in cells:
                _per_axis(cell, 1 if isinstance(cell, (int, float)) else len(tuple(cell)), name)
            object.__setattr__(self, name, cells)
        for name in ("smooth_mm", "blur_mm"):
            value = getattr(self, name)
            if value is not None:
                _per_axis(value, 1 if isinstance(value, (int, float)) else len(tuple(value)), name)
        if self.area_mm is not None and not (math.isfinite(self.area_mm) and self.area_mm > 0):
            raise ValueError(f"area_mm: expected None or a positive area/volume, got {self.area_mm!r}")

    @classmethod
    def from_voxels(
        cls,
        grid: NativeGrid,
        benchmark_grids: Sequence[PerAxis],
        auxiliary_grids: Sequence[PerAxis],
        smooth: float | None,
        area: float | None,
        blur: float | None = BLUR_FRACTION,
    ) -> PhysicalSettings:
        """Voxel settings (HDM's arguments: grid divisors, ``smooth`` and ``blur`` as shares of ``max(S)``,
        ``area`` as a share of the image) read in mm at ``grid``."""
        dims, spacing, extent = len(grid.size), grid.spacing, max(grid.size)

        def cells(divisors: Sequence[PerAxis]) -> tuple[tuple[float, ...], ...]:
            return tuple(tuple(_snap(d * s) for d, s in zip(_per_axis(g, dims, "grids"), spacing)) for g in divisors)

        return cls(
            benchmark_cells_mm=cells(benchmark_grids),
            auxiliary_cells_mm=cells(auxiliary_grids),
            smooth_mm=tuple(_snap(smooth * extent * s) for s in spacing) if smooth else None,
            area_mm=_snap(area * math.prod(n * s for n, s in zip(grid.size, spacing))) if area is not None else None,
            blur_mm=tuple(_snap(blur * extent * s) for s in spacing) if blur else None,
        )

    def grid_shapes(
        self, kind: str, spatial: Sequence[int], spacing: Sequence[float], finer: int = 1
    ) -> list[tuple[int, ...]]:
        """The ``"benchmark"`` or ``"auxiliary"`` grid shapes on an image of ``spatial`` voxels of ``spacing`` mm,
        with the cell sizes divided by ``finer`` (at least 1 cell per axis;
        :func:`~medhdm.explain.masks.grid_shapes` then clips them to ``[2, S_i]``)."""
        shapes = []
        for cell in getattr(self, f"{kind}_cells_mm"):
            sizes = _per_axis(cell, len(spatial), f"{kind}_cells_mm")
            shapes.append(
                tuple(max(1, int(round(n * finer / _snap(c / s)))) for n, c, s in zip(spatial, sizes, spacing))
            )
        return shapes

    def sigma(self, spacing: Sequence[float], factor: float = 1.0) -> tuple[float, ...] | float:
        """The fused map's Gaussian in voxels per axis (times ``factor``); 0.0 without smoothing."""
        if self.smooth_mm is None:
            return 0.0
        return tuple(
            factor * _snap(m / s) for m, s in zip(_per_axis(self.smooth_mm, len(spacing), "smooth_mm"), spacing)
        )

    def blur_sigma(self, spacing: Sequence[float]) -> tuple[float, ...] | None:
        """The blur reference's sigma in voxels per axis; None without ``blur_mm`` (``max(S) / 20`` voxels)."""
        if self.blur_mm is None:
            return None
        return tuple(_snap(m / s) for m, s in zip(_per_axis(self.blur_mm, len(spacing), "blur_mm"), spacing))

    def area_share(self, spatial: Sequence[int], spacing: Sequence[float]) -> float | None:
        """``area_mm`` as a share of the image, clipped to ``[1 / N, 0.5]``; None without ``area_mm``."""
        if self.area_mm is None:
            return None
        share = _snap(self.area_mm / math.prod(n * s for n, s in zip(spatial, spacing)))
        return min(max(share, 1 / math.prod(spatial)), 0.5)


Units = str | NativeGrid | PhysicalSettings | Mapping[int, NativeGrid | PhysicalSettings] | None


def _tuples(value: object) -> object:
    """JSON lists as tuples, at every depth."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _from_json(units: object) -> object:
    """One grid or settings written as JSON (as :meth:`~medhdm.explain.base.Explainer.settings` writes
    them): ``{"spacing": [...], "size": [...]}`` is a :class:`NativeGrid`, a dict with
    ``benchmark_cells_mm`` a :class:`PhysicalSettings`; anything else is returned as it is."""
    if not isinstance(units, Mapping):
        return units
    keys = set(units)
    try:
        if keys == {"spacing", "size"}:
            return NativeGrid(spacing=_tuples(units["spacing"]), size=_tuples(units["size"]))
        fields = set(PhysicalSettings.__dataclass_fields__)
        if "benchmark_cells_mm" in keys and keys <= fields:
            return PhysicalSettings(**{k: _tuples(v) for k, v in units.items()})
    except (TypeError, ValueError) as err:
        raise ValueError(f"units: {err}") from None
    return units


def units_from_json(units: object) -> Units:
    """``units`` as JSON gives them (``--method-args``, a settings record): ``"shipped"``, ``null``, a
    native grid ``{"spacing": [mm, ...], "size": [voxels, ...]}``, millimetre settings
    ``{"benchmark_cells_mm": [...], "auxiliary_cells_mm": [...], "smooth_mm": ..., "area_mm": ..., "blur_mm": ...}``,
    or one of those per dimension ``{"2": ..., "3": ...}``; the dataclasses themselves pass unchanged."""
    if isinstance(units, Mapping) and units and all(str(k) in ("2", "3") for k in units):
        return {int(k): _from_json(v) for k, v in units.items()}
    return _from_json(units)


def check_units(units: Units) -> Units:
    """``units`` checked: ``"shipped"``, None, a :class:`NativeGrid`, :class:`PhysicalSettings`, or a dict by dims
    (each also as JSON, see :func:`units_from_json`)."""
    units = units_from_json(units)
    kinds = (NativeGrid, PhysicalSettings)
    ok = units is None or units == "shipped" or isinstance(units, kinds)
    if isinstance(units, Mapping):
        ok = all(k in (2, 3) and isinstance(v, kinds) for k, v in units.items())
    if not ok:
        raise ValueError(
            "units: expected 'shipped', None (voxel settings only), a NativeGrid, PhysicalSettings, "
            f"or a dict {{2: ..., 3: ...}} of them, got {units!r}"
        )
    return dict(units) if isinstance(units, Mapping) else units


def resolve_units(units: Units, spatial_dims: int, **voxel_settings) -> PhysicalSettings | None:
    """The millimetre settings of ``units`` for ``spatial_dims``-D inputs (None: voxel settings only).

    A :class:`NativeGrid` (``"shipped"``: :data:`SHIPPED_GRIDS`) reads ``voxel_settings`` (the arguments
    of :meth:`PhysicalSettings.from_voxels` after ``grid``) in mm on that grid.
    """
    if isinstance(units, Mapping):
        if spatial_dims not in units:
            raise ValueError(f"units: no entry for {spatial_dims}D inputs (has {sorted(units)})")
        units = units[spatial_dims]
    if units is None or isinstance(units, PhysicalSettings):
        return units
    grid = SHIPPED_GRIDS[spatial_dims] if units == "shipped" else units
    if len(grid.size) != spatial_dims:
        raise ValueError(f"units: a {len(grid.size)}D NativeGrid for {spatial_dims}D inputs")
    return PhysicalSettings.from_voxels(grid, **voxel_settings)


def check_spacing(spacing: object, batch: int, spatial_dims: int) -> np.ndarray:
    """``spacing`` as ``(B, d)`` float64 mm: one row for the batch (``d`` values) or one per image (``B x d``).

    Raises ``ValueError`` naming the expected shape for anything else, and for values that are
    not finite and positive.
    """
    try:
        if isinstance(spacing, torch.Tensor):
            spacing = spacing.detach().cpu().numpy()
        values = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    expected = f"{spatial_dims} values in mm (one per spatial axis) or one row per image ({batch} x {spatial_dims})"
    if values is None or values.ndim not in (1, 2) or values.shape[-1] != spatial_dims:
        raise ValueError(f"spacing: expected {expected}, got {spacing!r}")
    if values.ndim == 2 and values.shape[0] != batch:
        raise ValueError(f"spacing: expected {expected}, got shape {values.shape}")
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise ValueError(f"spacing: expected finite voxel sizes > 0 mm, got {values.tolist()}")
    return np.broadcast_to(values, (batch, spatial_dims)).copy()


def input_spacing(x: torch.Tensor, spacing: object = None, spatial_dims: int | None = None) -> object:
    """``spacing`` if given, else the voxel spacing of a MONAI ``MetaTensor`` ``x`` ``(B, C, *S)``, else None.

    ``spatial_dims``: for one image ``(C, *S)``, ``x.ndim - 1``; default ``x.ndim - 2``.

    A ``MetaTensor``'s spacing is the length of its affine's columns (``(4, 4)``, or ``(B, 4, 4)``
    for a collated batch), i.e. MONAI's ``pixdim`` in the array's axis order. MONAI's default
    identity affine, on a tensor that was never given a geometry (no ``original_affine``,
    ``filename_or_obj`` or ``pixdim`` in its metadata), counts as unknown. An affine that a
    transform left behind (``Transposed`` does not update it) is the caller's to correct:
    pass ``spacing=`` then.
    """
    if spacing is not None or not hasattr(x, "affine") or not hasattr(x, "meta"):
        return spacing
    affine = np.asarray(x.affine.detach().cpu().numpy() if isinstance(x.affine, torch.Tensor) else x.affine)
    dims = x.ndim - 2 if spatial_dims is None else spatial_dims
    if affine.shape[-2:] not in ((4, 4), (dims + 1, dims + 1)):
        return None
    geometry = ("original_affine", "filename_or_obj", "pixdim")
    if np.allclose(affine, np.eye(affine.shape[-1])) and not any(k in x.meta for k in geometry):
        return None
    return np.linalg.norm(affine[..., :-1, :dims], axis=-2)
