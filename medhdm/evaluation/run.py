"""One evaluation run: explain annotated cases with several methods and score every map the same way.

Two entry points share the scoring of a row (:mod:`medhdm.evaluation.scoring`: :func:`score_row`,
:func:`~.scoring.faithfulness_means`) and the row shape (one per case and method: ``case``,
``method``, ``n_lesions``, the localisation metrics of :func:`medhdm.metrics.score`, ``seconds``,
``passes``, and the faithfulness metrics when computed), which
:func:`~medhdm.evaluation.statistics.summarise` aggregates:

- :func:`evaluate_manifest`: the cases of a data manifest (DICOM or NIfTI files with
  lesion annotations), through :func:`medhdm.pipeline.explain_image`, scored on the
  source grid (spacing from the image) and, optionally, for faithfulness to the model on
  the classifier's grid (deletion/insertion with the explainer's own reference, read by
  :func:`medhdm.metrics.faithfulness.faithfulness_scores`; see :data:`~.scoring.FAITHFULNESS_KEYS`);
  maps made elsewhere (one folder per method) are scored beside the methods by the same code;
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
from ..explain.findings import Finding, finding_from_region, map_regions
from ..io.annotations import ImageGrid, load_annotation
from ..io.maps import load_case_map
from ..metrics.curves import curve_fractions
from ..metrics.froc import DEFAULT_TOLERANCE_MM, ImageHits, froc, froc_summary, image_hits
from ..pipeline import InputSpec, SliceSelection, explain_images, load_image
from .scoring import ModelView, faithfulness_means, model_view, score_row

__all__ = [
    "add_case",
    "case_figure",
    "compare_methods",
    "evaluate_cases",
    "evaluate_manifest",
    "findings_field",
    "froc_curves",
    "froc_from_rows",
    "new_figures",
]


def _spacing(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    return tuple(float(np.linalg.norm(affine[:3, i])) for i in range(ndim))


def _method_maps(explainer: Explainer, images: Sequence, spec: InputSpec, entries: Sequence[dict], slices) -> list:
    """An explainer's maps of a batch of cases (:func:`explain_images`): per case the map, class, probability,
    explained slices and the classifier's view of the map (its own, :class:`~.scoring.ModelView`)."""
    results = explain_images(images, explainer, spec, [e.get("class_idx") for e in entries], slices=slices)
    reference = getattr(explainer, "reference", "blur")
    return [
        (
            r.saliency,
            r.class_idx,
            r.score,
            r.explained_slices,
            ModelView(explainer.model, r.model_input, r.model_saliency, r.class_idx, reference),
            r.findings,
        )
        for r in results
    ]


def _external_map(folder, image, spec: InputSpec, entry: dict, slices, model: nn.Module | None):
    """A map made elsewhere, read from ``folder``, as :func:`_method_maps` gives an explainer's (no model: no view)."""
    affine = np.asarray(image.affine, dtype=np.float64)
    saliency = load_case_map(folder, entry["id"], tuple(image.shape[1:]), affine)
    spacing = _spacing(affine, saliency.ndim)
    findings = [finding_from_region(r, saliency, spacing) for r in map_regions(saliency, spacing)]  # no evidence
    if model is None:
        return saliency, entry.get("class_idx", ""), float("nan"), None, None, findings
    view, probability, chosen = model_view(model, image, saliency, spec, entry.get("class_idx"), slices)
    return saliency, view.class_idx, probability, chosen, view, findings


