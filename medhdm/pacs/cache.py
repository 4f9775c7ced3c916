"""A local cache of retrieved studies, keyed by Study Instance UID, with a completeness marker.

Layout: ``<root>/<Study UID>/<Series UID>/<SOP Instance UID>.dcm`` and, per series, a
marker ``<root>/<Study UID>/<Series UID>.complete.json`` listing the SOP Instance UIDs
it holds. A series is written into a temporary folder and renamed into place before
its marker is written, so an interrupted retrieval leaves no half series that passes
for complete; a series whose marker lists every instance the archive holds is not
fetched again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from ..io.atomic import atomic_write
from .uids import check_uid

__all__ = ["StudyCache"]


class StudyCache:
    """Retrieved series under ``root`` (created)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def study_folder(self, study_uid: str) -> Path:
        """``<root>/<Study UID>`` (``ValueError`` for a UID that is not one: it never becomes a path)."""
        return self.root / check_uid(study_uid, "Study Instance UID")

    def series_folder(self, study_uid: str, series_uid: str) -> Path:
        return self.study_folder(study_uid) / check_uid(series_uid, "Series Instance UID")

    def _marker(self, study_uid: str, series_uid: str) -> Path:
        return self.study_folder(study_uid) / f"{check_uid(series_uid, 'Series Instance UID')}.complete.json"

    def complete(self, study_uid: str, series_uid: str, sop_uids: Sequence[str]) -> bool:
        """The series is cached with (at least) every one of ``sop_uids``."""
        marker = self._marker(study_uid, series_uid)
        sop_uids = [check_uid(uid, "SOP Instance UID") for uid in sop_uids]
        try:
            held = set(json.loads(marker.read_text())["sop_uids"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        folder = self.series_folder(study_uid, series_uid)
        return set(sop_uids) <= held and all((folder / f"{uid}.dcm").is_file() for uid in sop_uids)

    def fetch(
        self,
        study_uid: str,
        series_uid: str,
        sop_uids: Sequence[str],
        retrieve: Callable[[Path], list[Path]],
    ) -> tuple[Path, bool]:
        """The cached series folder, retrieved with ``retrieve(folder)`` unless complete; ``(folder, fetched)``.

        Raises:
            ValueError: the retrieved files lack some of ``sop_uids``, or a UID is not a valid DICOM UID.
        """
        folder = self.series_folder(study_uid, series_uid)
        if self.complete(study_uid, series_uid, sop_uids):
            return folder, False
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            paths = retrieve(partial)
            got = {p.stem for p in paths}
            missing = sorted(set(sop_uids) - got)
            if missing:
                raise ValueError(f"series {series_uid}: the archive sent {len(got)} instances, {len(missing)} missing")
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        self._marker(study_uid, series_uid).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
        atomic_write(self._marker(study_uid, series_uid), json.dumps({"sop_uids": sorted(got)}).encode())
        return folder, True
