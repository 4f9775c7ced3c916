"""The DICOM validators for export tests: ``dciodvfy`` (dicom3tools) and ``dcmdump`` (dcmtk), and the
converters that make compressed test files (dcmtk, GDCM's ``gdcmconv``).

Missing, a test skips with the reason; with ``MEDHDM_REQUIRE_VALIDATORS=1`` (CI) it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

REQUIRE_VALIDATORS = os.environ.get("MEDHDM_REQUIRE_VALIDATORS") == "1"


def tool(name: str, package: str = "dicom3tools dcmtk") -> str:
    """The path of the tool ``name`` (Debian ``package``), or skip (fail under ``MEDHDM_REQUIRE_VALIDATORS=1``)."""
    path = shutil.which(name)
    if path is None:
        if REQUIRE_VALIDATORS:
            pytest.fail(f"{name} is required (MEDHDM_REQUIRE_VALIDATORS=1) but not installed")
        pytest.skip(f"{name} not installed (apt-get install {package})")
    return path


def dciodvfy_errors(path) -> tuple[list[str], str]:
    """dciodvfy's ``Error`` lines for ``path``, and its whole report."""
    run = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False)
    report = run.stdout + run.stderr
    return [line for line in report.splitlines() if line.startswith("Error")], report
