"""De-identification of the objects medhdm writes by DICOM PS3.15 Annex E's Basic
Application Level Confidentiality Profile, optionally with the Retain Longitudinal
Temporal Information with Full Dates Option.

The profile's attribute table, PS3.15 Table E.1-1, is data here: :data:`TABLE` holds its
655 rows as ``ps315_table_e1_1.csv`` (beside this module) gives them, with the "Basic Prof."
column of PS3.15 2026c and the "Rtn. Long. Full Dates Opt." column of PS3.15 2025b, generated
by :mod:`medhdm.export.generate_ps315_table` from the machine-readable copies in two PyPI
packages (:data:`TABLE_HEADER` names them, their licences and checksums). The Basic Profile's
actions are applied as

- ``X`` removed; ``Z`` emptied (a sequence: no items; the Patient ID and clinical trial
  subject IDs: a salted pseudonym); ``D`` a dummy value of the VR (a pseudonym for those
  IDs, a remapped UID for a UI; a sequence is emptied); ``U`` the UID replaced consistently;
- the compounds ``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*`` ("the first that the IOD
  allows"): their first alternative (``X``; ``Z`` for ``Z/D``), unless the attribute is
  required at the top level of SC, Parametric Map or SEG (:data:`_REQUIRED`: a Type 1
  attribute gets ``D``, a Type 2 one ``Z``, and the references of ``X/Z/U*`` are kept with
  their UIDs replaced, ``U*``);
- with ``retain_dates``, the option's ``K``: the rows it keeps (dates, times, date-times,
  Timezone Offset From UTC; not Patient's Birth Date and Time) are kept as they are.

The table has no row that medhdm does not handle, and nothing outside it leaks: an
attribute that is neither in the table nor in :data:`RETAINED` (structural, non-identifying
attributes of the written IODs) is removed, and so are all private attributes (the table's
row "Private Attributes", X). Every sequence is walked, at every depth. A Type 1C attribute
whose condition is the presence of an attribute the profile removes (:data:`PRESENT_ONLY_WITH`)
is removed as well, so the object still conforms to its IOD.

Instance UIDs are replaced by a salted hash (:func:`remap_uid`), the Patient ID and the
clinical trial subject IDs by salted pseudonyms (:func:`pseudonym`): objects (or a
source study) de-identified with the same salt still reference each other. Each object
is checked against the table after processing (:func:`violations`), and only then
marked Patient Identity Removed ``YES`` with a De-identification Method Code Sequence
(113100, and 113106 with ``retain_dates``).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import re
import uuid
from dataclasses import dataclass
from importlib import resources

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import UID

__all__ = [
    "PRESENT_ONLY_WITH",
    "PROFILE",
    "RETAINED",
    "RETAINED_WITH_DATES",
    "TABLE",
    "TABLE_HEADER",
    "TableRow",
    "deidentify",
    "load_table",
    "pseudonym",
    "remap_uid",
    "resolve_action",
    "table_row",
    "violations",
]

TABLE_FILE = "ps315_table_e1_1.csv"

#: The Basic Profile column's action codes: single, and the table's compounds.
ACTIONS = ("X", "Z", "D", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*")


@dataclass(frozen=True)
class TableRow:
    """One row of PS3.15 Table E.1-1 as :data:`TABLE` holds it."""

    tag: str  #: the standard's notation: ``(0008,0050)``, or ``(60xx,3000)`` for a repeating group
    name: str  #: the attribute's name in the table
    vr: str  #: its value representation ("" where neither pydicom nor the source knows it)
    basic: str  #: the Basic Profile action, one of :data:`ACTIONS`
    retain_full_dates: str  #: ``"K"`` where the Retain Longitudinal Temporal Information Full Dates Option keeps it


def load_table(text: str | None = None) -> tuple[tuple[str, ...], tuple[TableRow, ...]]:
    """The header lines (source, edition, licence, checksums) and the rows of ``ps315_table_e1_1.csv``.

    Args:
        text: the file's text; default the copy shipped beside this module.

    Raises:
        RuntimeError: a row with an unknown action or a malformed tag.
    """
    if text is None:
        text = resources.files(__package__).joinpath(TABLE_FILE).read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    header = tuple(line.rstrip("\n") for line in lines if line.startswith("#"))
    rows = []
    for row in csv.DictReader(line for line in lines if not line.startswith("#")):
        item = TableRow(row["tag"], row["name"], row["vr"], row["basic"], row["retain_full_dates"])
        if (
            item.basic not in ACTIONS
            or item.retain_full_dates not in ("", "K")
            or not re.fullmatch(r"\([0-9A-Fx]{4},[0-9A-Fx]{4}\)", item.tag)
        ):
            raise RuntimeError(f"{TABLE_FILE}: bad row {row}")
        rows.append(item)
    return header, tuple(rows)


#: PS3.15 Table E.1-1 (source and edition in :data:`TABLE_HEADER`), one :class:`TableRow` per row.
TABLE_HEADER, TABLE = load_table()


def _tag_and_mask(pattern: str) -> tuple[int, int]:
    """``(60xx,3000)`` -> (0x60003000, 0xFF00FFFF): an ``x`` digit matches any digit."""
    digits = pattern[1:5] + pattern[6:10]
    value = int(digits.replace("x", "0"), 16)
    mask = int("".join("0" if d == "x" else "F" for d in digits), 16)
    return value, mask


def _profile() -> tuple[dict[int, tuple[str, str]], tuple[tuple[int, int, str, str], ...], frozenset[int]]:
    exact: dict[int, tuple[str, str]] = {}
    repeating = []
    dates = set()
    for row in TABLE:
        value, mask = _tag_and_mask(row.tag)
        if mask != 0xFFFFFFFF:
            repeating.append((value, mask, row.name, row.basic))
            continue
        exact[value] = (keyword_for_tag(value) or "", row.basic)
        if row.retain_full_dates == "K":
            dates.add(value)
    return exact, tuple(repeating), frozenset(dates)


#: tag -> (keyword, Basic Profile action) for every row of :data:`TABLE` with a single tag
#: (keyword "" for a tag newer than pydicom's dictionary).
PROFILE: dict[int, tuple[str, str]]
# (value, mask, name, action): the rows of repeating groups, (50xx,xxxx) Curve Data, (60xx,3000), (60xx,4000)
_REPEATING: tuple[tuple[int, int, str, str], ...]
#: The tags the Retain Longitudinal Temporal Information Full Dates Option keeps (K in its column).
RETAINED_WITH_DATES: frozenset[int]
PROFILE, _REPEATING, RETAINED_WITH_DATES = _profile()

# Attributes that the SC, Parametric Map and SEG IODs require at the top level, where the table
# gives a compound action: the alternative the IOD needs (Type 1 -> D, Type 2 -> Z; references
# that are kept -> U*, the sequence with its UIDs replaced).
_REQUIRED = {
    "ContentDate": "D",  # Z/D; Type 1 in PM/SEG (Multi-frame Functional Groups)
    "ContentTime": "D",  # Z/D
    "DeviceSerialNumber": "D",  # X/Z/D; Type 1 in Enhanced General Equipment (PM, SEG)
    "ReferencedImageSequence": "U*",  # X/Z/U*
    "SourceImageSequence": "U*",  # X/Z/U*
    "AcquisitionContextSequence": "Z",  # X/Z; Type 2 in the Parametric Map IOD: present with no items
}

#: Type 1C attributes (PS3.3) whose condition is that another attribute is present, and that may
#: not be present otherwise: keyword -> that other attribute. Where the profile removes the other
#: attribute (X), the condition no longer holds and the object would not conform to its IOD with
#: the dependent one kept as a dummy, so it is removed too (the profile's rule that the
#: de-identified object stays valid, PS3.15 E.1). Clinical Trial Subject Module (C.7.1.3): the
#: Ethics Committee Name (D) is required if, and only if, the Approval Number (X) is present.
PRESENT_ONLY_WITH: dict[str, str] = {
    "ClinicalTrialProtocolEthicsCommitteeName": "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
}

#: Keywords kept as they are (K): structural, coded or medhdm-made attributes of the SC, PM and
#: SEG IODs and their sequences that identify no one. Anything else outside TABLE is removed.
RETAINED: frozenset[str] = frozenset(
    [
        "AlgorithmFamilyCodeSequence",
        "AlgorithmName",
        "AlgorithmVersion",
        "AnatomicRegionSequence",
        "BitsAllocated",
        "BitsStored",
        "BurnedInAnnotation",
        "CodeMeaning",
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "Columns",
        "ConceptCodeSequence",
        "ConceptNameCodeSequence",
        "ContentDescription",
        "ContentLabel",
        "ContentQualification",
        "ContributingEquipmentSequence",
        "ConversionType",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "DerivationCodeSequence",
        "DerivationImageSequence",
        "DimensionDescriptionLabel",
        "DimensionIndexPointer",
        "DimensionIndexSequence",
        "DimensionIndexValues",
        "DimensionOrganizationSequence",
        "DimensionOrganizationType",
        "DoubleFloatPixelData",
        "DoubleFloatRealWorldValueFirstValueMapped",
        "DoubleFloatRealWorldValueLastValueMapped",
        "FloatPixelData",
        "FrameContentSequence",
        "FrameType",
        "FrameVOILUTSequence",
        "FunctionalGroupPointer",
        "HighBit",
        "ImageOrientationPatient",
        "ImagePositionPatient",
        "ImageType",
        "InStackPositionNumber",
        "InstanceNumber",
        "LUTExplanation",
        "LUTLabel",
        "Laterality",
        "LongitudinalTemporalInformationModified",
        "LossyImageCompression",
        "LossyImageCompressionMethod",
        "LossyImageCompressionRatio",
        "Manufacturer",
        "ManufacturerModelName",
        "MaximumFractionalValue",
        "MeasurementUnitsCodeSequence",
        "Modality",
        "NumberOfFrames",
        "ParametricMapFrameTypeSequence",
        "PatientIdentityRemoved",
        "PatientOrientation",
        "PhotometricInterpretation",
        "PixelData",
        "PixelMeasuresSequence",
        "PixelPresentation",
        "PixelRepresentation",
        "PixelSpacing",
        "PixelValueTransformationSequence",
        "PlanarConfiguration",
        "PlaneOrientationSequence",
        "PlanePositionSequence",
        "PositionReferenceIndicator",
        "PresentationLUTShape",
        "PurposeOfReferenceCodeSequence",
        "QuantityDefinitionSequence",
        "RealWorldValueFirstValueMapped",
        "RealWorldValueIntercept",
        "RealWorldValueLastValueMapped",
        "RealWorldValueMappingSequence",
        "RealWorldValueSlope",
        "RecognizableVisualFeatures",
        "ReferencedFrameNumber",
        "ReferencedInstanceSequence",
        "ReferencedSOPClassUID",
        "ReferencedSegmentNumber",
        "ReferencedSeriesSequence",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
        "Rows",
        "SOPClassUID",
        "SamplesPerPixel",
        "SegmentAlgorithmName",
        "SegmentAlgorithmType",
        "SegmentDescription",
        "SegmentIdentificationSequence",
        "SegmentLabel",
        "SegmentNumber",
        "SegmentSequence",
        "SegmentationAlgorithmIdentificationSequence",
        "SegmentationFractionalType",
        "SegmentationType",
        "SegmentedPropertyCategoryCodeSequence",
        "SegmentedPropertyTypeCodeSequence",
        "SegmentedPropertyTypeModifierCodeSequence",
        "SegmentsOverlap",
        "SeriesNumber",
        "SharedFunctionalGroupsSequence",
        "PerFrameFunctionalGroupsSequence",
        "SliceThickness",
        "SoftwareVersions",
        "SpacingBetweenSlices",
        "SpatialLocationsPreserved",
        "SpecificCharacterSet",
        "StackID",
        "TemporalPositionIndex",
        "ValueType",
        "WindowCenter",
        "WindowCenterWidthExplanation",
        "WindowWidth",
        "ContextGroupExtensionFlag",
        "ContextIdentifier",
        "ContextUID",
        "MappingResource",
        "MappingResourceName",
        "LongCodeValue",
        "URNCodeValue",
        "FileMetaInformationVersion",
        "MediaStorageSOPClassUID",
        "TransferSyntaxUID",
        "ImplementationClassUID",
        "ImplementationVersionName",
        "FileMetaInformationGroupLength",
        "SourceApplicationEntityTitle",
    ]
)

_DUMMY = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "PN": "ANONYMOUS",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "CS": "ANONYMIZED",
    "AE": "ANONYMOUS",
    "UR": "urn:oid:2.25.0",
    "AS": "000Y",
    "DS": "0",
    "IS": "0",
    "OB": b"\x00\x00",
    "UN": b"\x00\x00",
}
_PSEUDONYMISED = {"PatientID", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID"}


def remap_uid(uid: str, salt: str) -> str:
    """The replacement of an instance UID: a deterministic ``2.25.`` UID from ``salt`` and ``uid``.

    The salted SHA-256 of the UID, cut to a 128-bit name-based UUID (PS3.5 B.2).
    """
    digest = hashlib.sha256(f"{salt}|{uid}".encode()).digest()[:16]
    return f"2.25.{uuid.UUID(bytes=digest, version=5).int}"


def pseudonym(patient_id: str, salt: str) -> str:
    """A stable replacement Patient ID (16 hex digits of a salted SHA-256)."""
    return "ANON-" + hashlib.sha256(f"{salt}|{patient_id}".encode()).hexdigest()[:16].upper()


def _is_well_known(uid: str) -> bool:
    """SOP classes, transfer syntaxes, coding schemes: UIDs that identify no one."""
    return UID(uid).name != str(uid)


def table_row(tag: int) -> tuple[str, str] | None:
    """(keyword, Basic Profile action) of ``tag``'s row in :data:`TABLE` (a repeating group's row
    gives its name as keyword); ``None`` if the table has no row for it."""
    tag = int(tag)
    if tag in PROFILE:
        return PROFILE[tag]
    for value, mask, name, action in _REPEATING:
        if tag & mask == value:
            return name, action
    return None


def resolve_action(tag: int, depth: int, retain_dates: bool = False) -> str | None:
    """The action for ``tag`` at nesting ``depth`` (0: top level): one of X, Z, D, U, U*
    (keep the sequence, replace the UIDs in it), K; ``None`` if the table has no row.

    ``retain_dates``: the option's K first. Then the table's action; a compound (the first of
    its alternatives that the IOD allows) resolves to the alternative the IOD needs where
    :data:`_REQUIRED` names one, otherwise to its first: X, and Z for Z/D.
    """
    row = table_row(tag)
    if row is None:
        return None
    keyword, action = row
    if retain_dates and int(tag) in RETAINED_WITH_DATES:
        return "K"
    if depth == 0 and keyword in _REQUIRED:
        return _REQUIRED[keyword]
    if "/" not in action:
        return action
    if action == "X/Z/U*" and keyword in _REQUIRED:
        return "U*"
    return action.split("/")[0]


def _dummy(elem, salt: str, original):
    """A D action's replacement: a dummy value of the element's VR (a pseudonym for the IDs of
    :data:`_PSEUDONYMISED`, a remapped UID for a UI); a sequence is emptied."""
    if elem.VR == "SQ":
        return DicomSequence([])
    if elem.keyword in _PSEUDONYMISED:
        return pseudonym(str(original), salt) if original not in (None, "") else ""
    if elem.VR == "UI":
        values = list(original) if elem.VM > 1 else [original]
        mapped = [remap_uid(str(v), salt) for v in values]
        return mapped if elem.VM > 1 else mapped[0]
    return _DUMMY.get(elem.VR, None)


def _unsatisfied(ds: Dataset) -> list[str]:
    """Keywords of :data:`PRESENT_ONLY_WITH` present in ``ds`` without the attribute their condition needs."""
    return [keyword for keyword, needed in PRESENT_ONLY_WITH.items() if keyword in ds and needed not in ds]


def _walk(ds: Dataset, salt: str, retain_dates: bool, depth: int) -> None:
    for elem in list(ds):
        tag = elem.tag
        if tag.is_private:
            del ds[tag]
            continue
        action = resolve_action(tag, depth, retain_dates)
        if action is None:
            if elem.keyword not in RETAINED:
                del ds[tag]  # not in the table and not known to be harmless: removed
                continue
            action = "K"
        if action == "X":
            del ds[tag]
        elif action == "Z":
            if elem.keyword in _PSEUDONYMISED and elem.value not in (None, ""):
                elem.value = pseudonym(str(elem.value), salt)
            else:
                elem.value = DicomSequence([]) if elem.VR == "SQ" else None
        elif action == "D":
            elem.value = _dummy(elem, salt, elem.value) if elem.value not in (None, "") or elem.VR == "SQ" else None
        elif action == "U":
            if elem.VR == "UI" and elem.value:
                values = list(elem.value) if elem.VM > 1 else [elem.value]
                mapped = [v if _is_well_known(v) else remap_uid(v, salt) for v in values]
                elem.value = mapped if elem.VM > 1 else mapped[0]
        elif elem.VR == "SQ":  # K or U*: keep, and walk the items
            for item in elem.value:
                _walk(item, salt, retain_dates, depth + 1)
        elif elem.VR == "UI" and elem.value and action == "K" and tag.group != 0x0002:
            values = list(elem.value) if elem.VM > 1 else [elem.value]
            if not all(_is_well_known(v) for v in values):  # an instance UID the table misses: replaced
                mapped = [v if _is_well_known(v) else remap_uid(v, salt) for v in values]
                elem.value = mapped if elem.VM > 1 else mapped[0]
    for keyword in _unsatisfied(ds):  # a Type 1C whose condition the profile's removals made false
        del ds[keyword]


def violations(ds: Dataset, original: Dataset | None = None, retain_dates: bool = False) -> list[str]:
    """Every element of ``ds`` (recursively, into every sequence item) that breaks the profile.

    An element must have a row in :data:`TABLE` or be in :data:`RETAINED`; with its row's
    action: X absent, Z empty or a replacement, D a dummy (not the original value), U a
    UID other than the original's; and no attribute of :data:`PRESENT_ONLY_WITH` may be present
    without the one its condition needs. ``original`` (the dataset before de-identification)
    gives the values that must not survive; without it only presence is checked.
    """
    found = []
    originals = _values_by_tag(original) if original is not None else {}

    def walk(item: Dataset, depth: int, where: str) -> None:
        for keyword in _unsatisfied(item):
            found.append(f"{where}{keyword}: present without {PRESENT_ONLY_WITH[keyword]}, which its condition needs")
        for elem in item:
            name = f"{where}{elem.keyword or elem.tag}"
            if elem.tag.is_private:
                found.append(f"{name}: private attribute")
                continue
            action = resolve_action(elem.tag, depth, retain_dates)
            if action is None:
                if elem.keyword not in RETAINED:
                    found.append(f"{name}: neither in the profile's table nor retained")
                action = "K"
            before = originals.get(int(elem.tag), set())
            value = _text(elem)
            if action == "X":
                found.append(f"{name}: present, the profile removes it")
            elif action in ("Z", "D") and elem.VR != "SQ" and value and value in before:
                found.append(f"{name}: keeps its original value, the profile replaces it")
            elif action in ("Z", "D") and elem.VR == "SQ" and len(elem.value):
                found.append(f"{name}: a sequence with items, the profile empties it")
            elif action == "U" and value and value in before and not all(_is_well_known(v) for v in value.split("\\")):
                found.append(f"{name}: keeps its original UID")
            if elem.VR == "SQ" and action in ("K", "U*"):
                for k, sub in enumerate(elem.value):
                    walk(sub, depth + 1, f"{name}[{k}].")

    walk(ds, 0, "")
    if hasattr(ds, "file_meta"):
        walk(ds.file_meta, 0, "file_meta.")
    return found


def _text(elem) -> str:
    if elem.VR == "SQ" or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        return ""
    if elem.VM > 1:
        return "\\".join(str(v) for v in value)
    return str(value)


def _values_by_tag(ds: Dataset) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for elem in ds.iterall():
        text = _text(elem)
        if text:
            out.setdefault(int(elem.tag), set()).add(text)
    return out


def deidentify(ds: Dataset, salt: str, retain_dates: bool = False) -> Dataset:
    """A de-identified deep copy of ``ds`` by the Basic Profile (``ds`` itself is left as it is).

    A copy, because derived objects may share elements with the source datasets they
    were built from (highdicom copies some by reference).

    Args:
        ds: a dataset (a derived object medhdm wrote, or a source image).
        salt: a secret kept by whoever de-identifies; the same salt maps the same UIDs
            and Patient ID to the same replacements.
        retain_dates: the Retain Longitudinal Temporal Information Full Dates Option:
            dates and times (not the birth date) are kept.

    Raises:
        ValueError: an empty salt.
        RuntimeError: the result still breaks the profile (then nothing should be written).
    """
    if not salt or not str(salt).strip():
        raise ValueError("salt: a non-empty secret is needed for consistent UID remapping")
    original = ds
    ds = copy.deepcopy(ds)
    _walk(ds, salt, retain_dates, 0)
    if hasattr(ds, "file_meta"):
        _walk(ds.file_meta, salt, retain_dates, 0)
        if "SOPInstanceUID" in ds:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.LongitudinalTemporalInformationModified = "UNMODIFIED" if retain_dates else "REMOVED"
    ds.DeidentificationMethod = (
        "DICOM PS3.15 E Basic Application Level Confidentiality Profile"
        + (", Retain Longitudinal Temporal Information Full Dates Option" if retain_dates else "")
        + "; UIDs and IDs replaced with a salted hash (medhdm)"
    )[:64]
    methods = [codes.DCM.BasicApplicationConfidentialityProfile]
    if retain_dates:
        methods.append(codes.DCM.RetainLongitudinalTemporalInformationFullDatesOption)
    items = []
    for code in methods:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = DicomSequence(items)
    problems = violations(ds, original, retain_dates)
    if problems:
        raise RuntimeError("de-identification left attributes the profile does not allow: " + "; ".join(problems[:5]))
    ds.PatientIdentityRemoved = "YES"  # only once the whole object was checked against the table
    return ds


# Each override of _REQUIRED is one of its row's alternatives (U* standing for X/Z/U*'s U*).
assert all(
    PROFILE[tag_for_keyword(k)][1] == "X/Z/U*" if a == "U*" else a in PROFILE[tag_for_keyword(k)][1].split("/")
    for k, a in _REQUIRED.items()
), "deidentify: an IOD override that its table row does not allow"
