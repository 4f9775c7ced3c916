"""Reading a DICOM image (one file or one series folder) with its geometry and provenance.

A :class:`DicomSource` holds the source datasets in slice order (sorted by position
along the slice normal, never by file name or Instance Number), the pixel data in
modality units (Rescale Slope/Intercept applied) and the geometry needed to put a map
back onto the source grid: the affine in RAS (NIfTI/nibabel convention) and the voxel
spacing. It is what the exporters take.

Everything that would give a silently wrong volume, or file a result under the wrong
patient, is an error naming the file: files from two series, slices that disagree on an
attribute every instance of a series shares (patient, study, series, frame of reference:
:data:`SERIES_ATTRIBUTES`), a missing Study/Series/SOP Instance UID, a subfolder inside a
series folder, a gap (missing slice), duplicate positions, mixed orientations or sizes, a
degenerate orientation or pixel spacing, a file that is not DICOM, a file without pixel data,
pixel data that cannot be decoded (:mod:`medhdm.io.decoding`: the file and its transfer syntax named).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from .decoding import decode_pixels

__all__ = ["LPS_TO_RAS", "SERIES_ATTRIBUTES", "DicomSource", "read_dicom"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_ORIENTATION_TOL = 1e-4
_SPACING_REL_TOL = 0.05

#: Attributes every instance of one series shares (PS3.3 C.7.1.1 Patient, C.7.2.1 General
#: Study, C.7.3.1 General Series, C.7.4.1 Frame of Reference): a slice that disagrees on
#: one of them belongs to another patient, study, series or coordinate system, and the
#: series is refused rather than explained and filed under the first slice's patient.
SERIES_ATTRIBUTES = (
    ("PatientID", "Patient ID (0010,0020)"),
    ("IssuerOfPatientID", "Issuer of Patient ID (0010,0021)"),
    ("PatientName", "Patient's Name (0010,0010)"),
    ("PatientBirthDate", "Patient's Birth Date (0010,0030)"),
    ("PatientSex", "Patient's Sex (0010,0040)"),
    ("StudyInstanceUID", "Study Instance UID (0020,000D)"),
    ("StudyID", "Study ID (0020,0010)"),
    ("AccessionNumber", "Accession Number (0008,0050)"),
    ("SeriesInstanceUID", "Series Instance UID (0020,000E)"),
    ("SeriesNumber", "Series Number (0020,0011)"),
    ("Modality", "Modality (0008,0060)"),
    ("FrameOfReferenceUID", "Frame of Reference UID (0020,0052)"),
)

#: Type 1 identifiers that results are filed under (records, derived UIDs, exports).
_REQUIRED_UIDS = (
    ("StudyInstanceUID", "Study Instance UID (0020,000D)"),
    ("SeriesInstanceUID", "Series Instance UID (0020,000E)"),
    ("SOPInstanceUID", "SOP Instance UID (0008,0018)"),
)


@dataclass
class DicomSource:
    """A single-frame DICOM image or series, in slice order.

    Attributes:
        datasets: the source datasets, one per slice, sorted along the slice normal (for a
            multi-frame file: the one dataset, ``multiframe`` True).
        paths: the file each dataset came from (``None`` for datasets given in memory).
        pixels: ``(D, H, W)`` float array in modality units (``D == 1`` for one image).
        affine_ras: ``(4, 4)`` voxel index ``(column, row, slice)`` -> RAS millimetres,
            the convention of NIfTI files written from DICOM.
        spacing: ``(slice, row, column)`` spacing in mm (slice spacing 1.0 for one image).
        series_folder: the folder the series was read from, whole (``None`` when read from one
            file or from datasets); outputs may not go inside it (:mod:`medhdm.io.outputs`).
    """

    datasets: list[Dataset]
    paths: list[Path | None]
    pixels: np.ndarray
    affine_ras: np.ndarray
    spacing: tuple[float, float, float]
    series_folder: Path | None = None
    multiframe: bool = False

    @property
    def is_series(self) -> bool:
        """A volume: several slices (a series of files, or the frames of one multi-frame file)."""
        return self.pixels.shape[0] > 1

    @property
    def shape(self) -> tuple[int, ...]:
        """The grid a map must have: ``(H, W)`` for one image, ``(D, H, W)`` for a series."""
        return tuple(self.pixels.shape[1:]) if not self.is_series else tuple(self.pixels.shape)

    @property
    def first(self) -> Dataset:
        return self.datasets[0]


def first_number(value) -> float | None:
    """The first value of a possibly multi-valued numeric attribute (Window Center, ...); ``None`` if empty."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or getattr(value, "VM", 1) > 1:
        return float(value[0])
    return float(value)


