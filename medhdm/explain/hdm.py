"""HDM (Peng et al., 2023): hierarchical dynamic masks.

**DM module.** Two phases of mask vectors (see :mod:`medhdm.explain.masks`):

1. *benchmark masks* on small grids (default ``S/16, S/8``; the papers' example
   ``S/32, S/16, S/8``), trained as in MDM; their mean ``Bbar`` roughly locates the
   critical evidence;
2. *auxiliary masks* on larger grids (default ``S/4, S/2``) superimposed on
   the fixed benchmark, ``mhat_j = Bbar.detach() * m_j``, trained with the same
   loss on ``mhat_j``: fine detail can only refine what the coarse masks found.

The module's map is ``M = norm(mean_j mhat_j)``.

**Small images.** The four grids are a ladder of octaves (``S/16`` to ``S/2``). Where a benchmark
grid would have fewer than 2 cells on an axis (``S/16`` on an axis of under 24 voxels), the whole
ladder moves one octave finer (``S/8`` to ``S``) rather than that axis being clipped to 2
cells (:meth:`HDM.grid_shapes`). On the 16 x 32 x 32 segmenter volumes the clip gave a
2 x 2 x 2 benchmark grid, an eighth of the volume per cell, whose upsampled masks are the same
ramp for any model that keeps the target's cell: the model-randomisation check read 0.23 on the
segmentation benchmark's volumes, 0.12 with the ladder moved (benchmarks/README.md). The shipped
classifiers' inputs (96 x 96; 24 x 48 x 48, where ``24/16 = 1.5`` rounds to 2) fit as asked.

**Budget.** Each phase step sends ``2 K`` composites per image through the model (kept
and deleted, ``K`` grids), so a stage costs ``steps x 2 K`` images per phase. The
defaults (5 steps per phase on a cosine learning-rate schedule, two grids per phase,
up to 4 stages that stop early, soft regions) send about 65 images through the model per
96 x 96 explanation; 20 steps per phase send about 400, and 100 steps at a constant rate on
three grids about 2,700, for masks that localise no better (benchmarks/README.md,
``cost_curve.py``).

**Stages.** DM modules are chained. Stage 1 explains ``x`` and finds evidence
that *suffices* for the decision (for a classifier that pools by maximum, one
lesion of several). After stage ``l`` the regions found so far are removed,
``R_l = max(R_{l-1}, M_l)`` (the soft map by default; ``threshold`` binarises it), and stage ``l + 1`` explains
``x_{l+1} = phi(x, 1 - R_l)``, the decision that remains. An image stops early
once its remaining evidence is gone, measured in log-odds ``o``:
``o(x_{l+1}) <= o(r) + tau * (o(x) - o(r))``.

**Fusion.** ``S = norm(G_sigma * sum_l alpha_l * M_l * (1 - R_{l-1}))``, with ``G_sigma``
an optional Gaussian smoothing (``smooth``). The weights (:func:`fusion_weights`):

- ``"sufficiency"``: ``alpha_l ~ suf_l = max(0, o(phi(x, M_l (1 - R_{l-1}))) - o(r))``,
  the evidence that the stage's new region carries *on its own*. A classifier
  that pools by maximum gets equal weights for two equally convincing lesions.
- ``"drop"``: ``alpha_l ~ drop_l = max(0, o(x_l) - o(x_{l+1}))``, the evidence that
  removing the stage's region took away (method.md's first reading; it gives the
  first of two redundant lesions almost no weight).
- ``"either"`` (default): ``alpha_l ~ max(suf_l, drop_l)``, both in log-odds: a stage
  counts when its region suffices on its own (redundant lesions: two equally convincing
  lesions under a max-pooling classifier weigh the same) *or* when removing it took
  evidence (lesions whose evidence adds up, none sufficient alone, which
  ``"sufficiency"`` weighs 0).
- ``"equal"``: every stage that ran weighs the same.
- ``"learned"``: weights optimised on the image so that deleting the fused map's
  top regions drops the class probability fastest (a differentiable deletion game
  over a few deletion fractions), started from the ``"either"`` weights.

All weights are normalised to sum to 1 over the stages that ran.

**Pixel refinement** (``refine``, on by default; an addition of this package, not in
the papers). The masks live on grids of at most ``S/2``; a stage's region holds a
share of the image, often more than the lesion, and ranks its voxels by how the
masks' rims happened to settle, and outside every region the voxels tie near 0. Each
stage also reads its input's gradient, ``g_l = sum_channels d o(x_l) / dx`` (one
forward/backward pass per stage; on the stage's input, so a second lesion that a
max-pooling classifier ignores while the first is present shows in stage 2's), keeps
the positive part of its smoothed *signed* value, ``d_l = norm(max(0, G_{1.5 sigma} * g_l))``
(where brightening the voxels' neighbourhood raises the evidence; the smoothing takes the
gradient as 0 outside the field of view: with the image's edge replicated instead, one edge
voxel's gradient weighs half the kernel, its noise does not cancel, and the rim outranks
lesions near the edge), and adds it to the
fused masks: ``norm(S + w * max_l d_l)`` (``refine_by="positive_gradient"``, weight
``w = refine``, default 1). With it goes the same gradient's smoothed magnitude,
``a_l = norm(G_sigma * |g_l|)`` (no extra pass), at the weight ``m`` (``magnitude``, default 0.2):
``T = norm(S + w * max_l d_l + m * max_l a_l)`` (see *Pixel AUROC* below).

Why this form: the map must depend on the model (the model-randomisation check,
:func:`medhdm.metrics.sanity_check`). The product form
``norm((S + e) * max_l norm(G_sigma * |g_l * (x_l - r)|))`` (``refine_by="gradient_input"``,
``refine=0.2``) reads 0.57 (2D) and 0.42 (3D) there: its ``(x - r)`` factor is the image's
edges against its blurred reference, whatever the weights. The gradient's magnitude
alone (``refine_by="gradient"``, same product) still reads about 0.2 / 0.3 (a random
network's gradient magnitude follows edges too). Smoothing the *signed* gradient cancels
that edge pattern, whose sign alternates, and keeps a trained lesion detector's coherent
positive response; the default reads about 0.1 in 2D and 3D, as the masks alone do
(benchmarks/README.md).

**Focus** (``focus``, ``contrast``; on by default with the refinement; options ``stage_power``,
``background_contrast``). The fused masks hold each stage's whole region, a coarse grid mask of 2 % (2D) or 5 % (3D)
of the image, smoothed; the refinement's signal is smoothed at 1.5 times that width. The refined map
``T`` therefore spreads its mass over whole cells: on the tuning sets (seeds 31 and 77, 24 cases each)
0.17 of it lay inside the lesions in 2D and 0.04 in 3D, against 0.27-0.28 and 0.19-0.20 for Gradient x
Input. The focus term keeps, per stage, the stage's new region *times its own pixel signal*,
``M_l (1 - R_{l-1}) r_l``, where the masks and the model's gradient on that stage's input agree (``r_l``, the
stage's part of the refinement, below), normalised per stage and scaled by the stage's share of the evidence,
its fusion weight over the largest, ``w_l = (alpha_l / max_k alpha_k) ** q`` (``q = 1`` by default); the maximum
over stages is added to ``T``: ``X = norm(f * max_l w_l norm(M_l (1 - R_{l-1}) r_l) + T)``. The weight keeps the
map continuous in its input: a late stage that carried little evidence has masks that input noise of 1e-6 can move
by 0.4 (its optimisation has little to follow); normalised to peak 1 without the weight, it moved the
3D map by 0.17 where ``T``, which weighs it by ``alpha_l``, moved by 0.01. Both factors of the term come from
the model (its masks and its gradient), so the model-randomisation check stays where ``T`` had it
(tuning sets: 0.01 / 0.04 in 2D, 0.07 / -0.10 in 3D). It costs no pass through the model.

*Focus signal* (``focus_signal``). A stage's signal in the term is its part of the refined map,
``r_l = norm(w d_l + m a_l)`` (``"refinement"``, the default), not its positive gradient ``d_l`` alone
(``"positive_gradient"``): where a stage's positive gradient peaks off the lesion, on a rim or a distractor inside
the stage's region, the magnitude of the same gradient, which ranks the lesions (*Pixel AUROC*, below), pulls the
term's peak back. On the six tuning seeds of the knee (``benchmarks/hdm_focus.py``, ``hdm_focus_signal_tuning.json``;
chosen offline on their stage terms first) it hit 0.958 of the lesions in 2-3-lesion cases in 2D and 0.788 in 3D
on average, against 0.955 / 0.780 on ``d_l`` alone and 0.955 / 0.774 before the focus term (of the five tuning
sets where ``d_l`` lost a lesion against the map before, it keeps it on three), pixel AUROC 0.0004 / 0.0006 higher,
with 0.008 / 0.018 less of the map in the lesions. A 3D focus weight of 0.75, the only one of 0.25-1 that lost no
lesion on any tuning set (0.795 on average, 0.26 of the map in the lesions), hit the same lesions as 1 on the
held-out sets with 0.04-0.05 less of the map in them, and is not the default.

*Contrast.* The sum ``X`` is then shaped by a strictly increasing function, which keeps the voxels' order
(pixel AUROC, pointing and the sanity check's Spearman do not move with it) and moves mass from the low
background to the peaks. The focus weight ``f`` was chosen with one exponent, ``X ** gamma``
(``benchmarks/hdm_focus.py``, tuning seeds 31 and 77 only): in 2D ``f = 0.5, gamma = 1.5`` put 0.33 / 0.34 of
the map in the lesions (pixel AUROC 0.984 / 0.989, lesions hit in 2-3-lesion cases 0.98 / 0.98; without focus
0.97 / 0.98); in 3D, where the lesions are a smaller share of the volume, ``f = 0.5, gamma = 1.5`` kept only
0.10 in them and ``f = 1, gamma = 2`` 0.22 / 0.23, hence ``f = 1`` in 3D. But an exponent lowers every peak
under 1 and pushes second lesions' peaks under the lesion-hit count's floor of 0.2 of the maximum: on the
held-out 3D sets the one-exponent map hit 0.62 / 0.67 of the lesions in 2-3-lesion cases against 0.73 / 0.75
without the focus term.

*Knee* (:func:`knee_map`; the default, ``knee = 0.2`` in 2D and ``0.3`` in 3D, ``knee_slope = 2, contrast = 1``).
The map is ``X`` itself at and above the knee ``t`` of the maximum, so every peak there keeps its height relative
to the maximum; below the knee it falls in a straight line of slope ``k = 2`` to 0 at ``X = t / 2``; under that
it is ``1e-3 X`` (:data:`KNEE_TAIL`: ordered, near 0). Its slope is at most ``k``, so a change of ``X`` moves
the map by at most twice as much: under input noise of 1e-6 (the continuity case of ``tests/test_hdm_defaults.py``,
2 threads) the 3D map moves by 0.028 (limit 0.05; one exponent of 2: 0.011); on the 8 volumes of
``benchmarks/stability.py`` by at most 0.130 (one volume, where late stages' pixel signals, each normalised to
peak 1 whatever their little evidence, follow the noise; 2D 0.181). Chosen on six tuning seeds (7, 31,
77, 808, 1234, 2025; 24 cases / volumes each; ``benchmarks/hdm_focus.py``) at the default gradient magnitude: the
highest knee of 0.15-0.3 that hits as many lesions in 2-3-lesion cases as any. In 2D 0.2: lesions hit 0.95 on
average, as the map before the focus term, with 0.35 of the map in the lesions (Gradient x Input 0.27); 0.25 and
0.3 hit 0.94 with 0.39 and 0.44 in them. In 3D every knee of 0.15-0.3 hits 0.78 (before the focus term 0.77), so
0.3: 0.32 of the map in the lesions (Gradient x Input 0.20; at 0.2 0.19). ``knee = 0`` gives the one-exponent map
``X ** gamma`` (and the peak floor below).

*Pixel AUROC* (``magnitude``). No contrast moves it (they keep the order). Without the gradient's magnitude
HDM's stayed 0.003-0.015 under Gradient x Input's on the tuning sets (3D seed 31: 0.975 against 0.989): the
positive part of the smoothed signed gradient is 0 over about half the image, where the voxels tie or follow the
masks' rims, and a lesion that no stage's region reaches ranks with the background. The magnitude of the same
gradient, ``a_l``, orders those voxels by how much the model's evidence moves with them; it is the model's factor
of Gradient x Input without the image's ``(x - r)``. But the magnitude of a randomly initialised network's
gradient follows the image a little (pixel AUROC 0.56-0.69 against the lesions), so the model-randomisation
Spearman rises with its weight ``m``. Chosen on the tuning seeds 31 / 77 (24 cases each; ``benchmarks/hdm_focus.py``,
``hdm_focus_magnitude_31_77.json``, with the knee at 0.3) and the sanity check of every shipped network:

- 2D, ``m = 0.2``: pixel AUROC 0.989 / 0.992 (``m = 0``: 0.985 / 0.989; Gradient x Input 0.988 / 0.992), no lesion
  lost, 0.01-0.02 less of the map in the lesions; ``m = 0.3`` loses a lesion on seed 77, and on the second 2D
  network of ``benchmarks/sanity_networks.py`` the Spearman reads 0.16 at ``m = 0.2``, 0.19 at 0.5 and 0.23 at 1
  (the check's limit 0.2).
- 3D, ``m = 0.2`` as well: the 3D AUROC rises with ``m`` up to about 2 (0.985 / 0.987 on the tuning seeds, more of
  the map in the lesions too), but on the shipped 3D segmenter (``tests/test_sanity.py``, 16 x 32 x 32 cue volumes)
  the Spearman reads 0.12 at ``m = 0``, 0.15 at 0.2, 0.20 at 0.5, 0.26 at 1 and 0.31 at 2
  (``benchmarks/magnitude_sanity.py``; the magnitude of the smoothed signed gradient, ``|G * g|``, in an
  exploratory run not committed: 0.17 / 0.20 / 0.22 at 0.5 / 1 / 2). At ``m = 0.2`` the 3D pixel AUROC is 0.980 /
  0.982 on seeds 31 / 77 (``m = 0``: 0.974 / 0.979; Gradient x Input 0.989 / 0.987), over the six tuning seeds of
  the knee 0.976 against 0.987.

A residual pass, the positive smoothed gradient of ``x_{L+1}`` (every stage's region removed; one more
forward/backward) added to the refinement's signal, raised the 3D pixel AUROC by 0.001-0.002 and is not part of
HDM; no weighting of the masks against the positive gradient reached 0.976 on 3D seed 31 (``benchmarks/README.md``).

*Peak floor* (:func:`contrast_map`; options with ``knee = 0``, off by default). ``background_contrast = beta`` keeps
``X ** gamma`` at and above the floor ``tau = 0.2`` of the maximum (:data:`PEAK_FLOOR`) and uses
``tau ** gamma * (X / tau) ** beta`` below it; ``stage_power = q`` raises the stage weight to ``q``. On the
tuning seeds ``gamma = 1, beta = 8`` (2D ``q = 1``, 3D ``q = 0.5``) hit more lesions and put more of the map
in them than one exponent, but the map's slope at the floor is ``beta``: under input noise of 1e-6 (the
continuity case of ``tests/test_hdm_defaults.py``, 2 threads) it moved the 3D map by 0.07 (``q = 1``) and
0.11 (``q = 0.5``), over the test's 0.05 (``benchmarks/README.md``).

**Physical units** (``units``; :mod:`medhdm.explain.units`). The sizes above are written in
voxels and shares of the image. When the input's spacing is known (``explain(x, spacing=...)``,
a MONAI ``MetaTensor``'s affine, or the file pipeline, which passes the classifier input's),
HDM reads them in millimetres instead, so that the same anatomy gets the same grids and
Gaussians at 96 and at 192 voxels across: the grid cells, the fused map's and the
refinement's Gaussians, the benchmark masks' area budget and the blur reference's sigma
(which decides what "removed" means, so it scales with them). The millimetre defaults are the
voxel defaults at the shipped models' grid (250 mm across; :data:`~medhdm.explain.units.SHIPPED_GRIDS`),
where they give the same maps: in 2D (96 x 96 at 2.604 mm) benchmark cells of 41.7 and 20.8 mm,
auxiliary cells of 10.4 and 5.2 mm, a fused-map sigma of 7.8 mm (refinement 11.7 mm), an area
budget of 1250 mm^2 and a blur sigma of 12.5 mm; in 3D (24 x 48 x 48 at 3 x 5.2 x 5.2 mm) cells of
(48, 83, 83) and (24, 42, 42) mm, then (12, 21, 21) and (6, 10, 10) mm, a sigma of (4.5, 7.8, 7.8) mm,
a volume budget of 225,000 mm^3 (5 %) and a blur sigma of (7.2, 12.5, 12.5) mm. Anisotropic spacing
gives anisotropic grids and Gaussians.
Without a spacing, or with ``units=None``, the sizes are voxels as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .base import Explanation, StageRecord
from .maps import normalise
from .mask_explainer import MaskExplainer
from .masks import GridSpec, MaskObjective, grid_key, ladder_shapes, optimise_masks, relative_cells
from .reference import ReferenceSpec, blur_reference, composite, gaussian_blur, make_reference
from .scoring import ClassScorer
from .units import PhysicalSettings, Units, check_units, resolve_units

__all__ = ["HDM", "contrast_map", "focus_map", "focus_signals", "fusion_weights", "knee_map"]


@dataclass
class _Run:
    """What the stages of one HDM call have found so far (batch of ``B`` images)."""

    removed: torch.Tensor  # R_{l-1}, (B, 1, *S)
    o_in: torch.Tensor  # o(x_l), (B,)
    active: torch.Tensor  # images still explained, (B,) bool
    stages: list[StageRecord] = field(default_factory=list)
    contributions: list[torch.Tensor] = field(default_factory=list)  # M_l (1 - R_{l-1}) per stage
    sufficiency: list[torch.Tensor] = field(default_factory=list)  # (B,): o(new region alone) - o(r), >= 0
    drops: list[torch.Tensor] = field(default_factory=list)  # (B,): o(x_l) - o(x_{l+1}), >= 0
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    backward: int = 0
    spacing: tuple[float, ...] | None = None  # mm per spatial axis when known (HDM's sizes then in mm)


_FUSIONS = ("either", "sufficiency", "drop", "equal", "learned")
_REFINE_BY = ("positive_gradient", "gradient", "gradient_input")
_FAST = {"steps": 5, "lr": 0.3, "final_lr": 0.03}  # every mask phase
_SIGNAL_SMOOTHING = 1.5  # the positive gradient is smoothed at 1.5 x the fused map's sigma
_FOCUS = {2: 0.5, 3: 1.0}  # the focus term's weight per spatial dimension (module docstring)
_CONTRAST = {2: 1.0, 3: 1.0}  # the focused map's exponent per spatial dimension (above the knee)
_KNEE = {2: 0.2, 3: 0.3}  # the share of the maximum under which the focused map falls off (module docstring)
_KNEE_SLOPE = {2: 2.0, 3: 2.0}  # the slope of that fall, per spatial dimension
#: the slope of the map under the knee's fall (>0: the voxels keep their order there too)
KNEE_TAIL = 1e-3
_MAGNITUDE = {2: 0.2, 3: 0.2}  # the gradient magnitude's weight in the refined map, per spatial dimension
_STAGE_POWER = {2: 1.0, 3: 1.0}  # the exponent of the focus term's stage weight, per spatial dimension
_FOCUS_SIGNALS = ("refinement", "positive_gradient")  # each stage's pixel signal in the focus term
#: the share of the map's maximum below which the focused map is background (a local maximum counts as a
#: candidate finding from this share on: ``findings.MIN_PEAK``, the lesion-hit count's floor)
PEAK_FLOOR = 0.2


def _per_dims(name: str, value, minimum: float) -> dict[int, float]:
    """``value`` (one number, or a dict ``{2: ..., 3: ...}``) as a dict per spatial dimension, each >= ``minimum``."""
    values = dict(value) if isinstance(value, dict) else {2: value, 3: value}
    values = {int(k) if isinstance(k, str) and k in ("2", "3") else k: v for k, v in values.items()}  # as JSON holds it
    if set(values) != {2, 3}:
        raise ValueError(f"{name}: expected a number or a dict with the keys 2 and 3, got {value!r}")
    for v in values.values():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= minimum:
            raise ValueError(f"{name}: expected values >= {minimum:g}, got {value!r}")
    return {k: float(v) for k, v in values.items()}


def fusion_weights(kind: str, sufficiency: torch.Tensor, drop: torch.Tensor, ran: torch.Tensor) -> torch.Tensor:
    """HDM's stage weights ``alpha`` ``(B, L)``, each row summing to 1 over the stages that ran.

    Args:
        kind: ``"either"``, ``"sufficiency"``, ``"drop"`` or ``"equal"`` (see the module docstring).
        sufficiency: per stage, the log-odds its new region carries alone above the
            reference, ``max(0, o(phi(x, M_l (1 - R_{l-1}))) - o(r))``, ``(B, L)``.
        drop: per stage, the log-odds its removal took, ``max(0, o(x_l) - o(x_{l+1}))``, ``(B, L)``.
        ran: 1 where the stage ran for the image, else 0, ``(B, L)``.
    Returns:
        ``(B, L)``; an image whose stages carried no measurable evidence weighs them equally.
    """
    if kind not in ("either", "sufficiency", "drop", "equal"):
        raise ValueError(f"kind: expected 'either', 'sufficiency', 'drop' or 'equal', got {kind!r}")
    if kind == "sufficiency":
        raw = sufficiency
    elif kind == "drop":
        raw = drop
    elif kind == "either":
        raw = torch.maximum(sufficiency, drop)
    else:
        raw = ran
    raw = raw.clamp_min(0) * ran
    raw = torch.where(raw.sum(1, keepdim=True) > 0, raw, ran)
    return raw / raw.sum(1, keepdim=True)


def focus_map(
    refined: torch.Tensor,
    contributions: Sequence[torch.Tensor],
    sensitivities: Sequence[torch.Tensor],
    weight: float,
    alphas: Sequence[torch.Tensor] | None = None,
    power: float = 1.0,
) -> torch.Tensor:
    """HDM's focus term added to its refined map: ``norm(weight * max_l (a_l / max_k a_k)^q norm(C_l r_l) + refined)``.

    Args:
        refined: the refined map ``T`` ``(B, 1, *S)``.
        contributions: per stage, its new region ``C_l = M_l (1 - R_{l-1})`` ``(B, 1, *S)`` (0 where
            the stage did not run).
        sensitivities: per stage, its pixel signal ``(B, 1, *S)`` (HDM's ``focus_signal``: ``r_l = norm(w d_l + m a_l)``
            or ``d_l``).
        weight: ``f``; 0 returns ``refined`` unchanged.
        alphas: per stage, its fusion weight ``a_l`` ``(B,)``; each stage's normalised term is scaled
            by ``(a_l / max_k a_k) ** power`` (a stage that carried little evidence adds little focus).
            ``None`` weighs every stage 1.
        power: ``q``, the exponent of the stage weight (default 1).
    Returns:
        ``(B, 1, *S)`` in ``[0, 1]`` (before the contrast: the knee or the exponent).
    """
    if weight == 0:
        return refined
    per_stage = torch.stack([normalise(c * d) for c, d in zip(contributions, sensitivities)], dim=0)
    if alphas is not None:
        a = torch.stack(list(alphas), dim=0).clamp_min(0)  # (L, B)
        a = (a / a.amax(dim=0, keepdim=True).clamp_min(1e-12)) ** power
        per_stage = per_stage * a.view(*a.shape, *([1] * (refined.ndim - 1)))
    return normalise(weight * per_stage.amax(dim=0) + refined)


def focus_signals(stages: Sequence[StageRecord], refine: float, magnitude: float) -> list[torch.Tensor]:
    """Each stage's signal in HDM's focus term (``focus_signal="refinement"``): its part of the refined map,
    ``r_l = norm(w d_l + m a_l)`` (``refine = w``, ``magnitude = m``); its pixel signal ``d_l`` at ``m = 0``."""
    if not magnitude:
        return [stage.sensitivity for stage in stages]
    return [normalise(refine * stage.sensitivity + magnitude * stage.magnitude) for stage in stages]


def contrast_map(
    focused: torch.Tensor, contrast: float, background_contrast: float, floor: float = PEAK_FLOOR
) -> torch.Tensor:
    """HDM's contrast: ``X ** gamma * min(1, X / floor) ** (beta - gamma)`` of a map ``X`` in ``[0, 1]``.

    Above ``floor`` (a share of the maximum 1) the map is ``X ** gamma`` (``contrast``); below it
    ``floor ** gamma * (X / floor) ** beta`` (``background_contrast``), the two meeting at the floor. Strictly
    increasing for ``gamma, beta > 0``: the voxels keep their order.
    """
    below = floor**contrast * (focused / floor) ** background_contrast
    return torch.where(focused < floor, below, focused**contrast)


def knee_map(focused: torch.Tensor, contrast: float, knee: float, slope: float) -> torch.Tensor:
    """HDM's default contrast of a map ``X`` in ``[0, 1]``: ``max(e X, K(X))`` with ``K = X ** gamma`` at and above
    the knee ``t`` and ``t ** gamma - k (t - X)`` (clipped at 0) below it, ``e`` = :data:`KNEE_TAIL`.

    Above the knee the map is ``X ** gamma`` (``contrast``; 1: the focused map itself); below it, it falls
    in a straight line of slope ``k`` (``slope``) to 0 at ``X = t - t ** gamma / k``, and under that it is
    ``e X``. Its slope is at most ``max(k, gamma)``: a change ``dX`` of the focused map moves it by at most that
    times ``dX`` (continuity). Strictly increasing: the voxels keep their order.
    """
    fall = (knee**contrast - slope * (knee - focused)).clamp_min(0)
    shaped = torch.where(focused >= knee, focused**contrast, fall)
    return torch.maximum(KNEE_TAIL * focused, shaped)


class HDM(MaskExplainer):
    """Hierarchical dynamic masks.

    Args:
        model: a classifier ``(B, C, *S) -> (B, K)``.
        benchmark_grids: DM phase-1 grids, as divisors of the input size (default ``S/16, S/8``;
            the papers' three, e.g. ``(32, 16, 8)``, cost a third more passes per phase); with a
            known spacing, cells of that many voxels of the native grid (``units``). Where one would
            have fewer than 2 cells on an axis, every grid's cells are halved until it has
            (see the module docstring, "Small images").
        auxiliary_grids: DM phase-2 grids, as divisors of the input size (default ``S/4, S/2``);
            in mm like ``benchmark_grids``.
        benchmark_objective, auxiliary_objective: loss weights and optimiser settings of
            each phase (see :class:`~medhdm.explain.masks.MaskObjective`). Default: 5 Adam
            steps, lr 0.3 annealed to 0.03 on a half cosine (``set_steps(n)`` changes every
            phase), and the deletion term
            (``lambda_del=1``) in both phases; the
            benchmark masks hold a fixed area budget of 2 % of the image
            (``area=0.02, lambda_area=30``), the auxiliary masks the papers' mean-area
            penalty (``lambda_area=1``) and ``lambda_tv=1``. Chosen by measurement on 2D
            lesion cases (benchmarks/README.md); the papers' preservation-only loss is
            ``MaskObjective(lambda_area=2, lambda_del=0)``.
        volume_benchmark_objective: the benchmark masks' settings for 3D inputs. Default:
            ``benchmark_objective`` when that is given, else an area budget of 5 % of the volume
            (``area=0.05, lambda_area=30, lambda_del=1``): at 5 steps with soft regions it gives a
            3D pixel AUROC of 0.96-0.98 on four sets, against 0.94-0.96 with the mean-area penalty
            (``lambda_area=1, lambda_del=1``; ``hdm_settings.py``).
        max_stages: at most this many DM stages (default 4; method.md says 3: a fourth stage
            costs few passes, most images stop earlier, and covers more lesions).
        tau: early-stop fraction of the log-odds evidence ``o(x) - o(r)`` (default 0.1).
        threshold: ``None`` (default) removes a stage's soft map, ``R_l = max(R_{l-1}, M_l)``;
            a value binarises the map at it (for example 0.3). A binarised region jumps when
            a voxel crosses the threshold: under input noise of 1e-6 the 3D map's largest change
            per volume had a median of 0.027 binarised and 0.0002 soft (``stability.py``).
        fusion: ``"either"`` (default), ``"sufficiency"``, ``"drop"``, ``"equal"`` or ``"learned"``
            (see the module docstring).
        fusion_steps: Adam steps of the learned fusion.
        refine: the weight of the pixel refinement (see the module docstring; default 1);
            ``None`` returns the fused masks alone. With ``refine_by="gradient_input"`` or
            ``"gradient"`` it is the floor ``e`` of the product form (see the module docstring;
            ``refine=0.2, refine_by="gradient_input"`` gives it).
        magnitude: the weight ``m`` of the stages' smoothed gradient magnitude in the refined map
            (``"positive_gradient"`` only; see the module docstring, *Pixel AUROC*; default 0.2; at least 0); one
            number or a dict ``{2: ..., 3: ...}``; 0 gives the map without it.
        refine_by: the refinement's pixel signal: ``"positive_gradient"`` (default; passes the
            model-randomisation check), ``"gradient"`` or ``"gradient_input"`` (both fail it).
        signal_padding: how the ``"positive_gradient"`` signal is smoothed at the image's edge:
            ``"zeros"`` (default; no gradient outside the field of view) or ``"replicate"`` (the
            edge voxel repeated; one noisy edge voxel then weighs half the kernel, and on the
            held-out seed 9999 the peak sits on the edge in 2 of 24 cases).
        smooth: the fused map is smoothed with a Gaussian of standard deviation
            ``smooth * max(S)`` voxels on every axis before it is normalised (default
            1/32: 3 pixels on a 96 x 96 image); ``None`` or 0 keeps it as fused. A stage's
            map holds a share of the image, often larger than the lesion, whose fine
            auxiliary masks peak anywhere on it, at its rim too; smoothing moves the map's
            peak to the region's centre of mass and gives each region one peak. The pixel
            refinement's signals are smoothed with the same Gaussian (``"positive_gradient"``:
            1.5 times wider).
        focus: the weight ``f`` of the focus term (see the module docstring; default 0.5 on 2D and 1
            on 3D inputs); one number for both, or a dict ``{2: ..., 3: ...}``; 0 leaves it out.
        contrast: the exponent ``gamma`` of the focused map above the knee (with ``knee=0``: over the whole
            map; default 1; at least 1); one number or a dict like ``focus``. ``focus=0, contrast=1, knee=0``
            gives the map of the defaults before the focus term.
        background_contrast: with ``knee=0``, the exponent ``beta`` below the peak floor, 0.2 of the maximum
            (:func:`contrast_map`; at least 1); one number or a dict like ``focus``. ``None`` (default):
            ``contrast``, one exponent over the whole map.
        knee: the share of the maximum ``t`` under which the focused map falls off in a straight line
            (:func:`knee_map`; default 0.3; in ``[0, 1)``); 0 leaves the knee out. One number or a dict like ``focus``.
        knee_slope: the slope ``k`` of that fall (default 2; at least 1); the map falls to 0 at
            ``X = t - t ** gamma / k``, and its slope, so its change under a change of the input, is at
            most ``max(k, gamma)`` times that of ``X``. One number or a dict like ``focus``.
        stage_power: the exponent ``q`` of the focus term's stage weight ``(alpha_l / max_k alpha_k) ** q``
            (default 1; at least 0); one number or a dict like ``focus``.
        focus_signal: each stage's pixel signal in the focus term: ``"refinement"`` (default; the stage's part of
            the refined map, ``norm(w d_l + m a_l)``) or ``"positive_gradient"`` (``d_l`` alone); the same with
            ``magnitude=0`` or another ``refine_by``. See the module docstring, *Focus signal*.
        units: how a known spacing turns the sizes into mm (see the module docstring):
            ``"shipped"`` (default) reads ``benchmark_grids``, ``auxiliary_grids``, ``smooth``, the
            benchmark objective's ``area`` and the blur reference's ``max(S) / 20`` as meant on the
            shipped models' grid (:data:`~medhdm.explain.units.SHIPPED_GRIDS`); a
            :class:`~medhdm.explain.units.NativeGrid` reads them on another (the grid a model of
            your own was trained on); :class:`~medhdm.explain.units.PhysicalSettings` gives the sizes
            in mm directly; a dict ``{2: ..., 3: ...}`` one of those per dimension; ``None`` keeps
            voxels whatever the spacing. :meth:`physical_settings` shows the sizes in mm.
        reference, seed, amp, max_batch: see :class:`~medhdm.explain.base.Explainer`; with a known
            spacing and ``units``, the ``"blur"`` reference's sigma is in mm too.
    """

    name = "HDM"
    objective_names = ("benchmark_objective", "volume_benchmark_objective", "auxiliary_objective")

    def __init__(
        self,
        model: nn.Module,
        *,
        benchmark_grids: Sequence[GridSpec] = (16, 8),
        auxiliary_grids: Sequence[GridSpec] = (4, 2),
        benchmark_objective: MaskObjective | None = None,
        volume_benchmark_objective: MaskObjective | None = None,
        auxiliary_objective: MaskObjective | None = None,
        max_stages: int = 4,
        tau: float = 0.1,
        threshold: float | None = None,
        fusion: str = "either",
        fusion_steps: int = 30,
        refine: float | None = 1.0,
        refine_by: str = "positive_gradient",
        signal_padding: str = "zeros",
        smooth: float | None = 1 / 32,
        focus: float | dict[int, float] | None = None,
        contrast: float | dict[int, float] | None = None,
        background_contrast: float | dict[int, float] | None = None,
        stage_power: float | dict[int, float] | None = None,
        focus_signal: str = "refinement",
        knee: float | dict[int, float] | None = None,
        knee_slope: float | dict[int, float] | None = None,
        magnitude: float | dict[int, float] | None = None,
        reference: ReferenceSpec = "blur",
        seed: int = 0,
        amp: bool = False,
        max_batch: int | None = None,
        units: Units = "shipped",
    ) -> None:
        super().__init__(model, reference=reference, seed=seed, amp=amp, max_batch=max_batch)
        self.units = check_units(units)
        if isinstance(max_stages, bool) or not isinstance(max_stages, int) or max_stages < 1:
            raise ValueError(f"max_stages: expected an int >= 1, got {max_stages!r}")
        if not 0 <= tau < 1:
            raise ValueError(f"tau: expected a fraction in [0, 1), got {tau!r}")
        if threshold is not None and not 0 < threshold < 1:
            raise ValueError(f"threshold: expected None or a value in (0, 1), got {threshold!r}")
        if fusion not in _FUSIONS:
            raise ValueError(f"fusion: expected one of {_FUSIONS}, got {fusion!r}")
        if smooth is not None and not 0 <= smooth < 1:
            raise ValueError(f"smooth: expected None or a fraction of the image size in [0, 1), got {smooth!r}")
        self.benchmark_grids = tuple(benchmark_grids)
        self.auxiliary_grids = tuple(auxiliary_grids)
        # Defaults chosen by measurement on 2D lesion cases (benchmarks/README.md): with the
        # papers' preservation-only loss HDM's pointing game was 0.58 on the shipped model,
        # with the deletion term 0.83, with the deletion term and the benchmark masks' fixed
        # 2 % area budget 0.92 (lesions hit in 2-3-lesion cases 0.42 -> 0.57 -> 0.69).
        # 5 steps per phase on a cosine schedule from lr 0.3 to 0.03, two grids per phase: masks
        # that localise as well as 100 steps at lr 0.1 on three grids, for about 1/40 of the images
        # (benchmarks/README.md, cost_curve.py).
        self.benchmark_objective = benchmark_objective or MaskObjective(
            **_FAST, area=0.02, lambda_area=30.0, lambda_del=1.0
        )
        self.volume_benchmark_objective = (
            volume_benchmark_objective
            or benchmark_objective
            or MaskObjective(**_FAST, area=0.05, lambda_area=30.0, lambda_del=1.0)
        )
        self.auxiliary_objective = auxiliary_objective or MaskObjective(
            **_FAST, lambda_area=1.0, lambda_tv=1.0, lambda_del=1.0
        )
        self.max_stages = max_stages
        self.tau = float(tau)
        self.threshold = threshold
        self.fusion = fusion
        self.fusion_steps = int(fusion_steps)
        self.smooth = smooth
        self._set_refinement(refine, refine_by, signal_padding)
        self._set_focus(focus, contrast, background_contrast, stage_power, focus_signal)
        self._set_knee(knee, knee_slope, magnitude)

    def _set_refinement(self, refine, refine_by, signal_padding) -> None:
        """The pixel refinement's weight, signal and the signal's padding at the image's edge."""
        if refine is not None and (isinstance(refine, bool) or not isinstance(refine, (int, float)) or not refine >= 0):
            raise ValueError(f"refine: expected None or a floor >= 0, got {refine!r}")
        if refine_by not in _REFINE_BY:
            raise ValueError(f"refine_by: expected one of {_REFINE_BY}, got {refine_by!r}")
        if signal_padding not in ("zeros", "replicate"):
            raise ValueError(f"signal_padding: expected 'zeros' or 'replicate', got {signal_padding!r}")
        self.refine = None if refine is None else float(refine)
        self.refine_by = refine_by
        self.signal_padding = signal_padding

    def _set_focus(self, focus, contrast, background_contrast, stage_power, focus_signal) -> None:
        """The focus term's and the contrast's settings per spatial dimension (defaults where ``None``)."""
        if focus_signal not in _FOCUS_SIGNALS:
            raise ValueError(f"focus_signal: expected one of {_FOCUS_SIGNALS}, got {focus_signal!r}")
        self.focus_signal = focus_signal
        self.focus = _per_dims("focus", _FOCUS if focus is None else focus, minimum=0.0)
        self.contrast = _per_dims("contrast", _CONTRAST if contrast is None else contrast, minimum=1.0)
        if background_contrast is None:  # one exponent over the whole map
            background_contrast = self.contrast
        self.background_contrast = _per_dims("background_contrast", background_contrast, 1.0)
        self.stage_power = _per_dims("stage_power", _STAGE_POWER if stage_power is None else stage_power, 0.0)

    def _set_knee(self, knee, knee_slope, magnitude) -> None:
        """The knee's settings and the gradient magnitude's weight per spatial dimension (defaults where ``None``)."""
        self.magnitude = _per_dims("magnitude", _MAGNITUDE if magnitude is None else magnitude, minimum=0.0)
        self.knee = _per_dims("knee", _KNEE if knee is None else knee, minimum=0.0)
        self.knee_slope = _per_dims("knee_slope", _KNEE_SLOPE if knee_slope is None else knee_slope, minimum=1.0)
        if any(not v < 1 for v in self.knee.values()):
            raise ValueError(f"knee: expected values in [0, 1), got {knee!r}")

    # -- one DM module ---------------------------------------------------------------
    def grid_shapes(
        self, spatial: Sequence[int], spacing: Sequence[float] | None = None
    ) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
        """The benchmark and auxiliary grid shapes on an image of ``spatial`` voxels (of ``spacing`` mm: the
        grids in mm, ``units``): the ladder moved an octave finer where a benchmark grid would have fewer
        than 2 cells on an axis (:func:`~medhdm.explain.masks.ladder_shapes`)."""
        spatial = tuple(int(n) for n in spatial)
        units = self.physical_settings(len(spatial)) if spacing is not None else None
        if units is None:

            def cells_at(finer: int) -> tuple[list, list]:
                return relative_cells(spatial, self.benchmark_grids, finer), relative_cells(
                    spatial, self.auxiliary_grids, finer
                )
        else:

            def cells_at(finer: int) -> tuple[list, list]:
                return units.grid_shapes("benchmark", spatial, spacing, finer), units.grid_shapes(
                    "auxiliary", spatial, spacing, finer
                )

        bench, aux, _ = ladder_shapes(spatial, cells_at)
        return bench, aux

    def dynamic_mask(
        self,
        scorer: ClassScorer,
        x: torch.Tensor,
        reference: torch.Tensor,
        class_idx: torch.Tensor,
        spacing: Sequence[float] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """Run one DM module on ``x`` ``(n, C, *S)`` (of ``spacing`` mm per axis: grids and area in mm).

        Returns:
            the normalised map ``(n, 1, *S)``, the per-grid masks ``(n, 1, *S)`` keyed
            ``"benchmark/<grid>"`` and ``"auxiliary/<grid>"``, and the backward passes run.
        """
        spatial = x.shape[2:]
        objective = self.volume_benchmark_objective if len(spatial) == 3 else self.benchmark_objective
        units = self.physical_settings(len(spatial)) if spacing is not None else None
        bench_grids, aux_grids = self.grid_shapes(spatial, spacing)
        if units is not None:
            area = units.area_share(spatial, spacing)
            if objective.area is not None and area is not None:
                objective = dataclasses.replace(objective, area=area)
        bench = optimise_masks(scorer, x, reference, class_idx, bench_grids, objective)
        bbar = bench.masks.mean(dim=1, keepdim=True)
        aux = optimise_masks(scorer, x, reference, class_idx, aux_grids, self.auxiliary_objective, base=bbar)
        stage_map = normalise(aux.masks.mean(dim=1, keepdim=True))
        masks = {f"benchmark/{grid_key(g)}": bench.masks[:, i : i + 1] for i, g in enumerate(bench_grids)}
        masks.update({f"auxiliary/{grid_key(g)}": aux.masks[:, i : i + 1] for i, g in enumerate(aux_grids)})
        return stage_map, masks, bench.steps + aux.steps

    # -- the hierarchy -----------------------------------------------------------------
    def _explain(self, x, class_idx, scorer: ClassScorer, logits, reference, spacing=None) -> Explanation:
        """HDM's three steps: the stages (:meth:`_run_stages`), the fusion (:meth:`_fuse`)
        and the pixel refinement (:meth:`_refine`); ``spacing`` ``(B, d)`` mm, one row for all images."""
        with torch.no_grad():
            o_x = scorer.log_odds(logits, class_idx)
            ref_logits = scorer.logits(reference)
            o_r = scorer.log_odds(ref_logits, class_idx)
        spacing = None if spacing is None else tuple(float(v) for v in np.asarray(spacing)[0])
        run = self._run_stages(scorer, x, reference, class_idx, o_x, o_r, spacing)
        saliency = self._fuse(scorer, x, reference, class_idx, run)
        saliency = self._refine(saliency, run)
        return Explanation(
            saliency=saliency,
            class_idx=class_idx,
            score=scorer.prob(logits, class_idx),
            reference_score=scorer.prob(ref_logits, class_idx),
            method=self.name,
            stages=run.stages,
            masks=run.masks,
            backward_passes=run.backward,
        )

    def _run_stages(self, scorer, x, reference, class_idx, o_x, o_r, spacing=None) -> _Run:
        """Stage 1 on ``x``, then each further stage on ``x`` with the regions found so far removed,
        until ``max_stages`` or until no image has evidence left above the early-stop floor."""
        run = _Run(
            removed=torch.zeros_like(x[:, :1]),
            o_in=o_x.clone(),
            active=torch.ones(x.shape[0], dtype=torch.bool, device=x.device),
            spacing=spacing,
        )
        floor = o_r + self.tau * (o_x - o_r)
        for level in range(1, self.max_stages + 1):
            idx = run.active.nonzero().flatten()
            if idx.numel() == 0:
                break
            o_after = self._stage(scorer, x, reference, class_idx, o_r, idx, level, run)
            run.active = run.active.clone()
            run.active[idx] = o_after > floor[idx]
        return run

    def _stage(self, scorer, x, reference, class_idx, o_r, idx, level: int, run: _Run) -> torch.Tensor:
        """Stage ``level`` on the images ``idx`` still active: one DM module on ``x_l``, its region
        removed, its evidence measured; updates ``run`` and returns ``o(x_{l+1})`` of those images."""
        x_in = composite(x[idx], 1 - run.removed[idx], reference[idx])
        sensitivity, magnitude = self._sensitivity(scorer, x_in, reference[idx], class_idx[idx], run)
        stage_map, stage_masks, steps = self.dynamic_mask(scorer, x_in, reference[idx], class_idx[idx], run.spacing)
        run.backward += steps
        contribution = stage_map * (1 - run.removed[idx])
        region = stage_map if self.threshold is None else (stage_map >= self.threshold).to(stage_map.dtype)
        removed_next = run.removed.clone()
        removed_next[idx] = torch.maximum(run.removed[idx], region)
        with torch.no_grad():
            probe = torch.cat(
                [
                    composite(x[idx], 1 - removed_next[idx], reference[idx]),  # x_{l+1}
                    composite(x[idx], contribution, reference[idx]),
                ]
            )  # the new region alone
            probe_logits = scorer.logits(probe)
            targets = class_idx[idx].repeat(2)
            o_probe, p_probe = scorer.log_odds(probe_logits, targets), scorer.prob(probe_logits, targets)
        n, b, dev = idx.numel(), x.shape[0], x.device
        o_after, o_alone = o_probe[:n], o_probe[n:]

        def full(values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
            out = torch.full((b, *values.shape[1:]), fill, device=dev, dtype=values.dtype)
            out[idx] = values
            return out

        run.sufficiency.append(full((o_alone - o_r[idx]).clamp_min(0)))
        run.drops.append(full((run.o_in[idx] - o_after).clamp_min(0)))
        run.stages.append(
            StageRecord(
                map=full(stage_map),
                removed=removed_next.clone(),
                score_before=full(run.o_in[idx].sigmoid(), float("nan")),
                score_after=full(p_probe[:n], float("nan")),
                log_odds_before=full(run.o_in[idx], float("nan")),
                log_odds_after=full(o_after, float("nan")),
                alpha=torch.zeros(b, device=dev),  # set by the fusion
                active=run.active.clone(),
                sensitivity=None if sensitivity is None else full(sensitivity),
                magnitude=None if magnitude is None else full(magnitude),
            )
        )
        run.contributions.append(full(contribution))
        run.masks.update({f"stage{level}/{key}": full(mask) for key, mask in stage_masks.items()})
        run.removed = removed_next
        run.o_in = run.o_in.clone()
        run.o_in[idx] = o_after
        return o_after

    def _sensitivity(
        self, scorer, x_in, reference, class_idx, run: _Run
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The stage input's pixel-level signal for the refinement (``refine_by``), smoothed and
        normalised, ``(n, 1, *S)``, and (``"positive_gradient"``) the smoothed, normalised magnitude of the
        same gradient, ``a_l``; ``(None, None)`` without refinement."""
        if self.refine is None:
            return None, None
        run.backward += 1
        sigma = self._sigma(x_in, run.spacing)
        if self.refine_by == "positive_gradient":
            signal = scorer.gradient(x_in, class_idx, measure="log_odds", signed=True)
            wide = self._sigma(x_in, run.spacing, _SIGNAL_SMOOTHING)
            positive = (gaussian_blur(signal, wide, padding=self.signal_padding) if sigma else signal).clamp_min(0)
            magnitude = signal.abs()
            return normalise(positive), normalise(gaussian_blur(magnitude, sigma) if sigma else magnitude)
        if self.refine_by == "gradient":
            signal = scorer.gradient(x_in, class_idx, measure="log_odds")
        else:
            signal = scorer.sensitivity(x_in, reference, class_idx, measure="log_odds").abs()
        return normalise(gaussian_blur(signal, sigma) if sigma else signal), None

    def _sigma(self, x: torch.Tensor, spacing=None, factor: float = 1.0) -> float | tuple[float, ...]:
        """The fused map's Gaussian in voxels (times ``factor``): ``smooth * max(S)``, or from mm with ``spacing``."""
        units = self.physical_settings(x.ndim - 2) if spacing is not None else None
        if units is not None:
            return units.sigma(spacing, factor)
        return factor * (self.smooth * max(x.shape[2:])) if self.smooth else 0.0

    @property
    def reads_spacing(self) -> bool:
        """Whether a known spacing puts the sizes in mm (``units`` is not None)."""
        return self.units is not None

    def physical_settings(self, spatial_dims: int) -> PhysicalSettings | None:
        """The sizes in mm used on ``spatial_dims``-D inputs of known spacing (None: ``units=None``)."""
        objective = self.volume_benchmark_objective if spatial_dims == 3 else self.benchmark_objective
        return resolve_units(
            self.units,
            spatial_dims,
            benchmark_grids=self.benchmark_grids,
            auxiliary_grids=self.auxiliary_grids,
            smooth=self.smooth,
            area=objective.area,
        )

    def _make_reference(self, x: torch.Tensor, spacing) -> torch.Tensor:
        """The blur reference with its sigma in mm (:attr:`PhysicalSettings.blur_mm`); other references as given."""
        units = self.physical_settings(x.ndim - 2)
        sigma = units.blur_sigma(tuple(np.asarray(spacing)[0])) if units is not None else None
        if not (isinstance(self.reference, str) and self.reference == "blur") or sigma is None:
            return make_reference(x, self.reference)
        return make_reference(x, lambda images: blur_reference(images, sigma))

    def _fuse(self, scorer, x, reference, class_idx, run: _Run) -> torch.Tensor:
        """``norm(G_sigma * sum_l alpha_l M_l (1 - R_{l-1}))``; sets each stage's ``alpha``."""
        b = x.shape[0]
        ran = torch.stack([s.active for s in run.stages], dim=1).float()  # (B, L)
        kind = "either" if self.fusion == "learned" else self.fusion
        alpha = fusion_weights(kind, torch.stack(run.sufficiency, dim=1), torch.stack(run.drops, dim=1), ran)
        stacked = torch.stack(run.contributions, dim=1)[:, :, 0]  # (B, L, *S)
        if self.fusion == "learned" and len(run.stages) > 1:
            alpha, steps = self._learned_fusion(scorer, x, reference, class_idx, stacked, alpha, ran)
            run.backward += steps
        for level, stage in enumerate(run.stages):
            stage.alpha = alpha[:, level]
        fused = (alpha.view(b, -1, *([1] * (x.ndim - 2))) * stacked).sum(dim=1, keepdim=True)
        sigma = self._sigma(x, run.spacing)
        return normalise(gaussian_blur(fused, sigma) if sigma else fused)

    def _refine(self, saliency: torch.Tensor, run: _Run) -> torch.Tensor:
        """``norm(S + w * max_l d_l)`` (``"positive_gradient"``) or ``norm((S + e) * max_l d_l)``, then
        focused (:meth:`_focus`) and shaped by the contrast (the knee, or an exponent); the fused masks alone without
        refinement, or where the signal is flat everywhere."""
        if self.refine is None:
            return saliency
        run.masks["fused"] = saliency
        detail = torch.stack([stage.sensitivity for stage in run.stages], dim=0).amax(dim=0)
        if self.refine_by == "positive_gradient":  # a sum: 0 over much of the image, where the masks' order stays
            magnitude = torch.stack([stage.magnitude for stage in run.stages], dim=0).amax(dim=0)
            refined = normalise(saliency + self.refine * detail + self.magnitude[saliency.ndim - 2] * magnitude)
        else:
            refined = normalise((saliency + self.refine) * detail)
        run.masks["refined"] = refined
        focused = self._focus(refined, run)
        flat = detail.flatten(1).amax(1) == 0
        dims = saliency.ndim - 2
        if self.knee[dims] > 0:
            contrasted = knee_map(focused, self.contrast[dims], self.knee[dims], self.knee_slope[dims])
        else:
            contrasted = contrast_map(focused, self.contrast[dims], self.background_contrast[dims])
        return torch.where(flat.view(-1, *([1] * (saliency.ndim - 1))), saliency, contrasted)

    def _focus(self, refined: torch.Tensor, run: _Run) -> torch.Tensor:
        """:func:`focus_map` of the refined map with this call's stages, at the input's ``focus`` weight; each
        stage's signal is its part of the refinement, ``norm(w d_l + m a_l)`` (``focus_signal="refinement"``,
        with ``refine_by="positive_gradient"``), or its pixel signal ``d_l``."""
        dims = refined.ndim - 2
        sensitivities = [stage.sensitivity for stage in run.stages]
        if self.focus_signal == "refinement" and self.refine_by == "positive_gradient":
            sensitivities = focus_signals(run.stages, self.refine, self.magnitude[dims])
        alphas = [stage.alpha for stage in run.stages]
        return focus_map(refined, run.contributions, sensitivities, self.focus[dims], alphas, self.stage_power[dims])

    def _learned_fusion(
        self,
        scorer: ClassScorer,
        x: torch.Tensor,
        reference: torch.Tensor,
        class_idx: torch.Tensor,
        stacked: torch.Tensor,
        alpha: torch.Tensor,
        ran: torch.Tensor,
        fractions: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2),
        temperature: float = 0.05,
    ) -> tuple[torch.Tensor, int]:
        """Fusion weights ``(B, L)`` that make deleting the map's top regions drop ``p_c`` fastest.

        ``stacked`` holds the stage contributions ``(B, L, *S)``. Each step deletes, for
        every fraction ``q``, a soft top-``q`` region of the fused map and minimises the
        mean class probability of the ``B * Q`` results (one forward/backward pass).
        """
        b, q = x.shape[0], len(fractions)
        logits_w = torch.log(alpha.clamp_min(1e-3)).masked_fill(ran == 0, float("-inf")).detach().requires_grad_(True)
        optimiser = torch.optim.Adam([logits_w], lr=0.1)
        numel = stacked[0, 0].numel()
        ranks = [max(1, int(round((1 - f) * numel))) for f in fractions]
        targets = class_idx.repeat_interleave(q)
        for _ in range(self.fusion_steps):
            w = torch.softmax(logits_w, dim=1)
            fused = normalise((w.view(b, -1, *([1] * (x.ndim - 2))) * stacked).sum(1, keepdim=True))
            flat = fused.flatten(1)
            cuts = torch.stack([flat.kthvalue(r, dim=1).values for r in ranks], dim=1)  # (B, Q)
            shape = (b, q, *([1] * (x.ndim - 2)))
            deleted = torch.sigmoid((fused - cuts.view(shape)) / temperature)  # (B, Q, *S)
            keep = (1 - deleted)[:, :, None]
            batch = composite(x[:, None], keep, reference[:, None]).flatten(0, 1)
            loss = scorer.prob(scorer.logits(batch), targets).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        return torch.softmax(logits_w.detach(), dim=1), self.fusion_steps
