"""Export saliency maps into the source study: DICOM SC / Parametric Map / SEG / SR, NIfTI, PNG.

One module per DICOM object (:mod:`.dicom` and :mod:`.multiframe`: SC, PM, SEG; :mod:`.sr`: the
structured report); :func:`export` writes any of them as one all-or-nothing set (:mod:`.staging`).
"""

from .api import (
    DICOM_FORMATS,
    FORMATS,
    Deidentification,
    check_export_arguments,
    check_formats,
    export,
    export_nifti,
    export_parametric_map,
    export_png,
    export_secondary_capture,
    export_segmentation,
    map_on_source_grid,
)
from .deidentify import deidentify
from .overlay import OverlayStyle, Window, apply_window, render_overlay, window_for
from .sr import ReportContent, read_structured_report
from .staging import OutputBusyError, OutputExistsError

__all__ = [
    "DICOM_FORMATS",
    "FORMATS",
    "Deidentification",
    "OutputBusyError",
    "OutputExistsError",
    "OverlayStyle",
    "ReportContent",
    "Window",
    "apply_window",
    "check_export_arguments",
    "check_formats",
    "deidentify",
    "export",
    "export_nifti",
    "export_parametric_map",
    "export_png",
    "export_secondary_capture",
    "export_segmentation",
    "map_on_source_grid",
    "read_structured_report",
    "render_overlay",
    "window_for",
]