def _unit(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _numbers(ds: Dataset, key: str, count: int, where: str, label: str) -> list[float]:
    """``count`` finite numbers of a decimal-string attribute, or an error naming the file."""
    element = ds.data_element(key)
    value = element.value
    values = list(value) if element.VM > 1 or isinstance(value, (list, tuple)) else [value]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {label} {value!r} is not a list of numbers") from None
    if len(numbers) != count:
        raise ValueError(f"{where}: {label} has {len(numbers)} values, expected {count}")
    if not np.isfinite(numbers).all():
        raise ValueError(f"{where}: {label} {numbers} holds NaN or infinite values")
    return numbers


def _geometry(ds: Dataset, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row direction, column direction and position of a slice (LPS), with defaults for SC-like images.

    Raises:
        ValueError: naming the file, for an orientation whose direction cosines are not two
            orthogonal unit vectors (all zero, say) or a position that is not three finite numbers.
    """
    if "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds:
        label = "Image Orientation (Patient) (0020,0037)"
        iop = np.asarray(_numbers(ds, "ImageOrientationPatient", 6, where, label))
        row, col = iop[:3], iop[3:]
        norms = np.linalg.norm(row), np.linalg.norm(col)
        if min(norms) < 0.5 or max(norms) > 1.5 or abs(float(row @ col)) > 0.01 * norms[0] * norms[1]:
            raise ValueError(
                f"{where}: {label} {iop.round(4).tolist()} is not two orthogonal unit direction cosines "
                "(degenerate orientation)"
            )
        position = _numbers(ds, "ImagePositionPatient", 3, where, "Image Position (Patient) (0020,0032)")
        return _unit(row), _unit(col), np.asarray(position)
    return np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), np.zeros(3)


def _pixel_spacing(ds: Dataset, where: str = "dataset") -> tuple[float, float]:
    """``(row, column)`` spacing in mm from the first of the spacing attributes present (1, 1 without one).

    Raises:
        ValueError: naming the file, for a spacing that is not two finite positive numbers.
    """
    for key in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        if key in ds and ds.data_element(key).value:
            row, col = _numbers(ds, key, 2, where, key)
            if not (row > 0 and col > 0):
                raise ValueError(f"{where}: {key} {[row, col]} must be two positive numbers (mm)")
            return row, col
    return 1.0, 1.0


def _read_multiframe(path: Path, ds: Dataset) -> DicomSource:
    """An enhanced (or legacy converted enhanced) multi-frame image, through highdicom's volume geometry."""
    import highdicom as hd

    if "PerFrameFunctionalGroupsSequence" not in ds or "SharedFunctionalGroupsSequence" not in ds:
        raise ValueError(
            f"{path}: multi-frame DICOM ({ds.get('SOPClassUID', '?')}, {ds.NumberOfFrames} frames) "
            "without per-frame plane geometry is not supported"
        )
    _check_image(ds, str(path))
    _check_identifiers(ds, str(path))
    decode_pixels(ds, str(path))  # decoded once, by medhdm's decoder; highdicom takes the array pydicom caches
    try:
        volume = hd.Image.from_dataset(ds, copy=False).get_volume()
    except Exception as err:  # noqa: BLE001 (highdicom's reasons are many; report them with the file)
        raise ValueError(f"{path}: multi-frame DICOM frames do not form one regular volume ({err})") from None
    array = np.asarray(volume.array, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"{path}: expected grayscale frames, got a volume of shape {array.shape}")
    hd_affine = np.asarray(volume.affine, dtype=np.float64)  # (slice, row, column) -> LPS
    affine_lps = hd_affine[:, [2, 1, 0, 3]]  # (column, row, slice) -> LPS
    normal = np.cross(_unit(affine_lps[:3, 0]), _unit(affine_lps[:3, 1]))
    if float(affine_lps[:3, 2] @ normal) < 0:  # keep slices ascending along the normal, as for series
        array = array[::-1].copy()
        affine_lps[:3, 3] = affine_lps[:3, 3] + (array.shape[0] - 1) * affine_lps[:3, 2]
        affine_lps[:3, 2] = -affine_lps[:3, 2]
    spacing = (
        float(np.linalg.norm(affine_lps[:3, 2])),
        float(np.linalg.norm(affine_lps[:3, 1])),
        float(np.linalg.norm(affine_lps[:3, 0])),
    )
    return DicomSource(
        datasets=[ds],
        paths=[path],
        pixels=array,
        affine_ras=LPS_TO_RAS @ affine_lps,
        spacing=spacing,
        multiframe=True,
    )


def _read_file(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as err:
        raise ValueError(f"{path}: not a DICOM file ({err})") from None
    except Exception as err:  # noqa: BLE001 (truncated or corrupt files raise many kinds of errors)
        raise ValueError(f"{path}: unreadable DICOM file ({type(err).__name__}: {err})") from None
    if "PixelData" not in ds:
        raise ValueError(f"{path}: DICOM file has no pixel data (SOP class {ds.get('SOPClassUID', '?')})")
    return ds


#: SOP classes that carry pixel data but are not images to explain: annotations and derived maps
_NOT_IMAGES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a DICOM SEG (segmentation); give it as the lesion annotation",
    "1.2.840.10008.5.1.4.1.1.481.3": "an RTSTRUCT; give it as the lesion annotation",
    "1.2.840.10008.5.1.4.1.1.30": "a Parametric Map (a derived map, not an image)",
}
_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")


def _check_image(ds: Dataset, name: str) -> None:
    """A grayscale image to explain: pixel data, one sample per pixel, no annotation or SR object."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in _NOT_IMAGES:
        raise ValueError(f"{name}: {_NOT_IMAGES[sop_class]}, not an image to explain")
    if sop_class.startswith("1.2.840.10008.5.1.4.1.1.88."):
        raise ValueError(f"{name}: a structured report (SR), not an image to explain")
    if "PixelData" not in ds:
        raise ValueError(f"{name}: no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric not in _GRAYSCALE or samples != 1:
        raise ValueError(
            f"{name}: a {photometric or 'colour'} image ({samples} sample(s) per pixel); medhdm explains "
            "grayscale (MONOCHROME1/2) images, whose pixel values are intensities"
        )


def _pixels_of(ds: Dataset, name: str) -> np.ndarray:
    """The frame's pixels in modality units (Rescale Slope/Intercept applied), finite, ``(H, W)`` float32."""
    pixels = apply_modality_lut(decode_pixels(ds, name), ds).astype(np.float32)
    if pixels.ndim != 2:
        raise ValueError(f"{name}: expected one grayscale frame, got pixel data of shape {pixels.shape}")
    if not np.isfinite(pixels).all():
        raise ValueError(f"{name}: pixel data holds NaN or infinite values")
    return pixels


def _frames(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _files_in(folder: Path) -> list[Path]:
    """The series folder's files (hidden names ignored); a subfolder is an error, not skipped."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    subfolders = [p for p in entries if p.is_dir()]
    if subfolders:
        raise ValueError(
            f"{subfolders[0]}: a subfolder inside the series folder {folder} ({len(subfolders)} in all); "
            "a series folder must hold the files of one series and nothing else"
        )
    files = [p for p in entries if p.is_file()]
    if not files:
        raise ValueError(f"{folder}: folder holds no files")
    return files


def read_dicom(source: str | os.PathLike | Dataset | Sequence[Dataset]) -> DicomSource:
    """Read one DICOM image or one series (a folder, or datasets in any order).

    Args:
        source: a DICOM file (single-frame, or an enhanced multi-frame volume with per-frame
            plane positions), a folder holding exactly one single-frame series (every
            non-hidden file must be DICOM), a dataset, or a sequence of datasets of one series.

    Returns:
        a :class:`DicomSource` with the slices sorted along the slice normal.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: naming the file, for anything that would give a wrong volume.
    """
    loaded = _datasets_of(source)
    folder = Path(source) if isinstance(source, (str, os.PathLike)) and Path(source).is_dir() else None
    if isinstance(loaded, DicomSource):
        return replace(loaded, series_folder=folder)
    datasets, paths = loaded
    names = [str(p) if p is not None else f"dataset {i}" for i, p in enumerate(paths)]
    for ds, name in zip(datasets, names):
        _check_image(ds, name)
        _check_identifiers(ds, name)
    _check_one_series(datasets, names)
    geometry = [_geometry(ds, name) for ds, name in zip(datasets, names)]
    _check_same_plane(datasets, names, geometry)
    row0, col0, _ = geometry[0]
    spacing0 = _pixel_spacing(datasets[0], names[0])

    normal = np.cross(row0, col0)
    order = np.argsort([float(pos @ normal) for _, _, pos in geometry], kind="stable")
    datasets = [datasets[i] for i in order]
    paths = [paths[i] for i in order]
    names = [names[i] for i in order]
    positions = np.array([geometry[i][2] for i in order])
    slice_spacing = _slice_spacing(positions, normal, names)

    pixels = np.stack([_pixels_of(ds, name) for ds, name in zip(datasets, names)])
    if pixels.ndim != 3:
        raise ValueError(f"{names[0]}: expected grayscale pixel data, got an array of shape {pixels.shape[1:]}")

    row_sp, col_sp = spacing0
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row0 * col_sp  # column index moves along the row direction
    affine_lps[:3, 1] = col0 * row_sp  # row index moves along the column direction
    affine_lps[:3, 2] = normal * slice_spacing
    affine_lps[:3, 3] = positions[0]
    return DicomSource(
        datasets=datasets,
        paths=paths,
        pixels=pixels,
        affine_ras=LPS_TO_RAS @ affine_lps,
        spacing=(slice_spacing, row_sp, col_sp),
        series_folder=folder,
    )


def _datasets_of(source) -> tuple[list[Dataset], list[Path | None]] | DicomSource:
    """The datasets of ``source`` and their paths, or the whole source for a multi-frame file."""
    if isinstance(source, Dataset):
        return [source], [None]
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        files = _files_in(path) if path.is_dir() else [path]
        datasets = [_read_file(f) for f in files]
        multiframe = [f for f, ds in zip(files, datasets) if _frames(ds) > 1]
        if multiframe and len(files) > 1:
            raise ValueError(f"{multiframe[0]}: a multi-frame file among {len(files)} files; give the file itself")
        if multiframe:
            return _read_multiframe(files[0], datasets[0])
        return datasets, list(files)
    datasets = list(source)
    if not datasets or not all(isinstance(d, Dataset) for d in datasets):
        raise TypeError("source: expected a path, a pydicom Dataset or a non-empty sequence of Datasets")
    return datasets, [None] * len(datasets)


def _check_identifiers(ds: Dataset, name: str) -> None:
    """The Study, Series and SOP Instance UIDs (Type 1 in every image IOD) are present and non-empty."""
    for key, label in _REQUIRED_UIDS:
        if not str(ds.get(key, "") or "").strip():
            raise ValueError(
                f"{name}: no {label}, a Type 1 attribute of every DICOM image; results are filed "
                "under it, so a file without it is refused"
            )


def _shared_value(ds: Dataset, key: str) -> str:
    """An attribute's value as compared across slices (absent and empty are the same)."""
    return str(ds.get(key, "") or "").strip()


def _check_one_series(datasets: list[Dataset], names: list[str]) -> None:
    """One series: every slice has the first slice's value of each of :data:`SERIES_ATTRIBUTES`.

    The message names the two files and the attribute, never the values (they may be names or IDs).
    """
    series: dict[str, list[str]] = {}
    for ds, name in zip(datasets, names):
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(name)
    if len(series) > 1:
        listing = "; ".join(f"{len(v)} files, e.g. {v[0]}" for v in series.values())
        raise ValueError(f"expected one series, found {len(series)} Series Instance UIDs: {listing}")
    first = datasets[0]
    for key, label in SERIES_ATTRIBUTES:
        expected = _shared_value(first, key)
        for ds, name in zip(datasets[1:], names[1:]):
            if _shared_value(ds, key) != expected:
                raise ValueError(
                    f"{name} and {names[0]}: {label} differs; every slice of a series must share it "
                    "(slices of another patient, study or series in the series folder?)"
                )


def _check_same_plane(datasets: list[Dataset], names: list[str], geometry: list) -> None:
    """Every slice with the first one's orientation, size and pixel spacing."""
    row0, col0, _ = geometry[0]
    size0 = (int(datasets[0].Rows), int(datasets[0].Columns))
    spacing0 = _pixel_spacing(datasets[0], names[0])
    for ds, name, (row, col, _) in zip(datasets, names, geometry):
        if np.abs(row - row0).max() > _ORIENTATION_TOL or np.abs(col - col0).max() > _ORIENTATION_TOL:
            raise ValueError(
                f"{name}: orientation {np.r_[row, col].round(4).tolist()} differs from "
                f"{names[0]}'s {np.r_[row0, col0].round(4).tolist()} (mixed orientations)"
            )
        if (int(ds.Rows), int(ds.Columns)) != size0:
            raise ValueError(f"{name}: size {ds.Rows}x{ds.Columns} differs from {names[0]}'s {size0[0]}x{size0[1]}")
        if not np.allclose(_pixel_spacing(ds, name), spacing0, rtol=1e-4):
            raise ValueError(f"{name}: pixel spacing {_pixel_spacing(ds, name)} differs from {names[0]}'s {spacing0}")


def _slice_spacing(positions: np.ndarray, normal: np.ndarray, names: list[str]) -> float:
    """The series' slice step (1 for one slice); errors for duplicate, missing or sheared slices."""
    if len(positions) < 2:
        return 1.0
    steps = np.diff(positions @ normal)
    for i, step in enumerate(steps):
        if step < 1e-3:
            raise ValueError(
                f"{names[i]} and {names[i + 1]}: same slice position {positions[i].round(3).tolist()} (duplicate slice)"
            )
    slice_spacing = float(np.median(steps))
    for i, step in enumerate(steps):
        if abs(step - slice_spacing) > _SPACING_REL_TOL * slice_spacing:
            raise ValueError(
                f"{names[i]} -> {names[i + 1]}: slice step {step:.3f} mm where the series "
                f"steps {slice_spacing:.3f} mm (missing slice or irregular series)"
            )
    in_plane = positions[1:] - positions[:-1] - np.outer(steps, normal)
    if np.abs(in_plane).max() > 1e-2 * max(slice_spacing, 1.0):
        raise ValueError(
            f"{names[0]} ... {names[-1]}: slices are not stacked along their normal (a sheared or mixed series)"
        )
    return slice_spacing
