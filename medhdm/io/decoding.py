"""Decoding a dataset's pixel data: one pydicom decoder per transfer syntax, named, never guessed.

pydicom decodes every syntax; for the compressed ones it hands the frames to a plugin. medhdm
asks for one plugin per syntax, the one its own dependencies install (``pyproject.toml``):

- Implicit and Explicit VR Little Endian, Explicit VR Big Endian, Deflated Explicit VR Little
  Endian: pydicom itself (:data:`NATIVE`);
- RLE Lossless: ``pylibjpeg`` with pylibjpeg-rle;
- JPEG Baseline, Extended (12-bit), Lossless, Lossless SV1: ``pylibjpeg`` with pylibjpeg-libjpeg;
- JPEG-LS lossless and near-lossless: ``pyjpegls`` (CharLS; about three times as fast as libjpeg's
  JPEG-LS on 512 x 512 CT, ``benchmarks/decode_syntaxes.py``);
- JPEG 2000 lossless and lossy (and HTJ2K): ``pylibjpeg`` with pylibjpeg-openjpeg.

Pinning the plugin (:func:`decoder_for`) makes the decoded values the same on every install,
whatever other plugins (GDCM, Pillow, pyjpegls) happen to be importable, and names the decoder
in a benchmark or an error. A syntax without a decoder (video, JPEG XL, a private syntax), a
plugin whose package is missing, and a frame the plugin cannot decode are each a one-line
``ValueError`` naming the file and the transfer syntax by name and UID; no other reader is tried.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, JPEGLSLossless, JPEGLSNearLossless

__all__ = ["NATIVE", "PLUGINS", "decode_pixels", "decoder_for", "describe_transfer_syntax"]

#: the name :func:`decoder_for` gives pydicom's own decoding of the uncompressed (and deflated) syntaxes
NATIVE = "pydicom"
#: the plugin of each compressed syntax that does not use ``pylibjpeg``
PLUGINS = {JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls"}
_DEFAULT_PLUGIN = "pylibjpeg"


def describe_transfer_syntax(uid: str) -> str:
    """``"JPEG 2000 Image Compression (1.2.840.10008.1.2.4.91)"``: the syntax's name and UID, as messages give it."""
    uid = UID(str(uid))
    name = uid.name if uid.name != str(uid) else "a transfer syntax pydicom does not know"
    return f"{name} ({uid})"


def decoder_for(transfer_syntax: str, where: str = "dataset") -> str:
    """The pydicom decoder plugin medhdm uses for ``transfer_syntax``: :data:`NATIVE`, ``"pylibjpeg"``, ``"pyjpegls"``.

    Raises:
        ValueError: naming ``where`` and the syntax (name and UID): a syntax pydicom has no decoder for,
            or one whose plugin is not installed (with the package to install).
    """
    syntax = describe_transfer_syntax(transfer_syntax)
    try:
        decoder = get_decoder(UID(str(transfer_syntax)))
    except NotImplementedError:
        raise ValueError(
            f"{where}: pixel data in {syntax} cannot be decoded: medhdm reads the uncompressed, deflated, RLE, "
            "JPEG, JPEG-LS and JPEG 2000 syntaxes; convert the file first (dcmdjpeg, dcmdrle or gdcmconv --raw)"
        ) from None
    if decoder.is_native:
        return NATIVE
    plugin = PLUGINS.get(decoder.UID, _DEFAULT_PLUGIN)
    if plugin in decoder.available_plugins:
        return plugin
    missing = [m.split(" - requires ", 1)[-1] for m in decoder.missing_dependencies if m.startswith(f"{plugin} ")]
    if missing:
        raise ValueError(
            f"{where}: pixel data in {syntax} needs pydicom's {plugin} decoder, which requires {missing[0]} "
            f"(a dependency of medhdm: reinstall medhdm, or pip install {_packages(missing[0])})"
        )
    raise ValueError(f"{where}: pixel data in {syntax} cannot be decoded: no {plugin} decoder for it in pydicom")


def _packages(requirement: str) -> str:
    """``"pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"`` -> ``"'pylibjpeg>=2.0' 'pylibjpeg-libjpeg>=2.1'"``."""
    return " ".join(f"'{part.strip()}'" for part in requirement.replace(",", " and ").split(" and ") if part.strip())


def decode_pixels(ds: Dataset, where: str = "dataset") -> np.ndarray:
    """The stored pixel values of ``ds`` (every frame), decoded by :func:`decoder_for`'s plugin only.

    Returns pydicom's ``pixel_array``: ``(H, W)`` for one frame, ``(F, H, W)`` for several, before any
    modality or VOI transform. The plugin is set in ``ds.pixel_array_options``, so that the array pydicom
    caches on ``ds`` (which highdicom reuses for an enhanced multi-frame image) comes from it.

    Raises:
        ValueError: naming ``where`` and the transfer syntax (name and UID): no decoder (see
            :func:`decoder_for`), or the plugin failed on the data (with its reason).
    """
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if transfer_syntax is None:
        raise ValueError(
            f"{where}: no Transfer Syntax UID (0002,0010) in the file meta information; "
            "the pixel data cannot be decoded without it"
        )
    plugin = decoder_for(transfer_syntax, where)
    ds.pixel_array_options(decoding_plugin="" if plugin == NATIVE else plugin)
    try:
        return ds.pixel_array
    except Exception as err:  # noqa: BLE001 (decoders fail in many ways: report them with the file)
        raise ValueError(
            f"{where}: pixel data in {describe_transfer_syntax(transfer_syntax)} cannot be decoded by pydicom's "
            f"{plugin} decoder ({type(err).__name__}: {' '.join(str(err).split())})"
        ) from None
