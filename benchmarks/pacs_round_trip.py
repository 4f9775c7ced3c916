"""Time per study of ``medhdm pacs explain`` (retrieve / explain / push) against a private Orthanc, twice per study.

    python benchmarks/pacs_round_trip.py [--method hdm] [--threads 1]

Starts a real Orthanc (:class:`medhdm.pacs.orthanc.LocalOrthanc`, loopback ports, a temporary
folder), uploads one 2D and one 3D LesionBench study with its lesion SEG, and runs the CLI
twice per study over DICOMweb, pushing SC, PM, SEG and SR. Prints each run's output lines
(with the times per step) and the series Orthanc holds for the study after each run: the
second run must add nothing. Needs Debian's ``orthanc`` and ``orthanc-dicomweb``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from pacs_helpers import bench_study  # noqa: E402

from medhdm.pacs.orthanc import LocalOrthanc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="hdm")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the CLI (MEDHDM_THREADS)")
    args = parser.parse_args()
    env = {**os.environ, "MEDHDM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        studies = {dims: bench_study(root / f"lb{dims}", dims) for dims in (2, 3)}
        with LocalOrthanc(root / "orthanc") as orthanc:
            for study in studies.values():
                orthanc.upload([*study["files"], study["annotation"]])
            for dims, study in studies.items():
                for run in (1, 2):
                    cmd = [sys.executable, "-m", "medhdm.cli", "pacs", "explain", "--dicomweb", orthanc.dicomweb_url]
                    cmd += ["--study", study["study_uid"], "--model", "default" if dims == 2 else "default3d"]
                    cmd += ["--method", args.method, "--intensity-range=-1000,0", "--push", "sc,pm,seg,sr"]
                    cmd += ["--work", str(root / f"work{dims}")]
                    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                    print(f"== {dims}D study, run {run}: exit {done.returncode}")
                    print(done.stdout.rstrip())
                    if done.returncode:
                        print(done.stderr[-800:])
                    print(f"series in study {study['study_uid']}:")
                    for s in orthanc.series_of(study["study_uid"]):
                        print(f"  {s['number']:>5} {s['modality']:<4} {s['instances']:>3}  {s['description']}")


if __name__ == "__main__":
    main()
