"""Cost of an explanation with a realistic network: MONAI DenseNet121, 2D at 224 x 224 and 3D at 96^3.

    python benchmarks/realistic.py [--device cpu|cuda] [--amp] [--threads 1] [--dims 2d,3d]
                                   [--methods hdm,gradientinput] [--steps 2,3] [--max-batch 2d=none,3d=1]

Random weights (cost does not depend on them), one image per explanation. Each
(network, method, steps, max_batch) runs in a fresh child process so that its peak
memory is its own: on CUDA ``torch.cuda.max_memory_allocated``, on the CPU the
child's peak resident set (``ru_maxrss``) minus its resident set after loading the
model. HDM at its default steps per phase (5 since 2026-11-28; 20 before) is slow on a CPU
for DenseNet121 in 3D, so mask methods can run at given small step counts and the script
projects the default from them: images through the model and seconds are linear in the steps
per phase when the stages taken are the same (the script says when they are not),
``cost(n) = cost(s1) + (n - s1) * (cost(s2) - cost(s1)) / (s2 - s1)`` for the default ``n``. With
``--steps default`` the defaults are measured directly (do that on a GPU).
Also printed: the bare loop of the same model calls (forward+backward where the method
needed gradients, forward only where not): the method's floor, and its ratio to it.
Writes ``benchmarks/results/realistic_<device>[_amp]_<dims>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

import torch
from common import RESULTS, write_json

from medhdm import HDM

SHAPES = {"2d": (224, 224), "3d": (96, 96, 96)}
DEFAULT_STEPS = HDM(torch.nn.Identity()).auxiliary_objective.steps  # HDM's optimiser steps per mask phase


def _rss_kb() -> int:
    """The process's current resident set in KiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child(args: argparse.Namespace) -> dict:
    """One measurement in this process: explain one image, then replay its model calls as a bare loop."""
    from monai.networks.nets import DenseNet121

    from medhdm.explain.registry import make_explainer

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    torch.manual_seed(0)
    shape = SHAPES[args.dims]
    model = DenseNet121(spatial_dims=len(shape), in_channels=1, out_channels=2).to(device).eval()
    pool = torch.nn.functional.avg_pool2d if len(shape) == 2 else torch.nn.functional.avg_pool3d
    image = pool(torch.rand((1, 1, *shape)), 9, stride=1, padding=4).to(device)  # smooth noise
    steps = None if args.steps == "default" else int(args.steps)
    max_batch = None if args.max_batch == "none" else int(args.max_batch)
    explainer = make_explainer(args.method, model, steps=steps, amp=args.amp, max_batch=max_batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_kb()
    calls: list[tuple[tuple[int, ...], bool]] = []  # (input shape, gradients needed) per model call
    handle = model.register_forward_pre_hook(lambda _m, a: calls.append((tuple(a[0].shape), a[0].requires_grad)))
    _sync(device)
    start = time.perf_counter()
    result = explainer.explain(image, 1)
    _sync(device)
    seconds = time.perf_counter() - start
    handle.remove()
    peak_mb = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    )
    model.requires_grad_(False)
    inputs = [(torch.rand(s, device=device, requires_grad=grad), grad) for s, grad in calls]
    autocast = torch.autocast("cuda") if args.amp and device.type == "cuda" else torch.autocast("cpu", enabled=False)
    _sync(device)
    start = time.perf_counter()
    for batch, grad in inputs:
        with torch.set_grad_enabled(grad), autocast:
            out = model(batch)
        if grad:
            out.float().sum().backward()
    _sync(device)
    floor = time.perf_counter() - start
    return {
        "seconds": seconds,
        "floor_seconds": floor,
        "forward_passes": result.forward_passes,
        "images": result.images_evaluated,
        "stages": sum(bool(s.active.any()) for s in result.stages),
        "max_batch_used": result.max_batch,
        "largest_model_call": max(s[0] for s, _ in calls),
        "peak_memory_mb": peak_mb,
    }


def _run_child(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _project(a: dict, b: dict, s1: int, s2: int, key: str, target: int = DEFAULT_STEPS) -> float:
    return a[key] + (target - s1) * (b[key] - a[key]) / (s2 - s1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="forward passes under torch.autocast (CUDA)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (default 1)")
    parser.add_argument("--dims", default="2d,3d")
    parser.add_argument("--methods", default="hdm,gradientinput")
    parser.add_argument("--steps", default="2,3", help="two small step counts to project from, or 'default'")
    parser.add_argument("--max-batch", default="2d=none,3d=1", help="memory guard per network (none: no limit)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    guard = dict(item.split("=") for item in args.max_batch.split(","))
    step_counts = ["default"] if args.steps == "default" else args.steps.split(",")
    rows, results = [], {"device": args.device, "amp": args.amp, "threads": args.threads, "runs": []}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    print(f"device {args.device}, amp {args.amp}, {args.threads} torch thread(s) per child, DenseNet121 (random)\n")
    for dims in args.dims.split(","):
        for method in args.methods.split(","):
            mask_method = method in ("hdm", "mdm", "neuromask")
            runs = {}
            for steps in step_counts if mask_method else ["default"]:
                argv = ["--device", args.device, "--threads", str(args.threads), "--method", method]
                argv += ["--dims", dims, "--steps", steps, "--max-batch", guard.get(dims, "none")]
                argv += ["--amp"] if args.amp else []
                runs[steps] = _run_child(argv)
                runs[steps].update(dims=dims, method=method, steps=steps, max_batch=guard.get(dims, "none"))
                results["runs"].append(runs[steps])
                print(f"  {dims} {method} steps={steps}: {runs[steps]}", flush=True)
            if any("error" in r for r in runs.values()):
                continue
            if len(runs) == 2:
                (s1, a), (s2, b) = ((int(k), v) for k, v in runs.items())
                same = a["stages"] == b["stages"]
                row = {
                    "images": _project(a, b, s1, s2, "images"),
                    "seconds": _project(a, b, s1, s2, "seconds"),
                    "floor_seconds": _project(a, b, s1, s2, "floor_seconds"),
                    "peak_memory_mb": max(a["peak_memory_mb"], b["peak_memory_mb"]),
                    "note": f"projected to {DEFAULT_STEPS} steps from {s1} and {s2}"
                    + ("" if same else " (stages differ)"),
                }
            else:
                row = {**next(iter(runs.values())), "note": "measured"}
            row.update(dims=dims, method=method, max_batch=guard.get(dims, "none"))
            rows.append(row)
    results["table"] = rows
    header = ("network", "method", "images / explanation", "s / explanation", "bare loop s", "ratio", "peak MB")
    print("\n| " + " | ".join((*header, "max_batch", "how")) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        size = "x".join(str(n) for n in SHAPES[r["dims"]])
        print(
            f"| DenseNet121 {r['dims']} {size} | {r['method']} | {r['images']:.0f} | {r['seconds']:.1f} "
            f"| {r['floor_seconds']:.1f} | {r['seconds'] / max(r['floor_seconds'], 1e-9):.2f} "
            f"| {r['peak_memory_mb']:.0f} | {r['max_batch']} | {r['note']} |"
        )
    name = f"realistic_{args.device.split(':')[0]}{'_amp' if args.amp else ''}_{args.dims.replace(',', '_')}.json"
    write_json(RESULTS / name, results)
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    os.environ.setdefault("MEDHDM_THREADS", "1")
    main()
