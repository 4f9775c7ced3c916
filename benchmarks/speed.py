"""Speed benchmark: time per explanation for each method, and HDM against its floor.

    python benchmarks/speed.py [--device cpu|cuda] [--amp] [--batch 8] [--repeats 2] [--threads 2]

For each method: seconds per image when explaining a batch of held-out 96x96 cases
with the shipped DenseNet. For HDM also the *floor*: a bare loop that replays HDM's
model calls (the same sequence of batch sizes, recorded with a forward pre-hook) on random
inputs, as forward+backward passes where gradients flowed and forward passes where they did
not (the findings' evidence call), with the model's parameters frozen as HDM freezes them,
timed in the same run. The ratio HDM / floor
is the overhead of everything that is not the model (mask upsampling, compositing,
Adam, bookkeeping).
The model calls and the images through the model are counted by a forward pre-hook on the model for
every method, so they include the calls a method leaves to MONAI (occlusion's batches) and the findings'
evidence call that every explanation makes. Writes ``benchmarks/results/speed_<device>.json``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from common import RESULTS, default_methods, held_out_cases, write_json

from medhdm.models import load_default_classifier


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def record_batches(model, run) -> list[tuple[tuple[int, ...], bool]]:
    """The input shape of every model call made by ``run()``, and whether gradients flowed through it."""
    shapes: list[tuple[tuple[int, ...], bool]] = []

    def record(_m, args):
        shapes.append((tuple(args[0].shape), torch.is_grad_enabled() and args[0].requires_grad))

    handle = model.register_forward_pre_hook(record)
    try:
        run()
    finally:
        handle.remove()
    return shapes


def bare_loop(model, shapes, device, amp: bool = False) -> float:
    """Seconds for one pass per recorded call, parameters frozen: forward+backward where gradients flowed
    (the masks' steps, the refinement), forward only where they did not (the findings' evidence)."""
    inputs = [(torch.rand(s, device=device, requires_grad=grad), grad) for s, grad in shapes]
    _sync(device)
    start = time.perf_counter()
    for x, grad in inputs:
        with torch.set_grad_enabled(grad), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            out = model(x)
        if grad:
            out.float().sum().backward()
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (the best is kept)")
    parser.add_argument("--amp", action="store_true", help="forward passes under torch.autocast (CUDA only)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    model = load_default_classifier(device=device)
    model.requires_grad_(False)  # as every explainer runs it; the floor then does the same work
    x, _, _ = held_out_cases(args.batch)
    x = x.to(device)
    results = {
        "device": str(device),
        "amp": args.amp,
        "threads": args.threads,
        "batch": args.batch,
        "input": list(x.shape),
        "methods": {},
    }
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    print(f"device {device}, amp {args.amp}, {args.threads} threads, batch {args.batch} x {tuple(x.shape[1:])}\n")
    print("| method | s / image | model calls / call | images through the model / call | images / explanation |")
    print("| --- | --- | --- | --- | --- |")
    for name, explainer in default_methods(model).items():
        explainer.amp = args.amp
        explainer.explain(x[:1], 1)  # warm-up
        best, result = float("inf"), None
        for _ in range(args.repeats):
            _sync(device)
            start = time.perf_counter()
            result = explainer.explain(x, 1)
            _sync(device)
            best = min(best, time.perf_counter() - start)
        shapes = record_batches(model, lambda explainer=explainer: explainer.explain(x, 1))
        entry = {
            "seconds_per_image": best / args.batch,
            "forward_passes": result.forward_passes,
            "backward_passes": result.backward_passes,
            "images_evaluated": result.images_evaluated,
            "model_calls": len(shapes),
            "images_through_model": sum(s[0] for s, _ in shapes),
            "images_per_explanation": sum(s[0] for s, _ in shapes) / args.batch,
        }
        if name == "HDM":
            floor = min(bare_loop(model, shapes, device, args.amp) for _ in range(args.repeats))
            entry.update(
                {
                    "floor_seconds": floor,
                    "floor_passes": len(shapes),
                    "floor_mean_batch": sum(s[0] for s, _ in shapes) / len(shapes),
                    "floor_backward_passes": sum(grad for _, grad in shapes),
                    "ratio_to_floor": best / floor,
                }
            )
        results["methods"][name] = entry
        print(
            f"| {name} | {entry['seconds_per_image']:.3f} | {entry['model_calls']} "
            f"| {entry['images_through_model']} | {entry['images_per_explanation']:.0f} |",
            flush=True,
        )
    hdm = results["methods"]["HDM"]
    print(
        f"\nHDM: {hdm['seconds_per_image'] * args.batch:.2f} s for the batch; the bare loop of the same "
        f"{hdm['floor_passes']} passes ({hdm['floor_backward_passes']} with backward; mean batch "
        f"{hdm['floor_mean_batch']:.1f}): "
        f"{hdm['floor_seconds']:.2f} s; ratio {hdm['ratio_to_floor']:.2f}"
    )
    name = f"speed_{device.type}{'_amp' if args.amp else ''}.json"
    write_json(RESULTS / name, results)
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
