"""Which errors mean that the input (files, arguments) is bad, rather than that a run failed."""

from __future__ import annotations

__all__ = ["BAD_INPUT"]

#: errors that mean the input is bad: the CLI's exit status 2, and a cohort case's ``bad_input``; others are
#: failures of the run (exit status 1)
BAD_INPUT: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    FileExistsError,
)
