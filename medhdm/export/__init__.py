"""Export saliency maps into the source study: DICOM SC / Parametric Map / SEG, NIfTI, PNG."""

from .api import (
    FORMATS,
    Deidentification,
    check_export_arguments,
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
from .staging import OutputBusyError, OutputExistsError

__all__ = [
    "FORMATS",
    "Deidentification",
    "check_export_arguments",
    "OutputBusyError",
    "OutputExistsError",
    "OverlayStyle",
    "Window",
    "apply_window",
    "deidentify",
    "export",
    "export_nifti",
    "export_parametric_map",
    "export_png",
    "export_secondary_capture",
    "export_segmentation",
    "map_on_source_grid",
    "render_overlay",
    "window_for",
]
