"""From the archive and back: retrieve studies (DICOMweb, DIMSE), explain them, push SC/PM/SEG/SR into the study.

Modules, by job: :mod:`~medhdm.pacs.query` (what a run is asked for: studies, queries, formats),
:mod:`~medhdm.pacs.destinations` (``parse_destination``: a DICOMweb URL or ``AET@HOST:PORT``),
:mod:`~medhdm.pacs.dicomweb` and :mod:`~medhdm.pacs.dimse` (the two protocols),
:mod:`~medhdm.pacs.archive` (retries, push reports), :mod:`~medhdm.pacs.discovery` (a study's
source series and lesion annotations), :mod:`~medhdm.pacs.cache` (retrieved studies),
:mod:`~medhdm.pacs.uids` (deterministic derived UIDs), :mod:`~medhdm.pacs.secrets` (credentials),
:mod:`~medhdm.pacs.tls` (TLS certificates for DIMSE and HTTPS),
:mod:`~medhdm.pacs.workflow` (query -> retrieve -> explain -> export -> push, through
:func:`medhdm.study.explain_study`, whose export writes the SR, :mod:`medhdm.export.sr`),
:mod:`~medhdm.pacs.serve` with :mod:`~medhdm.pacs.scp` and :mod:`~medhdm.pacs.spool` (the receiving
service), and :mod:`~medhdm.pacs.orthanc` (a private Orthanc for tests and tutorials).
"""

from .archive import Archive, ArchiveError, InstanceRef, PushError, PushReport, RetryPolicy
from .destinations import Destination, parse_destination
from .secrets import Credentials, credentials_from_env
from .tls import TlsFiles
from .uids import DerivedUIDs
from .workflow import PacsOptions, StudyOutcome, explain_archive_studies, explain_local_study, pacs_configuration

__all__ = [
    "Archive",
    "ArchiveError",
    "Credentials",
    "DerivedUIDs",
    "Destination",
    "InstanceRef",
    "PacsOptions",
    "PushError",
    "PushReport",
    "RetryPolicy",
    "StudyOutcome",
    "TlsFiles",
    "credentials_from_env",
    "explain_archive_studies",
    "explain_local_study",
    "pacs_configuration",
    "parse_destination",
]
