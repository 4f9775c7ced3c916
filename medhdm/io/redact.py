"""Keep patient names and IDs out of every log line, warning and error message of medhdm's commands.

medhdm's own log lines name studies and instances by UID only. What it cannot word itself (an
exception's message, a library's warning that quotes an element's value, a record of a library's
logger) goes through one :class:`Redactor` per process, which replaces every patient name and ID
seen in the process with ``[redacted]``.

:func:`install_redaction` is the one place where this is set up; the command line calls it for
every command (and :func:`setup_logging`, which calls it, adds a service's handlers), and each Ray
worker of a cohort (:mod:`medhdm.cohort.ray_engine`) in its own process, whose stdout and stderr
go to Ray's log files (``<Ray temp dir>/session_*/logs/``):

- the values: every element of VR PN (Person Name: the patient's, the referring physician's, the
  operators', ... at any depth) and of :data:`IDENTIFIER_KEYWORDS`, of every data set pydicom
  decodes in the process, is handed to the redactor when pydicom converts it (its
  ``raw_element_value`` hook), that is before any library can quote it. The Storage SCP hands
  over those of each received instance as it arrives (:func:`identifying_texts`).
- the records: every log record, of any logger (medhdm's, highdicom, pydicom, pynetdicom, MONAI,
  Ray), has its message and traceback text redacted when it is made (a
  :func:`logging.setLogRecordFactory` wrapper), so whatever handler writes it (the service's
  stderr and ``--log-file`` handlers, :data:`logging.lastResort`, Ray's own) writes it redacted;
- Python warnings (``warnings.warn`` from any module): their text is redacted when it is
  formatted (a :func:`warnings.formatwarning` wrapper), which is how Python prints them on stderr
  and how :func:`logging.captureWarnings` turns them into records of the ``py.warnings`` logger
  (a service's log, :func:`setup_logging`).

The command line passes its one error line (and ``--debug``'s traceback) through
:meth:`Redactor.redact` too.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "IDENTIFIER_KEYWORDS",
    "REDACTED",
    "Redactor",
    "identifying_texts",
    "install_redaction",
    "process_redactor",
    "setup_logging",
]

REDACTED = "[redacted]"

#: identifiers redacted like names (besides every element of VR PN)
IDENTIFIER_KEYWORDS = (
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "AdmissionID",
    "MedicalRecordLocator",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
)


class Redactor(logging.Filter):
    """A log filter that removes the patient names and IDs it was told about from every record.

    A name ``Doe^John`` is also removed as ``Doe John`` and ``Doe, John`` (how it is often printed),
    and each of its components of 3 characters or more on its own, except a component that is a
    word of the name of an attribute that messages name (:data:`_MESSAGE_ATTRIBUTES`;
    ``Anonymized^Patient``: "Patient" alone would erase "Patient ID" from every message; the whole
    name is still removed). Values shorter than 3 characters are not
    tracked (they would erase digits of UIDs). The most recent ``capacity`` values are kept.

    Args:
        capacity: how many values to remember.
    """

    def __init__(self, capacity: int = 10000) -> None:
        super().__init__()
        self.capacity = capacity
        self._values: OrderedDict[str, None] = OrderedDict()
        self._pattern: re.Pattern[str] | None = None
        self._stale = False  # values were added since the pattern was built
        self._lock = threading.Lock()

    def add(self, *values: object) -> None:
        """Remember patient names / IDs (pydicom ``PersonName``, ``str``, or ``None``)."""
        found = set()
        for value in values:
            text = str(value or "").strip()
            if not text:
                continue
            found |= {text, text.replace("^", " ").strip(), text.replace("^", ", ", 1).strip()}
            parts = {part.strip() for part in re.split(r"[\^=]", text)}
            found |= {part for part in parts if part.lower() not in _message_words()}
        found = {v for v in found if len(v) >= 3}
        with self._lock:
            if all(v in self._values for v in found):
                return
            for v in found:
                self._values[v] = None
                self._values.move_to_end(v)
            while len(self._values) > self.capacity:
                self._values.popitem(last=False)
            self._stale = True  # the pattern is built when next needed (many values may come first)

    def _current(self) -> re.Pattern[str] | None:
        if self._stale:
            with self._lock:
                longest_first = sorted(self._values, key=len, reverse=True)
                alternatives = "|".join(re.escape(v) for v in longest_first)
                # not inside a word or a UID: an ID of digits must not erase a component of a UID
                self._pattern = (
                    re.compile(rf"(?<!\w)(?<!\d\.)(?:{alternatives})(?!\w)(?!\.\d)") if longest_first else None
                )
                self._stale = False
        return self._pattern

    def redact(self, text: str) -> str:
        """``text`` with every remembered value replaced by ``[redacted]``."""
        pattern = self._current()
        return pattern.sub(REDACTED, text) if pattern is not None else text

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message (and traceback text) without the remembered values."""
        if self._current() is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (arguments that do not fit the message: logging reports it when emitting)
            return True
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


