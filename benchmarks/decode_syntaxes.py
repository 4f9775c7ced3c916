"""Every transfer syntax medhdm reads: its decoder, the pixel and map differences from the uncompressed
original, and the seconds to decode.

    python benchmarks/decode_syntaxes.py [--slices 20] [--upsample 4] [--repeats 3] [--threads 1]

For each conversion of :data:`medhdm.data.transfer_syntaxes.ENCODINGS` (dcmtk and GDCM, as archives
compress):

- decoder: the pydicom plugin medhdm decodes the syntax with (:func:`medhdm.io.decoding.decoder_for`);
- decode: seconds to decode the pixel data of a CT series (pydicom's CT_small upsampled to 512 x 512,
  ``--slices`` slices: :func:`medhdm.testing.ct_originals`), the files already read, best of
  ``--repeats``; and the compression ratio (pixel bytes of the original over the encoded file's);
- pixels: the largest difference in CT numbers of what medhdm reads from the uncompressed original's;
- maps: the largest difference of the Grad-CAM and HDM (defaults) maps of the shipped 2D classifier on a
  one-lesion LesionBench case from those of the uncompressed case (of the same bits stored), and how far
  (voxels, largest axis) each map's maximum moved.

Writes ``benchmarks/results/decode_syntaxes.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import torch
from common import RESULTS, write_json
from pydicom.pixels import apply_modality_lut

from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.data.dicom_series import write_series
from medhdm.data.transfer_syntaxes import ENCODINGS, Encoding, encode
from medhdm.explain import make_explainer
from medhdm.io import read_dicom
from medhdm.io.decoding import decode_pixels, decoder_for
from medhdm.models import load_model
from medhdm.pipeline import InputSpec, explain_image
from medhdm.testing import ct_originals, with_bits_stored

METHODS = ("gradcam", "hdm")


def decode_seconds(folder: Path, repeats: int) -> float:
    """Best of ``repeats``: seconds to decode every file's pixel data (files read beforehand, not timed)."""
    best = float("inf")
    for _ in range(repeats):
        datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
        start = time.perf_counter()
        for ds in datasets:
            decode_pixels(ds)
        best = min(best, time.perf_counter() - start)
    return best


def pixel_bytes(folder: Path) -> int:
    total = 0
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        total += len(ds.PixelData)
    return total


def lesion_originals(root: Path) -> dict[int, Path]:
    """A one-lesion 2D LesionBench image at 16, 12 and 8 bits stored."""
    write_lesionbench(root / "bench", n_cases=1, spatial_dims=2, seed=7, lesion_weights=(0, 1, 0, 0))
    case = root / "bench" / "case000"
    ds = pydicom.dcmread(case / "image.dcm")
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)[None]
    out = {16: case / "image.dcm"}
    for bits in (12, 8):
        template, volume = with_bits_stored(ds, hu, bits)
        out[bits] = write_series(template, volume, root / f"lesion{bits}", uid_seed=f"lesion{bits}", bits_stored=bits)[
            0
        ]
    return out


def maps_of(path: Path, explainers: dict, spec: InputSpec) -> dict[str, np.ndarray]:
    return {name: explain_image(path, explainer, spec).saliency for name, explainer in explainers.items()}


def _shift(a: np.ndarray, b: np.ndarray) -> int:
    pa, pb = np.unravel_index(a.argmax(), a.shape), np.unravel_index(b.argmax(), b.shape)
    return max(abs(int(x) - int(y)) for x, y in zip(pa, pb))


def measure(item: Encoding, root: Path, series: dict, lesion: dict, reference: dict, explainers, spec, repeats):
    folder = encode(series[item.bits_stored], root / "series" / item.key, item)
    original = read_dicom(series[item.bits_stored]).pixels
    pixels = read_dicom(folder).pixels
    image = encode(lesion[item.bits_stored], root / "lesion" / f"{item.key}.dcm", item)
    maps = maps_of(image, explainers, spec)
    seconds = decode_seconds(folder, repeats)
    return {
        "key": item.key,
        "transfer_syntax": str(pydicom.uid.UID(item.transfer_syntax).name),
        "uid": item.transfer_syntax,
        "tool": " ".join(item.command),
        "bits_stored": item.bits_stored,
        "lossless": item.lossless,
        "decoder": decoder_for(item.transfer_syntax),
        "compression_ratio": pixel_bytes(series[item.bits_stored]) / pixel_bytes(folder),
        "max_pixel_difference": float(np.abs(pixels.astype(np.float64) - original).max()),
        "decode_seconds": seconds,
        "decode_ms_per_slice": 1000 * seconds / len(list(folder.iterdir())),
        "max_map_difference": {m: float(np.abs(maps[m] - reference[item.bits_stored][m]).max()) for m in METHODS},
        "peak_shift_voxels": {m: _shift(maps[m], reference[item.bits_stored][m]) for m in METHODS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--upsample", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "decode_syntaxes.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    model = load_model("default")
    spec = InputSpec((96, 96), intensity_range=LESIONBENCH_INTENSITY_RANGE)
    explainers = {m: make_explainer(m, model) for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        series = {}
        for bits in (16, 12, 8):
            series[bits] = root / f"original{bits}"
            ct_originals(series[bits], depth=args.slices, bits_stored=bits, upsample=args.upsample)
        lesion = lesion_originals(root)
        reference = {bits: maps_of(path, explainers, spec) for bits, path in lesion.items()}
        rows = [measure(item, root, series, lesion, reference, explainers, spec, args.repeats) for item in ENCODINGS]
        rows_shape = read_dicom(series[16]).pixels.shape
    print(f"torch threads {args.threads}; series {rows_shape} (slices, rows, columns); best of {args.repeats}")
    print(
        "| syntax | tool | decoder | ratio | max |pixel diff| (HU) | decode ms/slice | max |map diff| Grad-CAM, HDM |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        maps = ", ".join(f"{r['max_map_difference'][m]:.2g}" for m in METHODS)
        print(
            f"| {r['key']} | {r['tool']} | {r['decoder']} | {r['compression_ratio']:.2f} | "
            f"{r['max_pixel_difference']:g} | {r['decode_ms_per_slice']:.2f} | {maps} |"
        )
    write_json(
        Path(args.out),
        {
            "threads": args.threads,
            "series_shape": list(rows_shape),
            "repeats": args.repeats,
            "pydicom": pydicom.__version__,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
