"""Cohort throughput: cases per minute of ``medhdm explain`` over a LesionBench manifest, per engine.

    MEDHDM_THREADS=1 python benchmarks/cohort.py [--cases-2d 12] [--cases-3d 4] [--methods hdm,gxi]
        [--hdm-steps N] [--batch-size 4] [--device cpu|cuda] [--gpus-per-worker 0.5] [--workers 1,2]

For a 2D and a 3D LesionBench manifest (written once into a temporary folder) and each
method (HDM, Gradient x Input), the same cases are explained by :func:`medhdm.cohort.explain_cohort`
into a fresh folder with: the local engine one case at a time, the local engine in batches
of ``--batch-size``, and Ray with 1 and 2 workers (``--workers``; batches of ``--batch-size``).
Every configuration runs in this one process, one after another, so the ratios between them
are measured under the same load. Per run: the startup (loading the model; for Ray, starting
the actors until each has loaded it), then the run's wall time and cases/min, the rate a long
cohort sees. Thread counts: the local engine uses
``MEDHDM_THREADS`` (default 1) torch threads; each Ray worker its share of the cores,
capped by ``MEDHDM_THREADS`` (printed per worker).

On a GPU machine: ``--device cuda --gpus-per-worker 0.5 --workers 1,2,4`` (several workers per GPU).
Writes ``benchmarks/results/cohort_<device>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import RESULTS, write_json

from medhdm.cohort import ExplainRecipe, LocalEngine, ModelRecipe, explain_cohort
from medhdm.cohort.ray_engine import RayEngine
from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.io.manifest import load_manifest
from medhdm.pipeline import InputSpec


def _run(entries: list[dict], recipe: ExplainRecipe, engine, batch_size: int, out: Path, startup: float) -> dict:
    """One run into ``out`` on a started engine: its wall time and cases per minute."""
    start = time.perf_counter()
    result = explain_cohort(entries, recipe, out, engine=engine, batch_size=batch_size, progress=False)
    wall = time.perf_counter() - start
    n = len(result.done)
    return {
        "cases": n,
        "startup_s": round(startup, 2),
        "run_s": round(wall, 2),
        "cases_per_min": round(n / wall * 60, 2),
        "s_per_case": round(wall / n, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases-2d", type=int, default=12)
    parser.add_argument("--cases-3d", type=int, default=4)
    parser.add_argument("--methods", default="hdm,gxi")
    parser.add_argument("--hdm-steps", type=int, default=None, help="HDM optimiser steps (default: HDM's)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    threads = max(1, int(os.environ.get("MEDHDM_THREADS", "1")))
    torch.set_num_threads(threads)
    ray = None
    if not args.no_ray:
        import ray

        ray.init(
            num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(), include_dashboard=False, log_to_driver=False
        )
    rows = []
    print(f"local engine: {torch.get_num_threads()} torch threads; {os.cpu_count()} cores; device {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for dims, n in ((2, args.cases_2d), (3, args.cases_3d)):
            if n < 1:
                continue
            manifest = write_lesionbench(root / f"lb{dims}d", n_cases=n, spatial_dims=dims)
            entries = [{"id": e["id"], "image": str(e["image"])} for e in load_manifest(manifest)]
            model = ModelRecipe("default" if dims == 2 else "default3d", device=args.device)
            spec = InputSpec.for_model(model.load())
            spec = InputSpec(spec.spatial_size, intensity_range=LESIONBENCH_INTENSITY_RANGE)
            for method in args.methods.split(","):
                steps = args.hdm_steps if method == "hdm" else None
                recipe = ExplainRecipe(model, spec, method, steps=steps)
                configs = [("local", 1, None), ("local", args.batch_size, None)]
                if ray is not None:
                    configs += [("ray", args.batch_size, int(w)) for w in args.workers.split(",")]
                for engine_name, batch, workers in configs:
                    begin = time.perf_counter()
                    if engine_name == "local":
                        runner = recipe.build()
                        engine, used = LocalEngine(runner), [torch.get_num_threads()]
                    else:
                        key = recipe.build(device="cpu").key
                        engine = RayEngine(recipe, key, workers=workers, gpus_per_worker=args.gpus_per_worker)
                        engine.start()
                        used = engine.ready()  # every actor has loaded the model: startup ends here
                    startup = time.perf_counter() - begin
                    out = root / f"out-{dims}-{method}-{engine_name}-{batch}-{workers}"
                    figures = _run(entries, recipe, engine, batch, out, startup)
                    label = (
                        f"local, batch {batch}" if engine_name == "local" else f"Ray {workers} worker(s), batch {batch}"
                    )
                    row = {"dims": dims, "method": method, "engine": label, "threads_per_worker": used, **figures}
                    rows.append(row)
                    print(row, flush=True)
    if ray is not None:
        ray.shutdown()
    print("\n| data | method | engine | torch threads per worker | cases | startup s | run s | s/case | cases/min |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['dims']}D | {r['method']} | {r['engine']} | {r['threads_per_worker']} | {r['cases']} | "
            f"{r['startup_s']} | {r['run_s']} | {r['s_per_case']} | {r['cases_per_min']} |"
        )
    write_json(
        RESULTS / f"cohort_{args.device.split(':')[0]}.json",
        {"cores": os.cpu_count(), "hdm_steps": args.hdm_steps, "batch_size": args.batch_size, "rows": rows},
    )


if __name__ == "__main__":
    main()