def evaluate_cases(
    entries: Sequence[dict],
    methods: Mapping[str, Explainer],
    spec: InputSpec,
    faithfulness: bool = True,
    curve_steps: int | None = None,
    slices: SliceSelection | None = None,
    maps: Mapping[str, str | os.PathLike] | None = None,
    model: nn.Module | None = None,
) -> list[dict]:
    """Explain and score a batch of cases with every method (each method's maps of the batch in one call).

    The arguments are :func:`evaluate_manifest`'s (``model`` already resolved, ``faithfulness``
    only with a model). Returns per case ``{"id", "rows", "maps", "curves", "findings"}``: its rows (one per
    method, in ``methods`` then ``maps`` order; ``seconds`` is the method's time for the batch
    divided by its size), its maps on the source grid, its deletion/insertion curves per method
    (sampled at ``curve_fractions(curve_steps)``) and its findings per method (on the source grid).
    An error in any case raises.
    """
    maps = dict(maps or {})
    images = [load_image(e["image"]) for e in entries]  # read once, explained by every method
    per_method: dict[str, tuple[list, float]] = {}
    for name in [*methods, *maps]:
        start = time.perf_counter()
        if name in methods:
            made = _method_maps(methods[name], images, spec, entries, slices)
        else:
            made = [_external_map(maps[name], im, spec, e, slices, model) for im, e in zip(images, entries)]
        per_method[name] = (made, (time.perf_counter() - start) / len(entries))
    out = []
    for k, (entry, image) in enumerate(zip(entries, images)):
        affine = np.asarray(image.affine, dtype=np.float64)
        lesion = load_annotation(entry["lesion"], ImageGrid.from_meta(tuple(image.shape[1:]), affine, image.meta))
        case = {"id": entry["id"], "rows": [], "maps": {}, "curves": {}, "findings": {}}
        for name, (made, seconds) in per_method.items():
            saliency, cls, prob, chosen, view, findings = made[k]
            spacing = _spacing(affine, lesion.ndim)
            row = {
                "case": entry["id"],
                "method": name,
                "label": entry.get("label", ""),
                "class_idx": cls,
                "score": round(prob, 4),
                **score_row(saliency, lesion, spacing=spacing),
                "findings": findings_field(findings, lesion, spacing),
            }
            if slices is not None:
                row["slices"] = " ".join(str(k) for k in chosen) if chosen is not None else ""
            if faithfulness:
                scores, case["curves"][name] = faithfulness_means(view, curve_steps)
                row.update(scores)
            row["seconds"] = round(seconds, 3)
            case["rows"].append(row)
            case["maps"][name] = saliency
            case["findings"][name] = findings
        out.append(case)
    return out


def findings_field(
    findings: Sequence[Finding], lesion, spacing=None, tolerance_mm: float = DEFAULT_TOLERANCE_MM
) -> str:
    """A row's ``findings``: each finding's score and the lesion its peak hits (0: none; lesions are the
    mask's connected components, :func:`medhdm.metrics.froc.image_hits`), ``"score:lesion"`` separated by
    spaces, strongest first, then ``"/n"`` with the image's lesion count."""
    hits = image_hits([f.peak for f in findings], [f.score for f in findings], lesion, spacing, tolerance_mm)
    pairs = " ".join(f"{s:.6g}:{int(les)}" for s, les in zip(hits.scores, hits.lesion))
    return f"{pairs} /{hits.n_lesions}".strip()


def _parse_findings(text: str) -> ImageHits:
    pairs, _, count = str(text).rpartition("/")
    items = [p.split(":") for p in pairs.split()]
    return ImageHits(
        np.asarray([float(s) for s, _ in items], dtype=np.float64),
        np.asarray([int(les) for _, les in items], dtype=np.int64),
        int(count),
    )


def _images_by_method(rows: Sequence[dict]) -> dict[str, list[ImageHits]]:
    by_method: dict[str, list[ImageHits]] = {}
    for r in rows:
        if r.get("findings"):
            by_method.setdefault(r["method"], []).append(_parse_findings(r["findings"]))
    return by_method


def froc_curves(rows: Sequence[dict]) -> dict[str, dict]:
    """Per method, its FROC (:func:`medhdm.metrics.froc.froc`) over the rows' ``findings`` fields."""
    return {name: froc(images) for name, images in _images_by_method(rows).items()}


