"""Keep patient names and IDs out of the service's logs.

The service's own log lines name studies and instances by UID only. What it cannot word
itself (an exception's message, a library's warning that quotes an element's value) goes
through :class:`Redactor`, a :class:`logging.Filter` that replaces every patient name and ID
seen in a received instance with ``[redacted]`` before the line is written.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict

__all__ = ["REDACTED", "Redactor"]

REDACTED = "[redacted]"


class Redactor(logging.Filter):
    """A log filter that removes the patient names and IDs it was told about from every record.

    A name ``Doe^John`` is also removed as ``Doe John`` and ``Doe, John`` (how it is often printed),
    and each of its components of 3 characters or more on its own. Values shorter than 3
    characters are not tracked (they would erase digits of UIDs). The most recent ``capacity``
    values are kept.

    Args:
        capacity: how many values to remember.
    """

    def __init__(self, capacity: int = 10000) -> None:
        super().__init__()
        self.capacity = capacity
        self._values: OrderedDict[str, None] = OrderedDict()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, *values: object) -> None:
        """Remember patient names / IDs (pydicom ``PersonName``, ``str``, or ``None``)."""
        found = set()
        for value in values:
            text = str(value or "").strip()
            if not text:
                continue
            found |= {text, text.replace("^", " ").strip(), text.replace("^", ", ", 1).strip()}
            found |= {part.strip() for part in re.split(r"[\^=]", text)}
        found = {v for v in found if len(v) >= 3}
        with self._lock:
            if all(v in self._values for v in found):
                return
            for v in found:
                self._values[v] = None
                self._values.move_to_end(v)
            while len(self._values) > self.capacity:
                self._values.popitem(last=False)
            longest_first = sorted(self._values, key=len, reverse=True)
            alternatives = "|".join(re.escape(v) for v in longest_first)
            # not inside a word or a UID: an ID of digits must not erase a component of a UID
            self._pattern = re.compile(rf"(?<!\w)(?<!\d\.)(?:{alternatives})(?!\w)(?!\.\d)") if longest_first else None

    def redact(self, text: str) -> str:
        """``text`` with every remembered value replaced by ``[redacted]``."""
        pattern = self._pattern
        return pattern.sub(REDACTED, text) if pattern is not None else text

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message (and traceback text) without the remembered values."""
        if self._pattern is None:
            return True
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True