_PROCESS = Redactor()


def process_redactor() -> Redactor:
    """The redactor of this process: the one :func:`setup_logging` installs and the pydicom hook feeds."""
    return _PROCESS


# --- the values: names and IDs of every data set decoded -------------------------------------------


def _texts(value: object) -> list[str]:
    """An element's value as texts: raw bytes decoded leniently (UTF-8 and Latin-1), each value of a multi-value."""
    from pydicom.valuerep import PersonName

    if value is None:
        return []
    if isinstance(value, bytes | bytearray):
        decoded = [bytes(value).decode(codec, errors="replace") for codec in ("utf-8", "latin-1")]
    elif isinstance(value, str | PersonName) or not isinstance(value, Iterable):
        decoded = [str(value)]
    else:  # a multi-value
        return [text for item in value for text in _texts(item)]
    texts = []
    for text in decoded:
        text = text.strip(" \x00")
        texts += [text, *text.split("\\")]
    return [t for t in texts if t]


#: the attributes that medhdm's messages about a file name (its identity, geometry and pixel checks)
_MESSAGE_ATTRIBUTES = (
    "PatientID", "PatientName", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientOrientation",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "StudyID", "AccessionNumber",
    "SeriesNumber", "Modality", "FrameOfReferenceUID", "ImageOrientationPatient", "ImagePositionPatient",
    "PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "PhotometricInterpretation", "SamplesPerPixel",
    "BitsAllocated", "PixelData", "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "TransferSyntaxUID",
)  # fmt: skip


@functools.cache
def _message_words() -> frozenset[str]:
    """The words (lower case) of the names of :data:`_MESSAGE_ATTRIBUTES` ("Image Orientation (Patient)")."""
    from pydicom.datadict import dictionary_description

    return frozenset(
        word.lower() for k in _MESSAGE_ATTRIBUTES for word in re.findall(r"[A-Za-z]+", dictionary_description(k))
    )


def _identifier_tags() -> frozenset[int]:
    from pydicom.datadict import tag_for_keyword

    return frozenset(tag for tag in map(tag_for_keyword, IDENTIFIER_KEYWORDS) if tag is not None)


def _dictionary_vr(tag: int) -> str | None:
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag)
    except KeyError:  # private or unknown
        return None


def identifying_texts(dataset) -> list[str]:
    """The names (every element of VR PN) and IDs (:data:`IDENTIFIER_KEYWORDS`) of ``dataset``, at any depth.

    Elements not yet converted are read as stored (bytes, decoded leniently) and left unconverted,
    so a value pydicom would warn about is known before the warning quotes it.
    """
    identifiers = _identifier_tags()
    texts: list[str] = []
    for tag in list(dataset.keys()):
        element = dataset.get_item(tag)
        vr = element.VR or _dictionary_vr(tag)
        if vr == "SQ":
            for item in dataset[tag].value or ():
                texts += identifying_texts(item)
        elif vr == "PN" or tag in identifiers:
            texts += _texts(element.value)
    return texts


