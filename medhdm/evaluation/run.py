"""One evaluation run: explain annotated cases with several methods and score every map the same way.

Two entry points share the scoring of a row (:func:`score_row`) and the row shape (one
per case and method: ``case``, ``method``, ``n_lesions``, the localisation metrics of
:func:`medhdm.metrics.score`, ``seconds``, ``passes``, and the faithfulness metrics when
computed), which :func:`~medhdm.evaluation.statistics.summarise` aggregates:

- :func:`evaluate_manifest`: the cases of a data manifest (DICOM or NIfTI files with
  lesion annotations), through :func:`medhdm.pipeline.explain_image`, scored on the
  source grid (spacing from the image) and, optionally, for faithfulness to the model on
  the classifier's grid (deletion/insertion with the explainer's own reference);
- :func:`compare_methods`: images and lesion label maps already in memory as tensors,
  batch by batch, each method timed on the same machine in the same run.

The comparison is only honest if every method explains the same model on the same inputs
and is scored by the same code: both do that.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from ..explain.base import Explainer
from ..io.annotations import ImageGrid, load_annotation
from ..metrics.faithfulness import deletion_curve
from ..metrics.localisation import score
from ..pipeline import InputSpec, explain_image, load_image

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


def _faithfulness(explainer: Explainer, result, n_steps: int) -> dict[str, np.ndarray]:
    """Deletion and insertion curves of one explained image on the classifier's grid."""
    reference = getattr(explainer, "reference", "blur")
    return {mode: deletion_curve(explainer.model, result.model_input, result.model_saliency, result.class_idx,
                                 mode=mode, n_steps=n_steps, reference=reference)[0]
            for mode in ("deletion", "insertion")}


def evaluate_manifest(
    entries: Sequence[dict],
    methods: Mapping[str, Explainer],
    spec: InputSpec,
    faithfulness: bool = True,
    n_steps: int = 64,
    log: Callable[[str], None] | None = print,
) -> tuple[list[dict], dict]:
    """Explain and score every case of a manifest with every method.

    Args:
        entries: manifest entries (``load_manifest``), each with ``image`` and ``lesion``.
        methods: display name -> explainer.
        spec: the classifier's :class:`~medhdm.pipeline.InputSpec`.
        faithfulness: also compute deletion/insertion AUC (``n_steps`` shares).

    Returns:
        the rows (one per case and method) and the material for the figures: per case the
        image, lesion and maps on the source grid, and per method the mean curves.
    """
    missing = [e["id"] for e in entries if "lesion" not in e]
    if missing:
        raise ValueError(f"manifest: cases without a 'lesion' annotation cannot be scored: {', '.join(missing)}")
    rows: list[dict] = []
    figures: dict = {"cases": [], "curves": {name: {"deletion": [], "insertion": []} for name in methods}}
    total, done = len(entries) * len(methods), 0
    for entry in entries:
        case_fig = {"id": entry["id"], "maps": {}}
        image = load_image(entry["image"])  # read once, explained by every method
        for name, explainer in methods.items():
            start = time.perf_counter()
            result = explain_image(image, explainer, spec, class_idx=entry.get("class_idx"))
            seconds = time.perf_counter() - start
            if "lesion_array" not in case_fig:
                grid = ImageGrid.from_meta(result.saliency.shape, result.affine, result.meta)
                case_fig["lesion_array"] = load_annotation(entry["lesion"], grid)
                case_fig["image"] = result.image
            lesion = case_fig["lesion_array"]
            row = {"case": entry["id"], "method": name, "label": entry.get("label", ""),
                   "class_idx": result.class_idx, "score": round(result.score, 4),
                   **score_row(result.saliency, lesion, spacing=_spacing(result.affine, lesion.ndim))}
            if faithfulness:
                for mode, curve in _faithfulness(explainer, result, n_steps).items():
                    row[f"{mode}_auc"] = float(np.trapezoid(curve, np.linspace(0, 1, len(curve))))
                    figures["curves"][name][mode].append(curve)
            row["seconds"] = round(seconds, 3)
            rows.append(row)
            case_fig["maps"][name] = result.saliency
            done += 1
            if log:
                log(f"[{done}/{total}] {entry['id']} {name}: pointing {row['pointing_game']:.0f}, "
                    f"AUROC {row['auroc']:.3f}, {seconds:.1f} s")
        figures["cases"].append(case_fig)
    return rows, figures


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
    method's wall time for the case's batch divided by its size, ``passes`` the forward
    passes of that call, and ``lesion_hit_rate_multi`` the lesion hit rate on cases with
    two or more lesions (NaN on the others). If ``maps`` is given, each method's saliency
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
                row = {"method": name, "case": lo + j, "seconds": seconds, "passes": result.forward_passes,
                       **score_row(result.saliency[j], lesions[lo + j])}
                row["lesion_hit_rate_multi"] = row["lesion_hit_rate"] if row["n_lesions"] >= 2 else float("nan")
                rows.append(row)
        if maps is not None:
            maps[name] = torch.cat(kept)
        if log:
            log(f"{name}: {n} cases in {time.perf_counter() - start_all:.1f} s")
    return rows
