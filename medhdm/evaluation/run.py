"""One evaluation run: explain annotated cases with several methods and score every map the same way.

Two entry points share the scoring of a row (:func:`score_row`) and the row shape (one
per case and method: ``case``, ``method``, ``n_lesions``, the localisation metrics of
:func:`medhdm.metrics.score`, ``seconds``, ``passes``, and the faithfulness metrics when
computed), which :func:`~medhdm.evaluation.statistics.summarise` aggregates:

- :func:`evaluate_manifest`: the cases of a data manifest (DICOM or NIfTI files with
  lesion annotations), through :func:`medhdm.pipeline.explain_image`, scored on the
  source grid (spacing from the image) and, optionally, for faithfulness to the model on
  the classifier's grid (deletion/insertion with the explainer's own reference); maps made
  elsewhere (one folder per method) are scored beside the methods by the same code;
- :func:`compare_methods`: images and lesion label maps already in memory as tensors,
  batch by batch, each method timed on the same machine in the same run.

The comparison is only honest if every method explains the same model on the same inputs
and is scored by the same code: both do that.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..explain.base import Explainer
from ..io.annotations import ImageGrid, load_annotation
from ..io.maps import load_case_map
from ..metrics.faithfulness import deletion_curve
from ..metrics.localisation import score
from ..pipeline import (
    InputSpec,
    SliceSelection,
    classify_image,
    explain_image,
    load_image,
    map_to_classifier_grid,
)

__all__ = ["FAITHFULNESS_KEYS", "compare_methods", "evaluate_manifest", "score_row"]

FAITHFULNESS_KEYS = ("deletion_auc", "insertion_auc")


def score_row(saliency, lesion, spacing: Sequence[float] | None = None) -> dict:
    """The scored part of a row: ``n_lesions`` and the localisation metrics of :func:`medhdm.metrics.score`.

    ``saliency`` and ``lesion`` (a label map or mask, lesions > 0) are arrays or tensors on one grid.
    """
    labels = lesion.detach().cpu().numpy() if hasattr(lesion, "detach") else np.asarray(lesion)
    return {"n_lesions": len(np.unique(labels[labels > 0])), **score(saliency, labels > 0, spacing=spacing)}


def _spacing(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    return tuple(float(np.linalg.norm(affine[:3, i])) for i in range(ndim))


def _faithfulness(
    model, model_input: torch.Tensor, model_saliency: torch.Tensor, class_idx: int, reference, n_steps: int
) -> dict[str, np.ndarray]:
    """Deletion and insertion curves on the classifier's grid (mean over the batch: a series' explained slices)."""
    return {
        mode: deletion_curve(
            model, model_input, model_saliency, class_idx, mode=mode, n_steps=n_steps, reference=reference
        ).mean(axis=0)
        for mode in ("deletion", "insertion")
    }


def _add_faithfulness(row: dict, curves: dict[str, np.ndarray], figures: dict, name: str) -> None:
    for mode, curve in curves.items():
        row[f"{mode}_auc"] = float(np.trapezoid(curve, np.linspace(0, 1, len(curve))))
        figures["curves"][name][mode].append(curve)


def _method_map(explainer: Explainer, image, spec: InputSpec, entry: dict, slices):
    """An explainer's map of one case: map, class, probability, explained slices, faithfulness view, reference."""
    result = explain_image(image, explainer, spec, class_idx=entry.get("class_idx"), slices=slices)
    view = (explainer.model, result.model_input, result.model_saliency)
    reference = getattr(explainer, "reference", "blur")
    return result.saliency, result.class_idx, result.score, result.explained_slices, view, reference


def _external_map(folder, image, spec: InputSpec, entry: dict, slices, model: nn.Module | None):
    """A map made elsewhere, read from ``folder``, as :func:`_method_map` returns an explainer's (no model: no view)."""
    affine = np.asarray(image.affine, dtype=np.float64)
    saliency = load_case_map(folder, entry["id"], tuple(image.shape[1:]), affine)
    if model is None:
        return saliency, entry.get("class_idx", ""), float("nan"), None, None, "blur"
    x, cls, prob, chosen = classify_image(image, model, spec, entry.get("class_idx"), slices)
    on_grid = map_to_classifier_grid(saliency, image, spec, by_slice=slices is not None)
    on_grid = on_grid[list(chosen)] if chosen is not None else on_grid
    return saliency, cls, prob, chosen, (model, x, on_grid.to(x.device)), "blur"


