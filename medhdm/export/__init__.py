"""Export saliency maps into the source study: DICOM SC / Parametric Map / SEG / SR, NIfTI, PNG.

One module per DICOM object (:mod:`.dicom` and :mod:`.multiframe`: SC, PM, SEG; :mod:`.sr`: the
structured report); :func:`export` writes any of them as one all-or-nothing set (:mod:`.staging`);
:class:`ExportDicomd` does it as a MONAI transform, for a map that ``Invertd`` took back to its source
(:mod:`.transforms`).
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
from .transforms import ExportDicom, ExportDicomd

__all__ = [
    "DICOM_FORMATS",
    "FORMATS",
    "Deidentification",
    "ExportDicom",
    "ExportDicomd",
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
