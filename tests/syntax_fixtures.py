"""DICOM files in each transfer syntax a PACS sends, made from one uncompressed image with dcmtk and GDCM.

:func:`syntax_files` writes the files; each entry names the transfer syntax UID the file holds and
the ``storescu`` option that proposes it. Missing tools skip (fail under ``MEDHDM_REQUIRE_VALIDATORS=1``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from validators import tool

#: name -> (transfer syntax UID, storescu option proposing it, source bit depth, compressor command)
SYNTAXES = {
    "explicit-le": ("1.2.840.10008.1.2.1", "-xe", 16, None),
    "implicit-le": ("1.2.840.10008.1.2", "-xi", 16, ["dcmconv", "+ti"]),
    "explicit-be": ("1.2.840.10008.1.2.2", "-xb", 16, ["dcmconv", "+tb"]),
    "deflated": ("1.2.840.10008.1.2.1.99", "-xd", 16, ["dcmconv", "+td"]),
    "rle": ("1.2.840.10008.1.2.5", "-xr", 16, ["dcmcrle"]),
    "jpeg-baseline": ("1.2.840.10008.1.2.4.50", "-xy", 8, ["dcmcjpeg", "+eb"]),
    "jpeg-extended": ("1.2.840.10008.1.2.4.51", "-xx", 12, ["dcmcjpeg", "+ee"]),
    "jpeg-lossless-sv1": ("1.2.840.10008.1.2.4.70", "-xs", 16, ["dcmcjpeg", "+e1"]),
    "jpeg-ls-lossless": ("1.2.840.10008.1.2.4.80", "-xt", 16, ["dcmcjpls", "+el"]),
    "jpeg-ls-near-lossless": ("1.2.840.10008.1.2.4.81", "-xu", 16, ["dcmcjpls", "+en"]),
    "jpeg2000-lossless": ("1.2.840.10008.1.2.4.90", "-xv", 16, ["gdcmconv", "--j2k"]),
    "jpeg2000": ("1.2.840.10008.1.2.4.91", "-xw", 16, ["gdcmconv", "--j2k", "--lossy", "-q", "30"]),
}

#: syntaxes whose pixel data decode to the source's exactly
LOSSLESS = {
    "explicit-le",
    "implicit-le",
    "explicit-be",
    "deflated",
    "rle",
    "jpeg-lossless-sv1",
    "jpeg-ls-lossless",
    "jpeg2000-lossless",
}


def _with_depth(source: pydicom.Dataset, bits: int) -> pydicom.Dataset:
    """``source`` (16-bit signed), its pixels scaled into unsigned ``bits`` bits (8: baseline JPEG, 12: extended)."""
    ds = source.copy()
    if bits == 16:
        return ds
    pixels = ds.pixel_array.astype(np.float64)
    scaled = (pixels - pixels.min()) / max(np.ptp(pixels), 1) * (2**bits - 1)
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelData = scaled.round().astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def syntax_files(source: Path, out: Path, names=None) -> dict[str, dict]:
    """One file per transfer syntax of :data:`SYNTAXES` (or ``names``) under ``out``, each with new UIDs.

    Returns ``{name: {"path", "syntax", "option", "original"}}``; ``original`` is the uncompressed file it
    was made from (``storescu`` sends a file in its own syntax when the receiver accepts it).
    """
    out.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(source)
    files = {}
    for name in names or SYNTAXES:
        syntax, option, bits, command = SYNTAXES[name]
        ds = _with_depth(base, bits)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        original = out / f"{name}.original.dcm"
        ds.save_as(original, enforce_file_format=True)
        path = original
        if command is not None:
            path = out / f"{name}.dcm"
            program = dcmtk(command[0]) if command[0].startswith("dcm") else tool(command[0])
            run = subprocess.run([program, *command[1:], str(original), str(path)], capture_output=True, text=True)
            assert run.returncode == 0, f"{command}: {run.stderr}"
            held = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            assert held == syntax, f"{name}: {command} wrote {held}, expected {syntax}"
        files[name] = {"path": path, "syntax": syntax, "option": option, "original": original}
    return files


def dcmtk(name: str) -> str:
    """The dcmtk program ``name`` on the PATH (pynetdicom installs Python apps of the same names, e.g. storescu:
    the one whose ``--version`` says dcmtk); skip (fail under ``MEDHDM_REQUIRE_VALIDATORS=1``) when missing."""
    import os

    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            run = subprocess.run([str(candidate), "--version"], capture_output=True, text=True)
            if "dcmtk" in (run.stdout + run.stderr).lower():
                return str(candidate)
    return tool(f"{name} (dcmtk)")


def storescu(port: int, files, *options: str, calling: str = "SCANNER", called: str = "MEDHDM"):
    """dcmtk's storescu sending ``files`` to 127.0.0.1:port; the finished process (exit status, output)."""
    argv = [dcmtk("storescu"), "-aet", calling, "-aec", called, *options, "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)
