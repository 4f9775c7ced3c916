"""The READMEs' result tables are what ``benchmarks/tables.py`` writes from ``benchmarks/results/*.json``."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "tables.py"


@pytest.fixture(scope="module")
def tables():
    """``benchmarks/tables.py`` as a module (it imports its neighbour ``common``, as the benchmark scripts do)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("benchmark_tables", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
        sys.modules.pop("common", None)
    return module


def test_every_marked_table_is_what_the_results_files_give(tables, capsys):
    assert tables.main(["--check"]) == 0, capsys.readouterr().out
    marked = [name for doc in tables.DOCUMENTS for name in tables.OPEN.findall(doc.read_text())]
    assert sorted(marked) == sorted(tables.TABLES)  # every table is marked, once


def test_the_results_table_shows_the_figures_of_the_focused_defaults():
    run = json.loads((ROOT / "benchmarks" / "results" / "hdm_focus_2d_4242.json").read_text())["runs"]["2d/4242"]
    cell = {r["metric"]: r for r in run["summary"] if r["method"] == "HDM defaults"}
    seconds = [r["seconds"] for r in run["rows"] if r["method"] == "HDM defaults"]
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| HDM (defaults; "))
    auroc, hit = cell["auroc"], cell["lesion_hit_rate_multi"]
    assert f"| {auroc['mean']:.3f} [{auroc['ci_low']:.3f}, {auroc['ci_high']:.3f}] |" in row
    assert f"| {hit['mean']:.2f} [{hit['ci_low']:.2f}, {hit['ci_high']:.2f}] |" in row
    assert f"| {sum(seconds) / len(seconds):.3f} (1 thread) |" in row
    assert f"{cell['images']['mean']:.0f} images through the model" in row


def test_check_names_a_table_that_differs_and_rewriting_restores_it(tables, tmp_path, capsys):
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    original = readme.read_text()
    row = next(line for line in original.splitlines() if line.startswith("| HDM (defaults; "))
    auroc = row.split(" | ")[2]  # "0.991 [0.986, 0.994]": the HDM row's pixel AUROC, whatever its figures
    tampered = original.replace(row, row.replace(auroc, "0.5" + auroc[3:]))
    assert tampered != original
    readme.write_text(tampered)

    check = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", str(readme)], capture_output=True, text=True, timeout=300
    )
    assert check.returncode == 1, check.stdout + check.stderr
    assert "table 'results' differs" in check.stdout
    assert readme.read_text() == tampered  # --check writes nothing

    assert tables.main([str(readme)]) == 0
    assert "'results' rewritten" in capsys.readouterr().out
    assert readme.read_text() == original


@pytest.mark.parametrize(
    "text, message",
    [
        ("<!-- table: nope -->\n\n<!-- /table -->\n", "line 1: unknown table 'nope'"),
        ("intro\n<!-- table: speed -->\n\n| a |\n", "line 2: table 'speed' has no <!-- /table -->"),
        ("<!-- table: speed -->\n<!-- table: cohort -->\n<!-- /table -->\n", "before the next table marker"),
        ("<!-- /table -->\n", "line 1: <!-- /table --> without a table marker"),
        ("<!-- table: speed -->\n<!-- /table -->\n<!-- table: speed -->\n<!-- /table -->\n", "marked twice"),
    ],
)
def test_a_bad_marker_is_an_error_naming_the_file(tables, tmp_path, capsys, text, message):
    document = tmp_path / "notes.md"
    document.write_text(text)
    assert tables.main([str(document)]) == 2
    err = capsys.readouterr().err
    assert str(document) in err and message in err
    assert document.read_text() == text
