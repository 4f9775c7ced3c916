"""What a ``pacs`` run is asked for: the studies (``--study``, ``--query``) and the results to push (``--push``)."""

from __future__ import annotations

from collections.abc import Sequence

from ..export import DICOM_FORMATS, check_formats
from .uids import check_uid

__all__ = ["QUERY_KEYS", "parse_formats", "parse_query", "parse_study_uids"]

#: study-level query keys users may give, and the attribute each searches
QUERY_KEYS = {
    "Modality": "ModalitiesInStudy",
    "ModalitiesInStudy": "ModalitiesInStudy",
    "StudyDate": "StudyDate",
    "AccessionNumber": "AccessionNumber",
    "PatientID": "PatientID",
    "StudyInstanceUID": "StudyInstanceUID",
    "StudyDescription": "StudyDescription",
}


def parse_formats(text: str | Sequence[str], deidentified: bool = False) -> tuple[str, ...]:
    """``"sc,pm,seg,sr"`` (or a list): what to make and push, some of :data:`medhdm.export.DICOM_FORMATS`;
    with ``deidentified``, not ``sr`` (:func:`medhdm.export.check_formats` says why).

    Raises:
        ValueError: naming ``--push``: an unknown or repeated format, none, or ``sr`` with de-identification.
    """
    items = [f.strip() for f in text.split(",")] if isinstance(text, str) else [str(f).strip() for f in text]
    return tuple(check_formats([f for f in items if f], DICOM_FORMATS, "push_formats", deidentified=deidentified))


def parse_query(items: Sequence[str]) -> dict[str, str]:
    """``["Modality=CT", "StudyDate=20240101-"]`` as study-level query attributes (``Modality`` searches
    ``ModalitiesInStudy``); unknown keys and malformed items are refused."""
    query: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"query: expected KEY=VALUE, got {item!r}")
        if key not in QUERY_KEYS:
            raise ValueError(f"query: unknown key {key!r}; expected one of {', '.join(QUERY_KEYS)}")
        query[QUERY_KEYS[key]] = value
    return query


def parse_study_uids(items: Sequence[str]) -> list[str]:
    """``--study`` values checked as DICOM UIDs (each becomes a folder name), duplicates dropped."""
    return list(dict.fromkeys(check_uid(item, "study_uids", quote=True) for item in items))
