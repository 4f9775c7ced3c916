"""``medhdm evaluate`` over a small manifest: tables, figures, and an HTML report that references only
existing files."""

from __future__ import annotations

import base64
import csv
import json
import re

import pytest

from medhdm.cli import main
from medhdm.data.bench_files import write_lesionbench


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_lesionbench(tmp_path_factory.mktemp("lb"), n_cases=3, spatial_dims=2)


def test_evaluate_writes_a_readable_report(manifest, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(
        [
            "evaluate",
            "--manifest",
            str(manifest),
            "--methods",
            "gxi,occlusion",
            "--intensity-range=-1000,0",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "[3/3]" in printed and "report:" in printed  # progress per case, then where the report is
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["method"] for r in rows} == {"gxi", "occlusion"}
    faithfulness = ("deletion_half", "insertion_half", "deletion_auc_log", "insertion_auc_log")
    for key in ("pointing_game", "auroc", "auprc", "dice_top", "lesion_hit_rate", *faithfulness):
        assert key in rows[0]
    assert "deletion_auc" not in rows[0]  # the equal-step AUC only with --curve-steps
    assert all(0 < float(r["deletion_half"]) < 0.5 and 0 < float(r["insertion_half"]) < 0.5 for r in rows)
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert {(s["method"], s["metric"]) for s in summary} >= {("gxi", "auroc"), ("occlusion", "deletion_auc_log")}
    for s in summary:  # the half-evidence shares get a bootstrap CI like every other metric
        if s["metric"] in ("deletion_half", "insertion_half"):
            assert float(s["ci_low"]) <= float(s["mean"]) <= float(s["ci_high"]) and s["n"] == "3"
    assert "| deletion_half | insertion_half | deletion_auc_log | insertion_auc_log |" in printed  # printed too
    data = json.loads((out / "summary.json").read_text())
    assert data["paired_vs_first"][0]["a"] == "occlusion" and data["paired_vs_first"][0]["b"] == "gxi"
    page = (out / "report.html").read_text()
    for section in ("Summary", "Deletion and insertion curves", "Metrics per method", "Paired comparison", "Cases"):
        assert re.search(f"<h2[^>]*>{section}", page), section
    references = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert references
    for ref in references:
        if ref.startswith("data:image/png;base64,"):
            assert base64.b64decode(ref.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        elif ref.startswith("#"):  # links inside the page lead somewhere (a finding's: a case, then slice and method)
            assert f'id="{ref[1:].split("/")[0]}"' in page, ref
        else:
            assert (out / ref).is_file(), ref
    assert len([r for r in references if r.startswith("data:")]) == 3 + 3  # curves, box plots, FROC; a frame per case
    # the findings' lesion-level scores: a FROC table and plot, and the CPM per method in summary.json
    assert re.search("<h2[^>]*>Findings: FROC", page)
    cpm = {r["method"]: r for r in data["froc"] if r["metric"] == "cpm"}
    assert set(cpm) == {"gxi", "occlusion"} and all(0 <= r["mean"] <= 1 and r["n"] == 3 for r in cpm.values())
    # each case's findings ("score:lesion" strongest first) and its lesion count
    assert all(re.fullmatch(r"(?:\S+:\d+ )*/\d+", r["findings"]) for r in rows), [r["findings"] for r in rows]
    # the case table links to a section per case: a method selector, the case's scores, one frame per method
    for case in ("case000", "case001", "case002"):
        assert f'href="#case-{case}"' in page
        section = re.search(f'<section class="case" id="case-{case}">.*?</section>', page, re.S).group(0)
        assert '<select class="method">' in section and 'class="slice"' not in section  # 2D: no slice slider
        assert re.search(r"<tr><th>gxi</th><td>\d</td>", section) and "<th>auroc</th>" in section
        frames = json.loads(re.search(r'class="frames">(.*?)</script>', section, re.S).group(1))
        assert set(frames) == {"image", "gxi", "occlusion"} and all(len(v) == 1 for v in frames.values())
        assert frames["gxi"][0] != frames["occlusion"][0] != frames["image"][0]
        # each method's findings listed, a row linking to the case's one slice with that method
        assert f'<a class="finding-link" href="#case-{case}/slice=0/method=gxi">show</a>' in section


def test_evaluate_curve_steps_gives_the_equal_step_auc(manifest, tmp_path, capsys):
    """``--curve-steps 64``: the classic columns, equal to deletion_auc / insertion_auc on the model's view."""
    import torch

    from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE
    from medhdm.explain import GradientInput
    from medhdm.io.manifest import load_manifest
    from medhdm.metrics import deletion_auc, insertion_auc
    from medhdm.models import load_default_classifier
    from medhdm.pipeline import InputSpec, explain_image

    torch.set_num_threads(1)
    out = tmp_path / "report"
    argv = ["evaluate", "--manifest", str(manifest), "--methods", "gxi", "--intensity-range=-1000,0", "--out"]
    assert main([*argv, str(out), "--curve-steps", "64"]) == 0, capsys.readouterr().err
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"deletion_auc", "insertion_auc", "deletion_half", "insertion_half"} <= set(rows[0])
    assert "deletion_auc_log" not in rows[0] and "insertion_auc_log" not in rows[0]
    model = load_default_classifier()
    entry = load_manifest(manifest)[0]
    cls = int(rows[0]["class_idx"])
    spec = InputSpec((96, 96), intensity_range=LESIONBENCH_INTENSITY_RANGE)
    view = explain_image(entry["image"], GradientInput(model), spec, cls)
    expected = deletion_auc(model, view.model_input, view.model_saliency, cls, n_steps=64)[0]
    assert float(rows[0]["deletion_auc"]) == pytest.approx(expected, abs=1e-6)
    expected = insertion_auc(model, view.model_input, view.model_saliency, cls, n_steps=64)[0]
    assert float(rows[0]["insertion_auc"]) == pytest.approx(expected, abs=1e-6)
    assert main([*argv, str(tmp_path / "bad"), "--curve-steps", "0"]) == 2
    assert "--curve-steps: expected an integer >= 1" in capsys.readouterr().err


def test_evaluate_refuses_cases_without_lesion_annotations(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    (tmp_path / "m.json").write_text(
        json.dumps({"testing": [{"id": "ct", "image": get_testdata_file("CT_small.dcm")}]})
    )
    rc = main(["evaluate", "--manifest", str(tmp_path / "m.json"), "--methods", "gxi", "--out", str(tmp_path / "o")])
    assert rc == 2 and "without a 'lesion' annotation" in capsys.readouterr().err
