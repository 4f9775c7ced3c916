"""``medhdm demo``: the whole job on embedded data, from DICOM files to a report and DICOM overlays.

1. writes LesionBench cases as DICOM studies with NIfTI lesion masks and manifests
   (:mod:`medhdm.data.bench_files`: real CT/MR anatomy from pydicom and nibabel, inserted
   lesions, bright distractors), 2D and 3D;
2. explains every case with HDM and the baselines, using the shipped 2D and 3D
   classifiers (:mod:`medhdm.models`), through the same pipeline as ``medhdm explain``
   (MONAI loading, invertible preprocessing, maps on the source grid);
3. scores the maps against the lesion masks and the model and writes a report per
   dimension (:mod:`medhdm.report`: ``report.html``, CSV/JSON, figures);
4. exports HDM's map of the first 2D case into its study as a DICOM Secondary Capture;

and prints the results table and where the files are. It needs no network.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from .evaluation import evaluate_manifest, format_table, summarise
from .explain import HDM, MDM, RISE, GradCAM, GradientInput, NeuroMask, Occlusion
from .io.axes import monai_to_dicom_volume
from .io.manifest import load_manifest
from .models import DEFAULT_3D, load_default_classifier
from .pipeline import InputSpec
from .report import write_report

__all__ = ["demo_plans", "run_demo"]

DEMO_SEED = 31337
_TABLE_METRICS = (
    "pointing_game",
    "energy_in_lesion",
    "auroc",
    "lesion_hit_rate",
    "deletion_half",
    "insertion_half",
    "deletion_auc_log",
    "insertion_auc_log",
)


def _table(rows: list[dict], title: str) -> list[str]:
    metrics = [*_TABLE_METRICS, "seconds"]
    digits = {"seconds": 2, "deletion_half": 4, "insertion_half": 4}
    return [title, format_table(summarise(rows, metrics), metrics, digits=digits)]


def demo_plans(model2d, model3d) -> dict[int, tuple]:
    """Per dimension: the model and the methods the demo compares."""
    return {
        2: (
            model2d,
            {
                "HDM": HDM(model2d),
                "MDM": MDM(model2d),
                "NeuroMask": NeuroMask(model2d),
                "GradientInput": GradientInput(model2d),
                "Occlusion": Occlusion(model2d),
                "RISE": RISE(model2d, n_masks=500),
                "GradCAM": GradCAM(model2d),
            },
        ),
        3: (
            model3d,
            {
                "HDM": HDM(model3d),
                "GradientInput": GradientInput(model3d),
                "Occlusion": Occlusion(model3d),
            },
        ),
    }


def _export_first_case(entry: dict, saliency, lesion, out: Path) -> str:
    """HDM's map of the first 2D case as a Secondary Capture in its study (replacing an earlier demo's)."""
    from .export import export

    written = export(
        entry["image"],
        monai_to_dicom_volume(saliency),
        out,
        ["sc", "png"],
        method="HDM",
        class_label=1,
        lesion_mask=monai_to_dicom_volume(lesion > 0),
        overwrite=True,
    )
    return f"DICOM Secondary Capture of HDM's map for {entry['id']}, in its study: {written['sc'][0]}"


def run_demo(out_dir: Path, n_cases: int = 6, n_cases_3d: int = 2, log: Callable[[str], None] = print) -> dict:
    """Run the demo into ``out_dir`` (created if needed); return the per-case rows by dimension."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model2d = load_default_classifier()
    model3d = load_default_classifier(DEFAULT_3D)
    for model in (model2d, model3d):
        card = model.medhdm_card
        log(
            f"model {card['name']}: held-out accuracy {card['held_out']['accuracy']:.3f}, "
            f"AUC {card['held_out']['auc']:.3f}"
        )
    lesion_weights = (0.0, 1.0, 1.0, 1.0)  # every demo case has 1-3 lesions
    manifests = {
        2: write_lesionbench(
            out_dir / "data" / "lesionbench2d", n_cases, 2, seed=DEMO_SEED, lesion_weights=lesion_weights
        ),
        3: write_lesionbench(
            out_dir / "data" / "lesionbench3d", n_cases_3d, 3, seed=DEMO_SEED, lesion_weights=lesion_weights
        )
        if n_cases_3d > 0
        else None,
    }
    log(
        f"data: {n_cases} 2D and {n_cases_3d} 3D LesionBench studies (DICOM + NIfTI lesion masks) in {out_dir / 'data'}"
    )
    plans = demo_plans(model2d, model3d)
    results: dict[int, list[dict]] = {}
    lines: list[str] = []
    first_case = None
    for dims in (2, 3):
        if manifests[dims] is None:
            continue
        model, methods = plans[dims]
        entries = load_manifest(manifests[dims])
        for entry in entries:
            entry["class_idx"] = 1  # explain the "lesion" class
        spec = InputSpec(
            tuple(model.medhdm_card["recipe"]["spatial_size"]), intensity_range=LESIONBENCH_INTENSITY_RANGE
        )
        log(f"explaining {len(entries)} {dims}D cases with {', '.join(methods)}")
        rows, figures = evaluate_manifest(entries, methods, spec, log=lambda line: log("  " + line))
        report = write_report(rows, figures, out_dir / f"report_{dims}d", title=f"medhdm demo: LesionBench {dims}D")
        results[dims] = rows
        lines += ["", *_table(rows, f"{dims}D, {len(entries)} cases (report: {report})")]
        if dims == 2:
            first_case = (entries[0], figures["cases"][0]["maps"]["HDM"], figures["cases"][0]["lesion_array"])
    if first_case is not None:
        lines += ["", _export_first_case(*first_case, out_dir / "export_dicom")]
    for line in lines:
        log(line)
    log("")
    log("pointing_game: map maximum inside a lesion; energy_in_lesion: share of the map inside lesions;")
    log("auroc: map as a voxel classifier of the lesion mask; lesion_hit_rate: share of lesions holding one of")
    log("the map's top peaks. Faithfulness (voxels removed from / inserted into the image, most salient first):")
    log("deletion_half / insertion_half: share of voxels that takes away / restores half of the log-odds evidence")
    log("(lower is better); deletion_auc_log (lower is better) / insertion_auc_log (higher is better): area under")
    log("the probability curve over log10(share) from 0.01 % to 100 %, scaled to [0, 1]; seconds: per case here.")
    log(f"done in {time.perf_counter() - start:.0f} s; everything is in {out_dir}")
    return results
