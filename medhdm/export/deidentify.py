"""De-identification of the objects medhdm writes by DICOM PS3.15 Annex E's Basic
Application Level Confidentiality Profile, optionally with the Retain Longitudinal
Temporal Information (Full Dates) Option.

The profile's attribute table (PS3.15 Table E.1-1, "Basic Prof." column) is data here:
:data:`PROFILE` maps each attribute's tag to its action,

- ``X`` remove, ``Z`` empty (or a dummy value), ``D`` a dummy value, ``U`` a UID
  replaced consistently, ``K`` keep, and the table's compounds ``X/Z``, ``X/D``,
  ``Z/D``, ``X/Z/D``, ``X/Z/U*``: the first that the written object's IOD allows. They
  resolve to ``X`` unless the attribute is required at the top level of SC, Parametric
  Map or SEG (:data:`_REQUIRED`), and ``X/Z/U*`` (references to other instances) keeps
  the sequence with its UIDs replaced. One plain ``X`` is applied as ``Z`` for the same
  reason: Acquisition Context Sequence, Type 2 in the Parametric Map IOD, is kept with no
  items.

The table lists the rows that any object medhdm writes can carry (the patient, study,
series, equipment, clinical trial, acquisition context and reference modules that
highdicom copies from the source, and the derived objects' own attributes) and the
other identifying rows of the common patient/visit/procedure modules; it is not a copy
of all ~600 rows of E.1-1. To keep that from leaking, de-identification is stricter than
the profile in one respect: an attribute that is neither in :data:`PROFILE` nor in
:data:`RETAINED` (structural, non-identifying attributes of the three IODs) is removed,
and so are all private attributes. Every sequence is walked, at every depth.

Instance UIDs are replaced by a salted hash (:func:`remap_uid`), the Patient ID and the
clinical trial subject IDs by salted pseudonyms (:func:`pseudonym`): objects (or a
source study) de-identified with the same salt still reference each other. Each object
is checked against the table after processing (:func:`violations`), and only then
marked Patient Identity Removed ``YES`` with a De-identification Method Code Sequence
(113100, and 113106 with ``retain_dates``).

pydicom 3.0 and highdicom 0.28 ship the CID 7050 codes (``codes.DCM.BasicApplication
ConfidentialityProfile`` and the option codes, used here) but no attribute table or
de-identifier.
"""

from __future__ import annotations

import copy
import hashlib
import uuid

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import UID

__all__ = ["PROFILE", "RETAINED", "deidentify", "pseudonym", "remap_uid", "resolve_action", "violations"]

