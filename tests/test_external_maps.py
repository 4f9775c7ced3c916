"""Maps made elsewhere (Captum's IntegratedGradients) scored from files equal the same maps scored in memory."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
import torch

from medhdm.cli import main
from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.evaluation import evaluate_manifest
from medhdm.explain import Explainer
from medhdm.io.manifest import load_manifest
from medhdm.io.nifti import write_nifti
from medhdm.models import load_model
from medhdm.pipeline import InputSpec, load_image

captum_attr = pytest.importorskip("captum.attr", reason="captum is in the dev extra")

SPEC = InputSpec((96, 96), intensity_range=LESIONBENCH_INTENSITY_RANGE)


class CaptumIG(Explainer):
    """Captum's IntegratedGradients (zero baseline), |attribution| / max, as an Explainer for the in-memory run."""

    name = "captum-ig"
    uses_reference = False

    def _explain(self, x, class_idx, scorer, logits, reference):
        attributions = captum_attr.IntegratedGradients(self.model).attribute(
            x, baselines=torch.zeros_like(x), target=class_idx, n_steps=16
        )
        magnitude = attributions.abs().sum(1, keepdim=True)
        saliency = magnitude / magnitude.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return self._result(saliency.detach(), class_idx, scorer, logits, reference)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_lesionbench(
        tmp_path_factory.mktemp("lb2"), n_cases=3, spatial_dims=2, seed=5, lesion_weights=(0.0, 1.0, 1.0, 1.0)
    )


@pytest.fixture(scope="module")
def in_memory(bench):
    model = load_model("default")
    rows, figures = evaluate_manifest(load_manifest(bench), {"IG": CaptumIG(model)}, SPEC, log=None)
    return model, rows, figures


def _write_maps(figures, folder, kind: str, manifest_entries) -> None:
    folder.mkdir()
    for case, entry in zip(figures["cases"], manifest_entries):
        saliency = case["maps"]["IG"]  # (W, H), MONAI/NIfTI order, on the image grid
        if kind == "npy":
            np.save(folder / f"{case['id']}.npy", saliency)
        else:
            affine = np.asarray(load_image(entry["image"]).affine)
            write_nifti(folder / f"{case['id']}_saliency.nii.gz", saliency[..., None].astype(np.float32), affine)


def _findings(field: str) -> tuple[list[float], list[int], str]:
    """A row's ``findings`` field: the findings' scores, the lesion each hits (0: none) and the lesion count."""
    *pairs, lesions = field.split(" ")
    items = [p.split(":") for p in pairs]
    return [float(s) for s, _ in items], [int(k) for _, k in items], lesions


def test_captum_maps_from_files_score_as_in_memory(bench, in_memory, tmp_path):
    model, rows, figures = in_memory
    entries = load_manifest(bench)
    _write_maps(figures, tmp_path / "nii", "nii", entries)
    _write_maps(figures, tmp_path / "npy", "npy", entries)
    scored, _ = evaluate_manifest(
        entries,
        {},
        SPEC,
        log=None,
        model=model,
        maps={"IG nifti": tmp_path / "nii", "IG npy": tmp_path / "npy"},
    )
    assert len(scored) == 6
    metrics = [k for k in rows[0] if k not in ("case", "method", "label", "seconds")]
    faithfulness = {"deletion_half", "insertion_half", "deletion_auc_log", "insertion_auc_log"}
    assert {"auroc", "pointing_game", "class_idx", "score"} | faithfulness <= set(metrics)
    for name in ("IG nifti", "IG npy"):
        from_files = [r for r in scored if r["method"] == name]
        assert [r["case"] for r in from_files] == [r["case"] for r in rows]
        for memory, file in zip(rows, from_files):
            for key in metrics:
                if key == "findings":  # the same findings (suppression in mm): their scores and the lesions hit
                    scores, hits, lesions = _findings(file[key])
                    assert (hits, lesions) == _findings(memory[key])[1:], (name, memory["case"], file[key], memory[key])
                    assert scores == pytest.approx(_findings(memory[key])[0], rel=1e-5), (name, memory["case"])
                else:
                    assert file[key] == pytest.approx(memory[key], rel=1e-6, abs=1e-9), (name, memory["case"], key)
    assert sum(len(_findings(r["findings"])[0]) for r in rows) > len(rows)  # several per case: the radius matters
    assert any(r["pointing_game"] == 0 for r in rows) or any(r["auroc"] < 1 for r in rows)  # not trivially perfect


def test_cli_scores_maps_beside_methods_and_names_bad_maps(bench, in_memory, tmp_path, capsys):
    _, _, figures = in_memory
    entries = load_manifest(bench)
    _write_maps(figures, tmp_path / "ig", "npy", entries)
    out = tmp_path / "report"
    rc = main(
        [
            "evaluate",
            "--manifest",
            str(bench),
            "--methods",
            "gxi",
            "--maps",
            f"captum-ig={tmp_path / 'ig'}",
            "--intensity-range=-1000,0",
            "--no-faithfulness",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "| captum-ig |" in printed and "| gxi |" in printed
    assert "captum-ig" in (out / "report.html").read_text()

    first = entries[0]["id"]
    cases = {
        "shape": (lambda d: np.save(d / f"{first}.npy", np.zeros((96, 95))), f"case {first}:.*shape \\(96, 95\\)"),
        "range": (lambda d: np.save(d / f"{first}.npy", np.full((96, 96), 2.0)), f"case {first}:.*expected \\[0, 1\\]"),
        "nan": (lambda d: np.save(d / f"{first}.npy", np.full((96, 96), np.nan)), f"case {first}:.*NaN"),
        "grid": (
            lambda d: nib.save(nib.Nifti1Image(np.zeros((96, 96, 1), np.float32), np.eye(4)), d / f"{first}.nii.gz"),
            f"case {first}:.*affine differs",
        ),
        "missing": (lambda d: None, f"case {first}: no map"),
    }
    for problem, (write, message) in cases.items():
        folder = tmp_path / problem
        folder.mkdir()
        write(folder)
        rc = main(
            [
                "evaluate",
                "--manifest",
                str(bench),
                "--methods",
                "",
                "--maps",
                f"x={folder}",
                "--intensity-range=-1000,0",
                "--no-faithfulness",
                "--out",
                str(tmp_path / f"o_{problem}"),
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2, (problem, err)
        assert re.search(message, err), (problem, err)
        assert not (tmp_path / f"o_{problem}" / "report.html").exists()
