"""DICOM files in the transfer syntaxes that scanners and archives send, made with dcmtk and GDCM.

:data:`ENCODINGS` lists one conversion per syntax and tool: dcmtk's ``dcmconv`` (the
uncompressed and deflated syntaxes), ``dcmcrle``, ``dcmcjpeg`` and ``dcmcjpls``, and GDCM's
``gdcmconv`` (Debian packages ``dcmtk`` and ``libgdcm-tools``); :func:`encode` applies one to a
file or to every file of a series folder and checks that the written file has the syntax asked for.
The decoding tests and ``benchmarks/decode_syntaxes.py`` compare what medhdm reads from each
against the uncompressed original.

Lossy tools give new SOP Instance UIDs (dcmtk's default for lossy compression, GDCM always for
lossy) and set Lossy Image Compression (0028,2110) to ``01``, as an archive's compression does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import uid

__all__ = ["ENCODINGS", "Encoding", "encode", "encoding"]


@dataclass(frozen=True)
class Encoding:
    """One conversion into a transfer syntax.

    Attributes:
        key: short name (``"jpeg_lossless_sv1"``, ``"rle_gdcm"`` for GDCM's encoder of a syntax dcmtk also writes).
        transfer_syntax: the UID the converted file has.
        command: the tool and its options; the input and output paths follow.
        bits_stored: the original it needs: 16 (signed, as CT), 12 or 8 (unsigned) bits stored per pixel.
        lossless: the decoded pixels equal the original's.
        max_error: for near-lossless JPEG-LS, the largest difference in stored values the standard allows (NEAR).
    """

    key: str
    transfer_syntax: str
    command: tuple[str, ...]
    bits_stored: int = 16
    lossless: bool = True
    max_error: int | None = None

    @property
    def tool(self) -> str:
        return self.command[0]


ENCODINGS: tuple[Encoding, ...] = (
    Encoding("explicit_le", uid.ExplicitVRLittleEndian, ("dcmconv", "+te")),
    Encoding("implicit_le", uid.ImplicitVRLittleEndian, ("dcmconv", "+ti")),
    Encoding("deflated", uid.DeflatedExplicitVRLittleEndian, ("dcmconv", "+td")),
    Encoding("deflated_gdcm", uid.DeflatedExplicitVRLittleEndian, ("gdcmconv", "--deflated")),
    Encoding("big_endian", uid.ExplicitVRBigEndian, ("dcmconv", "+tb")),
    Encoding("rle", uid.RLELossless, ("dcmcrle",)),
    Encoding("rle_gdcm", uid.RLELossless, ("gdcmconv", "--rle")),
    Encoding("jpeg_baseline", uid.JPEGBaseline8Bit, ("dcmcjpeg", "+eb", "+q", "90"), bits_stored=8, lossless=False),
    Encoding("jpeg_extended", uid.JPEGExtended12Bit, ("dcmcjpeg", "+ee", "+q", "90"), bits_stored=12, lossless=False),
    Encoding("jpeg_lossless_sv1", uid.JPEGLosslessSV1, ("dcmcjpeg", "+e1")),
    Encoding("jpeg_lossless_sv1_gdcm", uid.JPEGLosslessSV1, ("gdcmconv", "--jpeg")),
    Encoding("jpegls_lossless", uid.JPEGLSLossless, ("dcmcjpls", "+el")),
    Encoding("jpegls_lossless_gdcm", uid.JPEGLSLossless, ("gdcmconv", "--jpegls")),
    Encoding(
        "jpegls_near_lossless",
        uid.JPEGLSNearLossless,
        ("dcmcjpls", "+en", "+md", "2"),
        bits_stored=12,  # dcmcjpls encodes unsigned pixels only near-losslessly
        lossless=False,
        max_error=2,
    ),
    Encoding(
        "jpegls_near_lossless_gdcm",
        uid.JPEGLSNearLossless,
        ("gdcmconv", "--jpegls", "--lossy", "-e", "2"),  # gdcmconv's long options with a value are not parsed
        lossless=False,
        max_error=2,
    ),
    Encoding("jpeg2000_lossless", uid.JPEG2000Lossless, ("gdcmconv", "--j2k")),
    Encoding("jpeg2000", uid.JPEG2000, ("gdcmconv", "--j2k", "--lossy", "-r", "10"), lossless=False),
)


def encoding(key: str) -> Encoding:
    """The :data:`ENCODINGS` entry called ``key``."""
    for item in ENCODINGS:
        if item.key == key:
            return item
    raise ValueError(f"key: expected one of {[e.key for e in ENCODINGS]}, got {key!r}")


def _convert(item: Encoding, source: Path, target: Path) -> None:
    tool = shutil.which(item.tool)
    if tool is None:
        raise RuntimeError(f"{item.tool} is not installed (apt-get install dcmtk libgdcm-tools)")
    run = subprocess.run([tool, *item.command[1:], str(source), str(target)], capture_output=True, text=True)
    if run.returncode != 0 or not target.is_file():
        message = " ".join((run.stderr or run.stdout).split())
        raise RuntimeError(f"{' '.join(item.command)} {source}: exit {run.returncode}: {message}")
    written = pydicom.dcmread(target, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if written != item.transfer_syntax:
        raise RuntimeError(
            f"{' '.join(item.command)} {source}: wrote {written.name}, expected {uid.UID(item.transfer_syntax).name}"
        )


def encode(source: str | os.PathLike, target: str | os.PathLike, item: Encoding | str) -> Path:
    """Convert a DICOM file, or every file of a series folder (into the folder ``target``, same names).

    Raises:
        RuntimeError: the tool is missing or failed, or wrote another transfer syntax than ``item``'s.
    """
    item = encoding(item) if isinstance(item, str) else item
    source, target = Path(source), Path(target)
    if not source.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        _convert(item, source, target)
        return target
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in source.iterdir() if p.is_file()):
        _convert(item, path, target / path.name)
    return target