# PS3.15 Table E.1-1, Basic Profile column: keyword, action. Tags come from pydicom's dictionary.
_TABLE = """
AccessionNumber Z
AcquisitionComments X
AcquisitionContextSequence X
AcquisitionDate X/Z
AcquisitionDateTime X/Z/D
AcquisitionDeviceProcessingDescription X/D
AcquisitionProtocolDescription X
AcquisitionTime X/Z
AdditionalPatientHistory X
AdmissionID X
AdmittingDiagnosesCodeSequence X
AdmittingDiagnosesDescription X
Allergies X
AuthorObserverSequence X
BodyPartExamined X
BranchOfService X
CassetteID X
ClinicalTrialCoordinatingCenterName Z
ClinicalTrialProtocolEthicsCommitteeApprovalNumber X
ClinicalTrialProtocolEthicsCommitteeName D
ClinicalTrialProtocolID D
ClinicalTrialProtocolName Z
ClinicalTrialSeriesDescription X
ClinicalTrialSeriesID X
ClinicalTrialSiteID Z
ClinicalTrialSiteName Z
ClinicalTrialSponsorName D
ClinicalTrialSubjectID D
ClinicalTrialSubjectReadingID D
ClinicalTrialTimePointDescription X
ClinicalTrialTimePointID Z
CommentsOnThePerformedProcedureStep X
ConcatenationUID U
ConsultingPhysicianIdentificationSequence X
ConsultingPhysicianName Z
ContentCreatorIdentificationCodeSequence X
ContentCreatorName Z
ContentDate Z/D
ContentSequence X
ContentTime Z/D
ContrastBolusAgent Z/D
ContributionDateTime X/D
ContributionDescription X
CountryOfResidence X
CurrentPatientLocation X
CustodialOrganizationSequence X
DateOfLastCalibration X
DateOfSecondaryCapture X
DateTimeOfLastCalibration X
DerivationDescription X
DetectorID X/D
DeviceSerialNumber X/Z/D
DeviceUID U
DigitalSignaturesSequence X
DimensionOrganizationUID U
EthnicGroup X
FailedSOPInstanceUIDList U
FillerOrderNumberImagingServiceRequest Z
FrameAcquisitionDateTime X/D
FrameOfReferenceUID U
FrameReferenceDateTime X/D
GantryID X
GeneratorID X
IdentifyingComments X
ImageComments X
ImagePresentationComments X
ImagingServiceRequestComments X
InstanceCoercionDateTime X
InstanceCreationDate X/D
InstanceCreationTime X/Z/D
InstanceCreatorUID U
InstitutionAddress X
InstitutionCodeSequence X/Z/D
InstitutionName X/Z/D
InstitutionalDepartmentName X
InstitutionalDepartmentTypeCodeSequence X
InsurancePlanIdentification X
IrradiationEventUID U
IssuerOfAdmissionID X
IssuerOfPatientID X
LargePaletteColorLookupTableUID U
LastMenstrualDate X
MACParametersSequence X
MediaStorageSOPInstanceUID U
MedicalAlerts X
MedicalRecordLocator X
MilitaryRank X
NameOfPhysiciansReadingStudy X
Occupation X
OperatorIdentificationSequence X/D
OperatorsName X/Z/D
OriginalAttributesSequence X
OtherPatientIDs X
OtherPatientIDsSequence X
OtherPatientNames X
OverlayDate X
OverlayTime X
PaletteColorLookupTableUID U
PatientAddress X
PatientAge X
PatientBirthDate Z
PatientBirthName X
PatientBirthTime X
PatientComments X
PatientID Z
PatientInstitutionResidence X
PatientInsurancePlanCodeSequence X
PatientMotherBirthName X
PatientName Z
PatientPrimaryLanguageCodeSequence X
PatientPrimaryLanguageModifierCodeSequence X
PatientReligiousPreference X
PatientSex Z
PatientSexNeutered X/Z
PatientSize X
PatientState X
PatientTelecomInformation X
PatientTelephoneNumbers X
PatientWeight X
PerformedLocation X
PerformedProcedureStepDescription X
PerformedProcedureStepEndDate X
PerformedProcedureStepEndTime X
PerformedProcedureStepID X
PerformedProcedureStepStartDate X
PerformedProcedureStepStartTime X
PerformedStationAETitle X
PerformedStationName X
PerformingPhysicianIdentificationSequence X
PerformingPhysicianName X
PhysiciansOfRecord X
PhysiciansOfRecordIdentificationSequence X
PhysiciansReadingStudyIdentificationSequence X
PlacerOrderNumberImagingServiceRequest Z
PlateID X
PregnancyStatus X
ProtocolName X/D
ReasonForStudy X
ReferencedDigitalSignatureSequence X
ReferencedFrameOfReferenceUID U
ReferencedImageSequence X/Z/U*
ReferencedPatientPhotoSequence X
ReferencedPatientSequence X
ReferencedPerformedProcedureStepSequence X/Z/D
ReferencedSOPInstanceMACSequence X
ReferencedSOPInstanceUID U
ReferencedStudySequence X/Z
ReferringPhysicianAddress X
ReferringPhysicianIdentificationSequence X
ReferringPhysicianName Z
ReferringPhysicianTelephoneNumbers X
RegionOfResidence X
RelatedFrameOfReferenceUID U
RequestAttributesSequence X
RequestedContrastAgent X
RequestedProcedureComments X
RequestedProcedureDescription X/Z
RequestedProcedureID X
RequestingPhysician X
RequestingService X
ResponsibleOrganization X
ResponsiblePerson X
SOPInstanceUID U
ScheduledStudyLocation X
ScheduledStudyLocationAETitle X
SeriesDate X/D
SeriesDescription X
SeriesInstanceUID U
SeriesTime X/D
SmokingStatus X
SourceImageSequence X/Z/U*
StationName X/Z/D
StorageMediaFileSetUID U
StudyComments X
StudyDate Z
StudyDescription X
StudyID Z
StudyIDIssuer X
StudyInstanceUID U
StudyTime Z
SynchronizationFrameOfReferenceUID U
TemplateExtensionCreatorUID U
TemplateExtensionOrganizationUID U
TimeOfLastCalibration X
TimeOfSecondaryCapture X
TimezoneOffsetFromUTC X
TrackingUID U
TransactionUID U
UID U
VerifyingObserverIdentificationCodeSequence Z
VerifyingObserverName D
VerifyingObserverSequence D
VerifyingOrganization X
VisitComments X
"""

