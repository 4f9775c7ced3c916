"""Case ids: the names under which a study's outputs are written."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["case_id", "is_safe_case_id", "unique_case_ids"]

_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._ -]{0,199}")


def is_safe_case_id(name: object) -> bool:
    """Whether ``name`` can name output files as it is: letters, digits, ``.``, ``_``, ``-``, spaces; no leading dot."""
    return isinstance(name, str) and _SAFE_ID.fullmatch(name) is not None


def case_id(path: str | os.PathLike) -> str:
    """A name for outputs: the folder or file name without ``.nii.gz``/``.nii``/``.dcm``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def unique_case_ids(paths: list[str | os.PathLike]) -> list[str]:
    """:func:`case_id` of each path, prefixed by parent folder names where names repeat.

    ``[a/case1/image.dcm, a/case2/image.dcm]`` -> ``["case1_image", "case2_image"]``.
    """
    paths = [Path(p).resolve() for p in paths]
    depth = 0
    while True:
        ids = ["_".join([*(p.parts[-1 - depth : -1] if depth else ()), case_id(p)]) for p in paths]
        if len(set(ids)) == len(ids) or depth >= max(len(p.parts) for p in paths):
            break
        depth += 1
    if len(set(ids)) != len(ids):
        raise ValueError("the same image is given twice: " + ", ".join(sorted({i for i in ids if ids.count(i) > 1})))
    return ids