def _install_pydicom_hook(redactor: Redactor) -> None:
    """Hand every PN / identifier value pydicom converts (from any file or network data set) to ``redactor``."""
    identifiers = _identifier_tags()
    try:
        from pydicom.hooks import hooks
    except ImportError:  # pydicom 2: the element callback
        import pydicom.config as config

        previous_callback = config.data_element_callback
        if getattr(previous_callback, "medhdm_redactor", None) is not None:
            return

        def callback(raw, **kwargs):
            if (raw.VR or _dictionary_vr(raw.tag)) == "PN" or raw.tag in identifiers:
                redactor.add(*_texts(raw.value))
            return previous_callback(raw, **kwargs) if previous_callback is not None else raw

        callback.medhdm_redactor = redactor  # type: ignore[attr-defined]
        config.data_element_callback = callback
        return

    previous = hooks.raw_element_value
    if getattr(previous, "medhdm_redactor", None) is not None:
        return

    def raw_element_value(raw, data, *, encoding=None, ds=None, **kwargs) -> None:
        if data.get("VR") != "PN" and raw.tag not in identifiers:
            previous(raw, data, encoding=encoding, ds=ds, **kwargs)
            return
        redactor.add(*_texts(raw.value))  # before the conversion, which may warn quoting it
        previous(raw, data, encoding=encoding, ds=ds, **kwargs)
        redactor.add(*_texts(data.get("value")))  # as decoded with the data set's character set

    raw_element_value.medhdm_redactor = redactor  # type: ignore[attr-defined]
    hooks.register_callback("raw_element_value", raw_element_value)


# --- the records and the handlers -------------------------------------------------------------------


def _install_record_factory(redactor: Redactor) -> None:
    """Redact every log record when it is made, whichever logger and handlers it goes to."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "medhdm_redactor", None) is not None:
        return

    def make(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name == "py.warnings" and isinstance(record.msg, str):  # a warning: one text, its own line end
            record.msg, record.args = (record.msg % record.args if record.args else record.msg).rstrip("\n"), None
        redactor.filter(record)
        return record

    make.medhdm_redactor = redactor  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make)


def _install_warning_format(redactor: Redactor) -> None:
    """Redact the text of every warning when it is formatted (printed by Python, or logged)."""
    import warnings

    previous = warnings.formatwarning
    if getattr(previous, "medhdm_redactor", None) is not None:
        return

    def formatwarning(message, category, filename, lineno, line=None) -> str:
        return redactor.redact(previous(message, category, filename, lineno, line))

    formatwarning.medhdm_redactor = redactor  # type: ignore[attr-defined]
    warnings.formatwarning = formatwarning


class _StderrHandler(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record is written (as :data:`logging.lastResort`)."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        logging.Handler.__init__(self, level)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler.setStream; the stream follows sys.stderr
        pass


_HANDLERS: list[logging.Handler] = []


def install_redaction() -> Redactor:
    """Every log record and warning of this process through the process's :class:`Redactor` (see the module).

    Installs (once) the pydicom hook that feeds the redactor, the record factory that redacts
    every record, and the warning format that redacts every warning. Adds no handler and changes
    no level: what reached stderr before still does, redacted. Returns the redactor
    (:func:`process_redactor`).
    """
    _install_pydicom_hook(_PROCESS)
    _install_record_factory(_PROCESS)
    _install_warning_format(_PROCESS)
    return _PROCESS


def setup_logging(
    level: int = logging.INFO, log_file: str | Path | None = None, *, timestamps: bool = False
) -> Redactor:
    """A service's logging: :func:`install_redaction`, and handlers on stderr (and ``log_file``) at ``level``.

    Warnings become log records (:func:`logging.captureWarnings`). Replaces the handlers an
    earlier call installed; each has the redactor as a filter too.

    Args:
        level: the root logger's level (the libraries' INFO lines of pynetdicom, highdicom and
            dicomweb_client only at DEBUG).
        log_file: also append the log here.
        timestamps: start each line with the time (a service's log).

    Returns:
        the process's redactor (:func:`process_redactor`), for the Storage SCP to feed.
    """
    redactor = install_redaction()
    logging.captureWarnings(True)  # warnings into the log (and --log-file), redacted as they are formatted
    handlers: list[logging.Handler] = [_StderrHandler()]
    if log_file is not None:
        try:
            handlers.append(logging.FileHandler(log_file))
        except OSError as err:
            raise ValueError(f"log_file: cannot append to {log_file} ({err.strerror or err})") from None
    root = logging.getLogger()
    for handler in _HANDLERS:
        root.removeHandler(handler)
        handler.close()
    _HANDLERS[:] = handlers
    prefix = "%(asctime)s " if timestamps else ""
    formatter = logging.Formatter(prefix + "%(levelname)s %(name)s: %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(redactor)
        root.addHandler(handler)
    root.setLevel(level)
    if level > logging.DEBUG:  # the libraries' progress lines (one per copied module, request) only with --debug
        for name in ("pynetdicom", "highdicom", "dicomweb_client"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return redactor
