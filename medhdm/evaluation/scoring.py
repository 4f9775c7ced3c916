"""Scoring one map: localisation against a lesion annotation, and faithfulness to the model.

Every map is scored here, whoever made it:

- :func:`score_row`: localisation, a map on its image's source grid against the lesion label map
  there (``n_lesions`` and the metrics of :func:`medhdm.metrics.score`);
- :func:`faithfulness_means`: faithfulness, deletion and insertion of the map on the classifier's
  grid (:class:`ModelView`; :data:`FAITHFULNESS_KEYS`), the mean over the explained slices;
- :func:`model_view`: the classifier's view of a map it did not make itself (the image classified,
  the map brought to the classifier's grid by the image's own layout and resize steps);
- :func:`score_saved_map`: a map saved on its image's grid (or one in memory), scored both ways.

``medhdm evaluate`` (:mod:`.run`) scores each row with :func:`score_row` and :func:`faithfulness_means`
(the views of maps made elsewhere from :func:`model_view`); the structured report of an explained
study (:func:`medhdm.study.explain_study`, ``medhdm pacs``) holds :func:`score_saved_map`'s scores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..explain.reference import ReferenceSpec
from ..io.annotations import ImageGrid, load_annotation
from ..metrics.faithfulness import faithfulness_scores
from ..metrics.localisation import score
from ..pipeline import InputSpec, SliceSelection, classify_image, load_image, map_to_classifier_grid

__all__ = [
    "FAITHFULNESS_KEYS",
    "ModelView",
    "faithfulness_means",
    "find_lesion",
    "model_view",
    "score_row",
    "score_saved_map",
]

#: The faithfulness columns a row may hold, each per case on the classifier's grid (the mean over
#: the explained slices for a 2D classifier on a series). ``deletion_half`` / ``insertion_half``: the
#: share of voxels (most salient first) whose deletion removes / whose insertion restores half of the
#: log-odds evidence (lower is better). With the default log-spaced curves (``curve_steps=None``:
#: 0 and 41 shares from 0.01 % to 100 %): ``deletion_auc_log`` (lower is better) and
#: ``insertion_auc_log`` (higher is better), the area over log10(share) scaled to [0, 1]. With
#: ``curve_steps=n`` equal shares instead: ``deletion_auc`` / ``insertion_auc``, the classic area over
#: the share 0..1.
FAITHFULNESS_KEYS = (
    "deletion_half",
    "insertion_half",
    "deletion_auc_log",
    "insertion_auc_log",
    "deletion_auc",
    "insertion_auc",
)


@dataclass(frozen=True)
class ModelView:
    """A map as the classifier sees it: what its faithfulness is measured on.

    Attributes:
        model: the classifier.
        model_input: its input ``(1, C, *S')``, or the explained slices ``(k, C, H', W')`` of a series.
        saliency: the map on the same grid, ``(1, 1, *S')`` or ``(k, 1, H', W')``, on the input's device.
        class_idx: the class whose evidence is deleted and inserted.
        reference: what deleted voxels become (an explainer's ``reference``; ``"blur"`` for maps made elsewhere).
    """

    model: nn.Module
    model_input: torch.Tensor
    saliency: torch.Tensor
    class_idx: int
    reference: ReferenceSpec = "blur"


def score_row(saliency, lesion, spacing: Sequence[float] | None = None) -> dict:
    """The localisation part of a row: ``n_lesions`` and the metrics of :func:`medhdm.metrics.score`.

    ``saliency`` and ``lesion`` (a label map or mask, lesions > 0) are arrays or tensors on one grid.
    """
    labels = lesion.detach().cpu().numpy() if hasattr(lesion, "detach") else np.asarray(lesion)
    return {"n_lesions": len(np.unique(labels[labels > 0])), **score(saliency, labels > 0, spacing=spacing)}


def _one_grid(view: ModelView, steps: int | None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    scores, curves = faithfulness_scores(
        view.model, view.model_input, view.saliency, view.class_idx, steps, view.reference
    )
    means = {}
    for key, values in scores.items():
        finite = [v for v in values if not np.isnan(v)]
        means[key] = float(np.mean(finite)) if finite else float("nan")
    return means, {mode: curve.mean(axis=0) for mode, curve in curves.items()}


def faithfulness_means(
    view: ModelView, curve_steps: int | None | Sequence[int | None] = None
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Deletion and insertion of ``view``'s map: the faithfulness columns, and the mean probability curves.

    Each column is the mean over the view's images (the explained slices; a half share that is NaN,
    where a slice has no evidence above the reference, is left out; NaN when all are).

    Args:
        view: the map on the classifier's grid.
        curve_steps: where the curves are sampled (:func:`medhdm.metrics.faithfulness.faithfulness_scores`):
            ``None`` (41 log-spaced shares) or ``n`` equal shares; or several of these, each adding the
            columns the earlier ones do not have (``(None, 32)``: the log-spaced columns and the classic
            ``deletion_auc`` / ``insertion_auc`` over 32 shares).

    Returns:
        the columns, and the curves ``{"deletion", "insertion"}`` ``(F,)`` of the first sampling.
    """
    grids = list(curve_steps) if isinstance(curve_steps, Sequence) else [curve_steps]
    out: dict[str, float] = {}
    first: dict[str, np.ndarray] | None = None
    for steps in grids:
        means, curves = _one_grid(view, steps)
        out.update({key: value for key, value in means.items() if key not in out})
        first = curves if first is None else first
    return out, first or {}


def model_view(
    model: nn.Module,
    image,
    saliency: np.ndarray,
    spec: InputSpec,
    class_idx: int | None = None,
    slices: SliceSelection | str | None = None,
    reference: ReferenceSpec = "blur",
) -> tuple[ModelView, float, tuple[int, ...] | None]:
    """The classifier's view of a map it did not make, on an image ``(1, *S)`` from :func:`~medhdm.pipeline.load_image`.

    The image is classified (:func:`~medhdm.pipeline.classify_image`: ``class_idx``, or the predicted /
    study-level class), and ``saliency`` (on the image's grid, MONAI order) is brought to the classifier's
    grid by the image's own layout and resize steps (:func:`~medhdm.pipeline.map_to_classifier_grid`);
    with ``slices``, only the chosen slices.

    Returns:
        the view, the class's probability (study-level with ``slices``) and the chosen slices (``None``
        without ``slices``).
    """
    x, cls, probability, chosen = classify_image(image, model, spec, class_idx, slices)
    on_grid = map_to_classifier_grid(saliency, image, spec, by_slice=slices is not None)
    on_grid = on_grid[list(chosen)] if chosen is not None else on_grid
    return ModelView(model, x, on_grid.to(x.device), cls, reference), probability, chosen


def find_lesion(annotations: Sequence[str | os.PathLike], grid: ImageGrid) -> np.ndarray | None:
    """The label map of the first annotation (SEG, RTSTRUCT, NIfTI) that lies on ``grid`` and holds a lesion.

    Annotations of other images (which :func:`~medhdm.io.annotations.load_annotation` refuses) and
    empty ones are passed over; ``None`` when none fits.
    """
    for path in annotations:
        try:
            labels = load_annotation(path, grid)
        except ValueError:  # another series' annotation
            continue
        if labels.any():
            return labels
    return None


def score_saved_map(
    image: str | os.PathLike,
    saliency: str | os.PathLike | np.ndarray,
    lesion: str | os.PathLike | np.ndarray | Sequence[str | os.PathLike],
    *,
    model: nn.Module | None = None,
    spec: InputSpec | None = None,
    class_idx: int | None = None,
    slices: SliceSelection | str | None = None,
    reference: ReferenceSpec = "blur",
    curve_steps: int | None | Sequence[int | None] = None,
) -> dict[str, float] | None:
    """Score a map saved on its image's grid: localisation against the lesion, faithfulness to ``model``.

    Args:
        image: the image the map explains (a DICOM file or series folder, or NIfTI).
        saliency: the map on the image's grid: its NIfTI file (as :func:`medhdm.study.explain_study`
            writes it), or an array in MONAI order.
        lesion: a label map on the image's grid, or annotation files (the first that lies on the image's
            grid and holds a lesion is used, :func:`find_lesion`).
        model, spec: the classifier and its input; without them, localisation only.
        class_idx, slices: the explained class (default: the predicted one) and, for a 2D classifier
            over a series, the slices (:class:`~medhdm.pipeline.SliceSelection`).
        reference: what deletion and insertion put in place of the voxels (the explainer's own).
        curve_steps: the curves' sampling, as :func:`faithfulness_means` takes it.

    Returns:
        :func:`score_row`'s columns and, with a model, :func:`faithfulness_means`'s; ``None`` when no
        annotation fits the image.
    """
    loaded = load_image(image)
    grid = ImageGrid.from_image(loaded)
    if isinstance(lesion, np.ndarray):
        labels = lesion
    else:
        labels = find_lesion([lesion] if isinstance(lesion, str | os.PathLike) else lesion, grid)
    if labels is None:
        return None
    if not isinstance(saliency, np.ndarray):
        import nibabel as nib

        saliency = np.asarray(nib.load(saliency).dataobj, dtype=np.float32)
    saliency = saliency.reshape(grid.shape)
    scores = score_row(saliency, labels.reshape(grid.shape))
    if model is not None and spec is not None:
        view, _, _ = model_view(model, loaded, saliency, spec, class_idx, slices, reference)
        scores.update(faithfulness_means(view, curve_steps)[0])
    return scores
