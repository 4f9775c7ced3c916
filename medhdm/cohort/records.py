"""The per-case record: what a case's folder holds once it is complete, and for which configuration.

Each case of a cohort run writes its outputs into ``<out>/<case id>/`` and, last of all,
``record.json`` (atomically)::

    {"case": "case007", "image": "/data/case007/image.dcm",
     "configuration_hash": "9f2c...", "configuration": {...},   # medhdm.models.identity
     "files": ["case007_saliency.nii.gz"], "seconds": 1.9, "result": {...}}

A case is *complete for a configuration* when its record exists, names the same image and
configuration hash, and every file it lists exists. A run killed at any point leaves each
case either complete (record written) or not (no record: redone by the next run), because
the record is written after the outputs and removed before a case is redone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write

__all__ = ["RECORD_NAME", "case_state", "read_record", "remove_record", "write_record"]

RECORD_NAME = "record.json"


def _jsonable(value):
    """numpy scalars and arrays as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"record: {type(value).__name__} is not JSON-able")


def write_record(folder: str | os.PathLike, record: dict) -> Path:
    """Write ``folder/record.json`` atomically (the last write of a case); return its path."""
    path = Path(folder) / RECORD_NAME
    atomic_write(path, (json.dumps(record, indent=1, default=_jsonable) + "\n").encode())
    return path


def read_record(folder: str | os.PathLike) -> dict | None:
    """``folder/record.json`` as a dict, or None when it is missing or unreadable."""
    path = Path(folder) / RECORD_NAME
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def remove_record(folder: str | os.PathLike) -> None:
    """Remove ``folder/record.json`` (before a case is redone, so that a kill leaves it incomplete)."""
    try:
        (Path(folder) / RECORD_NAME).unlink()
    except FileNotFoundError:
        pass


def case_state(folder: str | os.PathLike, image: str, key: str) -> str:
    """``"complete"`` (for configuration ``key``), ``"other"`` (complete for another configuration or image)
    or ``"missing"`` (no usable record, or a listed file is gone)."""
    record = read_record(folder)
    if record is None or not all((Path(folder) / name).exists() for name in record.get("files", [])):
        return "missing"
    if record.get("configuration_hash") == key and record.get("image") == str(image):
        return "complete"
    return "other"
