"""From the archive and back: retrieve studies (DICOMweb, DIMSE), explain them, push SC/PM/SEG/SR into the study.

Modules: :mod:`~medhdm.pacs.destinations` (``parse_destination``: a DICOMweb URL or
``AET@HOST:PORT``), :mod:`~medhdm.pacs.dicomweb` and :mod:`~medhdm.pacs.dimse` (the two
protocols), :mod:`~medhdm.pacs.archive` (retries, push reports), :mod:`~medhdm.pacs.cache`
(retrieved studies), :mod:`~medhdm.pacs.uids` (deterministic derived UIDs),
:mod:`~medhdm.pacs.sr` (the structured report), :mod:`~medhdm.pacs.secrets` (credentials),
:mod:`~medhdm.pacs.run` (query -> retrieve -> explain -> export -> push), and
:mod:`~medhdm.pacs.orthanc` (a private Orthanc for tests and tutorials).
"""

from .archive import Archive, ArchiveError, InstanceRef, PushError, PushReport, RetryPolicy
from .destinations import Destination, parse_destination
from .run import StudyOutcome, explain_archive_studies, explain_local_study, pacs_configuration
from .secrets import Credentials, credentials_from_env
from .uids import DerivedUIDs

__all__ = [
    "Archive",
    "ArchiveError",
    "Credentials",
    "DerivedUIDs",
    "Destination",
    "InstanceRef",
    "PushError",
    "PushReport",
    "RetryPolicy",
    "StudyOutcome",
    "credentials_from_env",
    "explain_archive_studies",
    "explain_local_study",
    "pacs_configuration",
    "parse_destination",
]