def froc_from_rows(rows: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Per method, the CPM and FROC sensitivities (:func:`medhdm.metrics.froc.froc_summary`, bootstrap CIs over
    cases) of the rows' ``findings`` fields (:func:`findings_field`), in the summary shape; methods whose rows
    carry none are left out."""
    out = []
    for name, images in _images_by_method(rows).items():
        out.extend(froc_summary(name, images, n_boot=n_boot, seed=seed))
    return out


def case_figure(entry: dict, maps: Mapping[str, np.ndarray], findings: Mapping[str, Sequence] | None = None) -> dict:
    """The report's material of one case: its image, affine and lesion (read again from the manifest entry),
    ``maps`` and per method its ``findings`` (:class:`~medhdm.explain.findings.Finding` objects or their
    :meth:`~medhdm.explain.findings.Finding.record`), as records with ``"region"`` (None when not known)."""
    image = load_image(entry["image"])
    affine = np.asarray(image.affine, dtype=np.float64)
    lesion = load_annotation(entry["lesion"], ImageGrid.from_meta(tuple(image.shape[1:]), affine, image.meta))
    records = {
        name: [{**f.record(), "region": f.region} if isinstance(f, Finding) else {**f, "region": None} for f in listed]
        for name, listed in (findings or {}).items()
    }
    return {
        "id": entry["id"],
        "maps": dict(maps),
        "image": image[0].numpy(),
        "lesion_array": lesion,
        "affine": affine,
        "findings": records,
    }


def evaluate_manifest(
    entries: Sequence[dict],
    methods: Mapping[str, Explainer],
    spec: InputSpec,
    faithfulness: bool = True,
    curve_steps: int | None = None,
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
        faithfulness: also score the maps against the model on the classifier's grid
            (:data:`~.scoring.FAITHFULNESS_KEYS`); needs a model (the explainers', or ``model``).
        curve_steps: where the deletion/insertion curves are sampled: ``None`` (default) 0 and
            41 log-spaced shares from 0.01 %, giving ``deletion_auc_log`` / ``insertion_auc_log``;
            an int ``n``: ``n`` equal shares, giving the classic ``deletion_auc`` /
            ``insertion_auc``. Both give
            ``deletion_half`` / ``insertion_half``.
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
        :mod:`medhdm.cohort` runs the same per case (:func:`evaluate_cases`) on Ray, resumably.
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
    figures = new_figures(names, curve_fractions(curve_steps))
    total = len(entries) * len(names)
    for entry in entries:
        (case,) = evaluate_cases([entry], methods, spec, faithfulness, curve_steps, slices, maps, model)
        add_case(rows, figures, case, case_figure(entry, case["maps"], case["findings"]))
        if log:
            for k, row in enumerate(case["rows"], start=len(rows) - len(case["rows"]) + 1):
                log(
                    f"[{k}/{total}] {entry['id']} {row['method']}: pointing "
                    f"{row['pointing_game']:.0f}, AUROC {row['auroc']:.3f}, {row['seconds']:.1f} s"
                )
    return rows, figures


def new_figures(names: Sequence[str], fractions: Sequence[float] | None = None) -> dict:
    """The empty material for the report's figures of methods ``names``; ``fractions`` ``(F,)``: the shares
    the curves are sampled at (:func:`~medhdm.metrics.curves.curve_fractions`, default the log-spaced ones)."""
    grid = curve_fractions(None) if fractions is None else np.asarray(fractions, dtype=np.float64)
    return {
        "cases": [],
        "fractions": grid.tolist(),
        "curves": {name: {"deletion": [], "insertion": []} for name in names},
    }


def add_case(rows: list[dict], figures: dict, case: dict, figure: dict) -> None:
    """Append one evaluated case (:func:`evaluate_cases`' record; ``curves`` as arrays or lists) to the run."""
    rows.extend(case["rows"])
    for name, curves in case["curves"].items():
        for mode, curve in curves.items():
            figures["curves"][name][mode].append(np.asarray(curve, dtype=np.float64))
    figures["cases"].append(figure)


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