ACTIONS = ("X", "Z", "D", "U", "K", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*")


def _parse_table(text: str) -> dict[int, tuple[str, str]]:
    table = {}
    for line in text.strip().splitlines():
        keyword, action = line.split()
        tag = tag_for_keyword(keyword)
        if tag is None or action not in ACTIONS:
            raise RuntimeError(f"deidentify profile table: bad row {line!r}")
        table[int(tag)] = (keyword, action)
    return table


#: tag -> (keyword, action): PS3.15 Table E.1-1, Basic Application Level Confidentiality Profile.
PROFILE: dict[int, tuple[str, str]] = _parse_table(_TABLE)

# With the Retain Longitudinal Temporal Information Full Dates Option, these are kept (K):
# the dates, times and date-times of the table, except those that describe the patient.
_NOT_LONGITUDINAL = {"PatientBirthDate", "PatientBirthTime", "LastMenstrualDate"}
RETAINED_WITH_DATES: frozenset[int] = frozenset(
    tag
    for tag, (keyword, _) in PROFILE.items()
    if dictionary_VR(tag) in ("DA", "TM", "DT") and keyword not in _NOT_LONGITUDINAL
)

# Attributes that the SC, Parametric Map and SEG IODs require at the top level (Type 1 -> D,
# Type 2 -> Z), where the table gives a compound action.
_REQUIRED = {
    "ContentDate": "D",
    "ContentTime": "D",  # Type 1 in PM/SEG (Multi-frame Functional Groups)
    "DeviceSerialNumber": "D",  # Type 1 in Enhanced General Equipment (PM, SEG)
    "ReferencedImageSequence": "U*",
    "SourceImageSequence": "U*",
    # X in the table, but Type 2 in the Parametric Map IOD: present with no items, as the
    # profile's conformance rule asks (an attribute the IOD requires is emptied, not removed).
    "AcquisitionContextSequence": "Z",
}

#: Keywords kept as they are (K): structural, coded or medhdm-made attributes of the SC, PM and
#: SEG IODs and their sequences that identify no one. Anything else outside PROFILE is removed.
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
    "CS": "ANONYMIZED",
    "AS": "000Y",
    "DS": "0",
    "IS": "0",
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


def resolve_action(tag: int, depth: int, retain_dates: bool = False) -> str | None:
    """The action for ``tag`` at nesting ``depth`` (0: top level): one of X, Z, D, U, U*
    (keep the sequence, replace the UIDs in it), K; ``None`` if the table has no row."""
    if int(tag) not in PROFILE:
        return None
    keyword, action = PROFILE[int(tag)]
    if retain_dates and int(tag) in RETAINED_WITH_DATES:
        return "K"
    if depth == 0 and keyword in _REQUIRED:
        return _REQUIRED[keyword]
    if "/" not in action:
        return action
    if action == "X/Z/U*" and keyword in _REQUIRED:
        return "U*"
    return "X"


def _dummy(elem, salt: str, original):
    if elem.VR == "SQ":
        return DicomSequence([])
    if elem.keyword in _PSEUDONYMISED:
        return pseudonym(str(original), salt) if original not in (None, "") else ""
    return _DUMMY.get(elem.VR, None)


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


def violations(ds: Dataset, original: Dataset | None = None, retain_dates: bool = False) -> list[str]:
    """Every element of ``ds`` (recursively, into every sequence item) that breaks the profile.

    An element must have a row in :data:`PROFILE` or be in :data:`RETAINED`; with its row's
    action: X absent, Z empty or a replacement, D a dummy (not the original value), U a
    UID other than the original's. ``original`` (the dataset before de-identification)
    gives the values that must not survive; without it only presence is checked.
    """
    found = []
    originals = _values_by_tag(original) if original is not None else {}

    def walk(item: Dataset, depth: int, where: str) -> None:
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


# The table's rows are unique tags, and its compounds resolve to a single action.
assert all(Tag(t) for t in PROFILE)
