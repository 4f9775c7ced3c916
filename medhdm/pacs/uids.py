"""Deterministic derived UIDs: the same source and the same run configuration give the same UIDs.

A derived object's Series and SOP Instance UIDs are ``2.25.<n>`` (PS3.5 B.2: a UUID
as a decimal integer), ``n`` a name-based UUID (RFC 4122 version 5) of

- the source Study, Series and SOP Instance UIDs (every source instance),
- the run configuration's hash (:func:`medhdm.models.identity.configuration_hash`:
  medhdm's version, the model's identity and weights hash, the method and its settings,
  the classifier's input and slice options),
- the object's key (``"sc/series"``, ``"sc/instance/<source SOP Instance UID>"`` (and
  ``/<slice number>`` for the frames of a multi-frame source),
  ``"pm/series"``, ``"pm/instance"``, ``"seg/..."``, ``"sr/..."``).

So explaining a study twice with the same configuration gives the same objects (an
archive that already holds them gains nothing), while a new model, method, setting or
medhdm version gives new series.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence

from pydicom.uid import UID

__all__ = ["UID_FORM", "DerivedUIDs", "check_uid", "derived_uid"]

#: the namespace of medhdm's name-based UUIDs (itself the version-5 UUID of the name "medhdm" in the URL namespace)
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/medhdm/medhdm/derived-uids")


# PS3.5 9.1 also forbids leading zeros in a component; archives hold such UIDs, and they are safe names
_VALID_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

#: what a DICOM UID looks like (PS3.5 9.1), for messages
UID_FORM = "numbers separated by dots, at most 64 characters (e.g. 1.2.840.113619.2.55.3)"


def check_uid(value: object, what: str, *, quote: bool = False) -> str:
    """``value`` as a str if it is a DICOM UID (:data:`UID_FORM`), else a ``ValueError`` naming ``what`` and the form.

    A valid UID is a safe file or folder name (it holds no separator and cannot be ``.`` or ``..``),
    so every UID that becomes part of a path goes through this first. The message quotes the value
    only with ``quote`` (a value the user gave); a received one is described by its length.
    """
    text = str(value if value is not None else "")
    if len(text) <= 64 and _VALID_UID.fullmatch(text):  # pydicom's UID() would warn, quoting the value
        return text
    shown = repr(text if len(text) <= 80 else text[:77] + "...") if quote else f"a value of {len(text)} characters"
    raise ValueError(f"{what}: {shown} is not a DICOM UID; expected {UID_FORM}")


def derived_uid(*parts: str) -> UID:
    """``2.25.<n>``, ``n`` the version-5 UUID of ``parts`` (joined by newlines) in medhdm's namespace."""
    return UID(f"2.25.{uuid.uuid5(NAMESPACE, chr(10).join(parts)).int}")


class DerivedUIDs:
    """The UID source of one explained series (``medhdm.export.export(..., uid_source=DerivedUIDs(...))``).

    Args:
        configuration_hash: the run's :func:`~medhdm.models.identity.configuration_hash`.
        study_uid, series_uid: the source's Study and Series Instance UIDs.
        sop_uids: the source's SOP Instance UIDs (order does not matter).
        frames: the Number of Frames of multi-frame source instances (one SC per frame); others have one.
    """

    def __init__(
        self,
        configuration_hash: str,
        study_uid: str,
        series_uid: str,
        sop_uids: Sequence[str],
        frames: Mapping[str, int] | None = None,
    ) -> None:
        if not configuration_hash or not study_uid or not series_uid or not sop_uids:
            raise ValueError("DerivedUIDs: the configuration hash and the source Study/Series/SOP UIDs are needed")
        digest = hashlib.sha256()
        for part in (configuration_hash, study_uid, series_uid, *sorted(sop_uids)):
            digest.update(part.encode() + b"\n")
        self.configuration_hash = configuration_hash
        self.study_uid, self.series_uid = study_uid, series_uid
        self.sop_uids = tuple(sop_uids)
        self.frames = {uid: int(n) for uid, n in (frames or {}).items() if int(n) > 1}
        self._base = digest.hexdigest()

    def __call__(self, key: str) -> UID:
        return derived_uid(self._base, key)

    def expected(self, formats: Sequence[str]) -> dict[str, list[str]]:
        """The SOP Instance UIDs each format will have (``sc``: one per source image or frame; others: one).

        ``seg`` also brings ``seg_findings``, the findings' SEG (``SEG_findings.dcm``). It is written only when
        the explanation has findings, so a series explained without any is never found complete and is
        explained again on the next run (under the same UIDs), rather than skipped with a SEG missing.
        """
        out: dict[str, list[str]] = {}
        for fmt in formats:
            if fmt == "sc":
                out[fmt] = [
                    self(key)
                    for uid in self.sop_uids
                    for key in (
                        [f"sc/instance/{uid}/{k}" for k in range(1, self.frames[uid] + 1)]
                        if uid in self.frames
                        else [f"sc/instance/{uid}"]
                    )
                ]
            else:
                out[fmt] = [self(f"{fmt}/instance")]
            if fmt == "seg":
                out["seg_findings"] = [self("findings-seg/instance")]
        return out

    def __repr__(self) -> str:
        return f"DerivedUIDs(series {self.series_uid}, configuration {self.configuration_hash[:12]})"
