"""De-identification of derived objects for sharing (a subset of the DICOM Basic Profile).

PS3.15 Annex E's Basic Application Level Confidentiality Profile, as far as the objects
medhdm writes carry identifying attributes: names and the patient's other identifying
attributes are emptied or removed, the Patient ID is replaced by a pseudonym, dates
and times are replaced by dummy values, institution/operator/device identifiers are
removed, private tags are removed, and every instance UID (study, series, SOP instance,
frame of reference, and the references to source images) is remapped consistently: the
same original UID and the same ``salt`` always give the same new UID, so objects
de-identified together (or the source study, de-identified with the same salt) still
reference each other. pydicom and highdicom do not ship a de-identifier, hence this
module; dedicated tools (for example ``deid`` or ``dicom-anonymizer``) cover the whole
profile and its options.
"""

from __future__ import annotations

import copy
import hashlib
import uuid

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID

__all__ = ["deidentify", "pseudonym", "remap_uid"]

# Emptied (kept as present-but-empty, so Type 2 attributes stay valid).
_EMPTY = {
    "PatientName", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge", "PatientWeight",
    "PatientSize", "ReferringPhysicianName", "AccessionNumber", "StudyID", "StudyDescription",
    "PhysiciansOfRecord", "OperatorsName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
    "ContentCreatorName", "ClinicalTrialSubjectID",
}
# Removed altogether.
_REMOVE = {
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientAddress", "PatientTelephoneNumbers",
    "PatientMotherBirthName", "MilitaryRank", "EthnicGroup", "Occupation", "AdditionalPatientHistory",
    "PatientComments", "MedicalRecordLocator", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "StationName", "RequestingPhysician", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "IssuerOfPatientID", "PatientBirthName", "ResponsiblePerson",
    "AdmittingDiagnosesDescription", "RequestAttributesSequence", "ReferencedPatientSequence",
    "ReferencedStudySequence", "ProcedureCodeSequence", "ImageComments", "PerformedProcedureStepID",
    "PerformedProcedureStepDescription", "ScheduledProcedureStepDescription", "RequestedProcedureDescription",
}
_DUMMY_DATE, _DUMMY_TIME, _DUMMY_DATETIME = "19000101", "000000", "19000101000000"


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


def _walk(ds: Dataset, salt: str) -> None:
    for keyword in _REMOVE:
        if keyword in ds:
            delattr(ds, keyword)
    for elem in list(ds):
        if elem.tag.is_private:
            del ds[elem.tag]
            continue
        if elem.VR == "SQ":
            for item in elem.value:
                _walk(item, salt)
        elif elem.keyword in _EMPTY:
            elem.value = None
        elif elem.VR == "UI" and elem.value and elem.keyword not in ("ImplementationClassUID",):
            values = elem.value if elem.VM > 1 else [elem.value]
            mapped = [v if _is_well_known(v) else remap_uid(v, salt) for v in values]
            elem.value = mapped if elem.VM > 1 else mapped[0]
        elif elem.VR == "DA" and elem.value:
            elem.value = _DUMMY_DATE
        elif elem.VR == "TM" and elem.value:
            elem.value = _DUMMY_TIME
        elif elem.VR == "DT" and elem.value:
            elem.value = _DUMMY_DATETIME
        elif elem.VR == "PN" and elem.value:
            elem.value = None


def deidentify(ds: Dataset, salt: str, retain_dates: bool = False) -> Dataset:
    """A de-identified deep copy of ``ds`` (``ds`` itself is left as it is).

    A copy, because derived objects may share elements with the source datasets they
    were built from (highdicom copies some by reference).

    Args:
        ds: a dataset (a derived object medhdm wrote, or a source image).
        salt: a secret kept by whoever de-identifies; the same salt maps the same UIDs
            and Patient ID to the same replacements.
    """
    if not salt:
        raise ValueError("salt: a non-empty secret is needed for consistent UID remapping")
    ds = copy.deepcopy(ds)
    patient_id = str(ds.get("PatientID", ""))
    _walk(ds, salt)
    if "PatientID" in ds:
        ds.PatientID = pseudonym(patient_id, salt)
    if hasattr(ds, "file_meta") and "MediaStorageSOPInstanceUID" in ds.file_meta and "SOPInstanceUID" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "medhdm: DICOM Basic Profile subset, UIDs remapped with a salt"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = DicomSequence([code])
    return ds