def evaluate_manifest(
    entries: Sequence[dict],
    methods: Mapping[str, Explainer],
    spec: InputSpec,
    faithfulness: bool = True,
    n_steps: int = 64,
    log: Callable[[str], None] | None = print,
    slices: SliceSelection | str | None = None,
    maps: Mapping[str, str | os.PathLike] | None = None,
    model: nn.Module | None = None,
) -> tuple[list[dict], dict]:
    """Explain and score every case of a manifest with every method, and score maps made elsewhere beside them.

    Args:
        entries: manifest entries (``load_manifest``), each with ``image`` and ``lesion``.
        methods: display name -> explainer.
        spec: the classifier's :class:`~medhdm.pipeline.InputSpec`.
        faithfulness: also compute deletion/insertion AUC (``n_steps`` shares), on the
            classifier's grid; needs a model (the explainers', or ``model``).
        slices: a 2D classifier over 3D series: the slices to explain
            (:class:`~medhdm.pipeline.SliceSelection`); ``score`` is then the study-level
            decision, faithfulness the mean over the explained slices, and rows gain ``slices``.
        maps: display name -> folder of maps made elsewhere, one per case id, on the image
            grid (:func:`medhdm.io.maps.load_case_map`: NIfTI, or ``.npy`` in MONAI/NIfTI order,
            values in [0, 1]); scored as the methods are. Faithfulness brings each map onto the
            classifier's grid through the same layout and resize steps as the image.
        model: the classifier for ``class_idx``, ``score`` and faithfulness of ``maps``
            (default: the first explainer's); without one, maps get localisation metrics only.

    Returns:
        the rows (one per case and method) and the material for the figures: per case the
        image, lesion and maps on the source grid, and per method the mean curves.
    """
    _check_run(entries, methods, maps or {})
    maps = dict(maps or {})
    if isinstance(slices, str):
        slices = SliceSelection.parse(slices)
    if model is None and methods:
        model = next(iter(methods.values())).model
    faithfulness = faithfulness and model is not None
    rows: list[dict] = []
    names = [*methods, *maps]
    figures: dict = {"cases": [], "curves": {name: {"deletion": [], "insertion": []} for name in names}}
    total = len(entries) * len(names)
    for entry in entries:
        image = load_image(entry["image"])  # read once, explained by every method
        affine = np.asarray(image.affine, dtype=np.float64)
        lesion = load_annotation(entry["lesion"], ImageGrid.from_meta(tuple(image.shape[1:]), affine, image.meta))
        case_fig = {"id": entry["id"], "maps": {}, "image": image[0].numpy(), "lesion_array": lesion}
        for name in names:
            start = time.perf_counter()
            if name in methods:
                saliency, cls, prob, chosen, view, reference = _method_map(methods[name], image, spec, entry, slices)
            else:
                saliency, cls, prob, chosen, view, reference = _external_map(
                    maps[name], image, spec, entry, slices, model
                )
            seconds = time.perf_counter() - start
            row = {
                "case": entry["id"],
                "method": name,
                "label": entry.get("label", ""),
                "class_idx": cls,
                "score": round(prob, 4),
                **score_row(saliency, lesion, spacing=_spacing(affine, lesion.ndim)),
            }
            if slices is not None:
                row["slices"] = " ".join(str(k) for k in chosen) if chosen is not None else ""
            if faithfulness:
                _add_faithfulness(row, _faithfulness(*view, cls, reference, n_steps), figures, name)
            row["seconds"] = round(seconds, 3)
            rows.append(row)
            case_fig["maps"][name] = saliency
            if log:
                log(
                    f"[{len(rows)}/{total}] {entry['id']} {name}: pointing {row['pointing_game']:.0f}, "
                    f"AUROC {row['auroc']:.3f}, {seconds:.1f} s"
                )
        figures["cases"].append(case_fig)
    return rows, figures


def _check_run(entries: Sequence[dict], methods: Mapping[str, Explainer], maps: Mapping[str, object]) -> None:
    """Every case annotated, at least one method or folder of maps, no name used twice."""
    missing = [e["id"] for e in entries if "lesion" not in e]
    if missing:
        raise ValueError(f"manifest: cases without a 'lesion' annotation cannot be scored: {', '.join(missing)}")
    clash = sorted(set(maps) & set(methods))
    if clash:
        raise ValueError(f"maps: names already used by methods: {', '.join(clash)}")
    if not methods and not maps:
        raise ValueError("methods: give at least one method or one folder of maps")


def compare_methods(
    methods: Mapping[str, Explainer],
    images: torch.Tensor,
    lesions: torch.Tensor,
    class_idx: int | Sequence[int] | None = None,
    batch_size: int = 8,
    log: Callable[[str], None] | None = None,
    maps: dict[str, torch.Tensor] | None = None,
) -> list[dict]:
    """Explain ``images`` ``(N, C, *S)`` with every method and score against ``lesions`` ``(N, 1, *S)``.

    Returns one row per (method, case) (see the module docstring): ``seconds`` is the
    method's wall time for the case's batch divided by its size, ``passes`` and
    ``backward_passes`` the forward and backward passes of that call (each on a batch),
    ``images`` the images it sent through the model per image of the batch, and
    ``lesion_hit_rate_multi`` the lesion hit rate on cases with two or more lesions (NaN on
    the others). If ``maps`` is given, each method's saliency
    maps ``(N, 1, *S)`` are stored in it under the method's name.
    """
    rows = []
    n = images.shape[0]
    for name, explainer in methods.items():
        start_all = time.perf_counter()
        kept = []
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            idx = class_idx if class_idx is None or isinstance(class_idx, int) else list(class_idx[lo:hi])
            start = time.perf_counter()
            result = explainer.explain(images[lo:hi], idx)
            seconds = (time.perf_counter() - start) / (hi - lo)
            kept.append(result.saliency)
            for j in range(hi - lo):
                row = {
                    "method": name,
                    "case": lo + j,
                    "seconds": seconds,
                    "passes": result.forward_passes,
                    "backward_passes": result.backward_passes,
                    "images": result.images_evaluated / (hi - lo),
                    **score_row(result.saliency[j], lesions[lo + j]),
                }
                row["lesion_hit_rate_multi"] = row["lesion_hit_rate"] if row["n_lesions"] >= 2 else float("nan")
                rows.append(row)
        if maps is not None:
            maps[name] = torch.cat(kept)
        if log:
            log(f"{name}: {n} cases in {time.perf_counter() - start_all:.1f} s")
    return rows
