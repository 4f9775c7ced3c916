"""The one rule for output folders (:mod:`medhdm.io.outputs`): beside a single source file is allowed,
inside a series folder or equal to a source is refused, for ``explain``, ``evaluate``, ``export`` and the API."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medhdm.data.bench_files import write_lesionbench
from medhdm.export import export
from medhdm.io import read_dicom
from medhdm.io.outputs import check_output_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    write_lesionbench(root / "lb2", n_cases=1, spatial_dims=2, lesion_weights=(0.0, 1.0, 0.0, 0.0))
    write_lesionbench(root / "lb3", n_cases=1, spatial_dims=3, lesion_weights=(0.0, 1.0, 0.0, 0.0))
    return root


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _medhdm(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "medhdm.cli", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_rule_beside_a_file_allowed_inside_a_series_folder_refused(bench):
    image = bench / "lb2" / "case000" / "image.dcm"
    series = bench / "lb3" / "case000" / "image"
    for beside in (image.parent, image.parent / "exp", image.parent.parent / "sibling"):
        assert check_output_folder(beside, [image]) == beside
    assert check_output_folder(series.parent / "maps", [series]) == series.parent / "maps"
    with pytest.raises(ValueError, match=r"^out_dir: .*image\.dcm is a file, not a folder"):
        check_output_folder(image, [image])
    with pytest.raises(ValueError, match=r"^out_dir: .* is the source .*image; write the outputs elsewhere$"):
        check_output_folder(series, [series], allow_inside_source=True)
    for inside in (series / "maps", series / "a" / "b"):
        with pytest.raises(ValueError, match=r"^out_dir: .* lies inside the source series folder .*elsewhere$"):
            check_output_folder(inside, [image, series])
        with pytest.raises(ValueError, match=r"elsewhere or pass allow_inside_source=True$"):
            check_output_folder(inside, [series], allow_inside_source=False)
        assert check_output_folder(inside, [series], allow_inside_source=True) == inside
    assert check_output_folder(series / "maps", [None, image]) == series / "maps"


def test_read_dicom_knows_the_series_folder_and_the_export_api_applies_the_rule(bench, tmp_path):
    image = bench / "lb2" / "case000" / "image.dcm"
    series = bench / "lb3" / "case000" / "image"
    single, volume = read_dicom(image), read_dicom(series)
    assert single.series_folder is None and volume.series_folder == series
    with pytest.raises(ValueError, match="lies inside the source series folder"):
        export(volume, np.zeros(volume.shape), series / "maps", ["png"])
    before = _hashes(image.parent)
    written = export(single, np.full(single.shape, 0.5), image.parent / "exp_api", ["png"])
    assert len(written["png"]) == 1 and written["png"][0].parent == image.parent / "exp_api"
    assert {k: v for k, v in _hashes(image.parent).items() if not k.startswith("exp_api")} == before


def test_export_beside_a_single_file_from_its_own_folder(bench, tmp_path):
    """``medhdm export --image scan.dcm --out exp`` run in the file's folder writes there (issue 26, item 7)."""
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "scan.dcm").write_bytes((bench / "lb2" / "case000" / "image.dcm").read_bytes())
    np.save(folder / "m.npy", np.linspace(0, 1, 96 * 96).reshape(96, 96))
    source_hash = hashlib.sha256((folder / "scan.dcm").read_bytes()).hexdigest()
    for out in ("exp", "."):
        done = _medhdm(folder, "export", "--image", "scan.dcm", "--map", "m.npy", "--format", "sc,pm,seg", "--out", out)
        assert done.returncode == 0, done.stderr
        names = sorted(p.name for p in (folder / out).iterdir())
        assert any(n.startswith("SC") for n in names) and any(n.startswith("PM") for n in names), names
    assert hashlib.sha256((folder / "scan.dcm").read_bytes()).hexdigest() == source_hash


def test_explain_and_evaluate_beside_a_single_file_and_not_inside_a_series(bench, tmp_path):
    case = tmp_path / "case"
    case.mkdir()
    for name in ("image.dcm", "lesion.nii.gz"):
        (case / name).write_bytes((bench / "lb2" / "case000" / name).read_bytes())
    before = _hashes(case)
    done = _medhdm(case, "explain", "--image", "image.dcm", "--method", "gxi", "--export", "sc", "--out", "results")
    assert done.returncode == 0, done.stderr
    assert list((case / "results").rglob("SC*.dcm")), sorted((case / "results").rglob("*"))
    manifest = case / "manifest.json"
    manifest.write_text(json.dumps({"testing": [{"id": "c0", "image": "image.dcm", "lesion": "lesion.nii.gz"}]}))
    done = _medhdm(case, "evaluate", "--manifest", "manifest.json", "--methods", "gxi", "--out", "report")
    assert done.returncode == 0, done.stderr
    assert (case / "report").is_dir()
    assert {k: v for k, v in _hashes(case).items() if k in before} == before

    series = bench / "lb3" / "case000" / "image"
    refused = _medhdm(
        series.parent, "explain", "--image", "image", "--model", "default3d", "--method", "gxi", "--out", "image/maps"
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("(the outputs would join the series); write the outputs elsewhere")
    assert "--out: image/maps lies inside the source series folder image" in refused.stderr
    assert not (series / "maps").exists()
