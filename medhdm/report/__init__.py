"""Rendering an evaluation for people: ``report.html``, CSV/JSON and figures (:mod:`medhdm.report.html`)."""

from .html import write_report

__all__ = ["write_report"]
