"""Reading studies: DICOM images and series with geometry and provenance."""

from .dicom import DicomSource, read_dicom

__all__ = ["DicomSource", "read_dicom"]
