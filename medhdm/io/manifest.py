"""Data manifests: MONAI datalist JSON files listing annotated cases.

Schema (documented in ``data_manifests/README.md``)::

    {
      "name": "lesionbench2d",                # optional
      "description": "...",                   # optional
      "classes": ["no lesion", "lesion"],     # optional, class index -> name
      "testing": [                            # the list key (default "testing"; also "training", "validation")
        {"id": "case000",                     # optional; default: the image's name
         "image": "case000/image.dcm",        # DICOM file, DICOM series folder, or NIfTI (required)
         "lesion": "case000/lesion.nii.gz",   # NIfTI label map, DICOM SEG or RTSTRUCT (optional)
         "label": 1,                          # the case's class label, an int (optional)
         "class_idx": 1}                      # the class to explain (optional; default: predicted)
      ]
    }

Paths are relative to the manifest's folder (absolute paths are allowed). The file is
read with ``monai.data.load_decathlon_datalist``; :func:`validate_manifest` checks it
first and reports every problem at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai.data import load_decathlon_datalist

from .cases import case_id, is_safe_case_id

__all__ = ["ENTRY_KEYS", "TOP_LEVEL_KEYS", "ManifestError", "load_manifest", "validate_manifest"]

ENTRY_KEYS = {"id", "image", "lesion", "label", "class_idx"}
TOP_LEVEL_KEYS = {
    "name",
    "description",
    "classes",
    "training",
    "validation",
    "testing",
    "reference",
    "licence",
    "license",
    "generator",
}


class ManifestError(ValueError):
    """A manifest with problems; ``problems`` lists them all."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{path}: {len(problems)} problem(s) in the manifest: " + "; ".join(problems))


def _entry_name(i: int, entry: object) -> str:
    if isinstance(entry, dict) and isinstance(entry.get("id"), str):
        return f"entry {i} ({entry['id']})"
    return f"entry {i}"


def validate_manifest(path: str | os.PathLike, data_list_key: str = "testing") -> list[str]:
    """Every problem of the manifest at ``path`` (an empty list when it is fine)."""
    path = Path(path)
    if path.is_dir():
        return [f"{path}: a folder, not a manifest file"]
    if not path.is_file():
        return [f"{path}: no such manifest file"]
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return [f"not valid JSON ({err})"]
    except RecursionError:
        return ["not a manifest: JSON nested too deeply"]
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        return [f"not valid JSON ({err})"]
    if not isinstance(data, dict):
        return ["the top level must be a JSON object"]
    problems = [
        f"unknown top-level key {k!r} (known: {', '.join(sorted(TOP_LEVEL_KEYS))})"
        for k in data
        if k not in TOP_LEVEL_KEYS
    ]
    classes = data.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        problems.append("'classes' must be a list of names")
    entries = data.get(data_list_key)
    if not isinstance(entries, list) or not entries:
        problems.append(f"'{data_list_key}' must be a non-empty list of cases")
        return problems
    base = path.parent
    ids: dict[str, int] = {}
    names: dict[str, int] = {}  # the case name (output folder) of each entry: its id, or its image's name
    for i, entry in enumerate(entries):
        name = _entry_name(i, entry)
        if not isinstance(entry, dict):
            problems.append(f"{name}: must be an object")
            continue
        problems += [
            f"{name}: unknown key {k!r} (known: {', '.join(sorted(ENTRY_KEYS))})" for k in entry if k not in ENTRY_KEYS
        ]
        if "image" not in entry:
            problems.append(f"{name}: 'image' is required")
        for key in ("image", "lesion"):
            if key in entry:
                value = entry[key]
                if not isinstance(value, str) or not value:
                    problems.append(f"{name}: '{key}' must be a path string")
                elif not (base / value).exists():
                    problems.append(f"{name}: {key} {value!r} does not exist (relative to {base})")
        for key in ("label", "class_idx"):
            if key in entry and (isinstance(entry[key], bool) or not isinstance(entry[key], int) or entry[key] < 0):
                problems.append(f"{name}: '{key}' must be a non-negative int, got {entry[key]!r}")
            elif key in entry and classes is not None and entry[key] >= len(classes):
                problems.append(f"{name}: '{key}' {entry[key]} is not a class index of 'classes' ({len(classes)})")
        if "id" in entry and not isinstance(entry["id"], str):
            problems.append(f"{name}: 'id' must be a string")
        elif "id" in entry:
            if not is_safe_case_id(entry["id"]):
                problems.append(
                    f"{name}: id {entry['id']!r} is not a plain name (letters, digits, '.', '_', '-', spaces; "
                    "no path separators, no leading dot): outputs are named after it"
                )
            if entry["id"] in ids:
                problems.append(f"{name}: id {entry['id']!r} repeats entry {ids[entry['id']]}")
            ids.setdefault(entry["id"], i)
        if isinstance(entry.get("id"), str):
            case = entry["id"]
        elif "id" not in entry and isinstance(entry.get("image"), str) and entry["image"]:
            case = case_id(entry["image"])
        else:
            continue
        if case in names and not (case in ids and ids[case] != i and "id" in entry):
            problems.append(
                f"{name}: its case name {case!r} is entry {names[case]}'s too (a case without 'id' is named "
                "after its image); give the entries distinct ids"
            )
        names.setdefault(case, i)
    return problems


def load_manifest(path: str | os.PathLike, data_list_key: str = "testing") -> list[dict]:
    """The manifest's cases with absolute paths and an ``id`` each.

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: ``path`` is a folder.
        ManifestError: listing every problem :func:`validate_manifest` found.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder; expected a manifest file (JSON)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest file")
    problems = validate_manifest(path, data_list_key)
    if problems:
        raise ManifestError(path, problems)
    entries = load_decathlon_datalist(path, is_segmentation=False, data_list_key=data_list_key)
    raw = json.loads(path.read_text())[data_list_key]

    for entry, original in zip(entries, raw):
        # MONAI turns any value naming an existing path into one (an id "case000" next to a
        # folder "case000"); ids are names, so they are taken from the file as written.
        entry["id"] = original["id"] if "id" in original else case_id(entry["image"])
    return entries
