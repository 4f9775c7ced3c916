"""MONAI transforms that write a map, back on its source grid, into the source DICOM study.

:class:`ExportDicom` takes a channel-first map ``MetaTensor`` ``(1, *S)`` whose metadata name the
source DICOM (``filename_or_obj``: a file or a series folder, as ``LoadImage`` sets it) and whose affine
is the source's (the map after ``Invertd`` through the preprocessing), reads that source with medhdm's
reader, and writes the DICOM objects of :func:`medhdm.export.export` (SC, PM, SEG, SR) into
``output_dir/<name>_dicom/``, ``<name>`` being the source file's name without ``.dcm`` or the series
folder's name (with ``data_root_dir``: under the source's folder relative to it, as ``SaveImage`` does).
:class:`ExportDicomd` is its dictionary wrapper, which also reads the explained class and probability that
:class:`~medhdm.transforms.Explaind` stores beside the map, for the SR. The bundle component
(``explain.json``, :mod:`medhdm.models.bundle`) runs it after ``SaveImaged`` when
``explain_dicom_formats`` names formats::

    from monai.transforms import Compose, Invertd
    from medhdm.export import ExportDicomd
    from medhdm.transforms import Explaind

    post = Compose([
        Explaind(keys="image", explainer=explainer, output_key="saliency"),
        Invertd(keys="saliency", transform=preprocessing, orig_keys="image", nearest_interp=False),
        ExportDicomd(keys="saliency", output_dir="maps", formats=("pm", "seg", "sr"), method=explainer.name),
    ])

A source that is not DICOM, a map that is not on the source grid (shape or affine more than 0.01 mm
away) or outside [0, 1] is an error naming the file; an existing export is kept unless ``overwrite``
(:class:`~medhdm.export.staging.OutputExistsError`). The findings' SEG and the SR's finding groups are not
written here (the findings are on the classifier's grid; ``medhdm explain --export`` writes them).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from ..io.dicom import read_dicom
from ..io.maps import map_in_source_order
from ..io.reader import is_dicom_path
from .api import DICOM_FORMATS, check_formats, export, map_on_source_grid
from .sr import ReportContent

__all__ = ["ExportDicom", "ExportDicomd"]


def _output_folder(output_dir: Path, source: Path, data_root_dir: str | os.PathLike | None) -> Path:
    """``output_dir/[<source's folder relative to data_root_dir>/]<name>_dicom``."""
    name = source.name[: -len(".dcm")] if source.name.lower().endswith(".dcm") else source.name
    folder = output_dir
    if data_root_dir:
        root = Path(data_root_dir).resolve()
        try:
            folder = output_dir / source.parent.relative_to(root)
        except ValueError:
            raise ValueError(f"data_root_dir: {source} does not lie in {root}") from None
    return folder / f"{name}_dicom"


class ExportDicom(Transform):
    """Write the map ``(1, *S)`` on its source grid into the source DICOM study (see the module docstring).

    Args:
        output_dir: where the ``<name>_dicom`` folders go.
        formats: some of ``sc``, ``pm``, ``seg``, ``sr``; none: nothing is written (the transform passes).
        method: the method named in the series descriptions.
        seg_threshold: the SEG's threshold on the map, in (0, 1].
        data_root_dir: keep the sources' folders relative to it (as ``SaveImage``'s ``data_root_dir``).
        overwrite: replace an export that a ``<name>_dicom`` folder already holds.
        allow_inside_source: allow an output folder inside a source series folder.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        formats: str | Sequence[str] = ("sc", "pm", "seg"),
        method: str = "HDM",
        seg_threshold: float = 0.5,
        data_root_dir: str | os.PathLike | None = None,
        overwrite: bool = False,
        allow_inside_source: bool = False,
    ) -> None:
        given = [formats] if isinstance(formats, str) else list(formats or [])
        self.formats = check_formats(given, DICOM_FORMATS, name="formats") if given else []
        if not 0.0 < float(seg_threshold) <= 1.0:
            raise ValueError(f"seg_threshold: expected a value in (0, 1], got {seg_threshold}")
        self.output_dir = Path(output_dir)
        self.method = str(method)
        self.seg_threshold = float(seg_threshold)
        self.data_root_dir = data_root_dir
        self.overwrite = bool(overwrite)
        self.allow_inside_source = bool(allow_inside_source)

    def __call__(
        self, saliency: MetaTensor, class_idx: int | None = None, probability: float | None = None
    ) -> dict[str, list[Path]]:
        """Export ``saliency``; the written paths by format (``{}`` without formats).

        ``class_idx`` (and ``probability``) are what the SR reports; the SR needs ``class_idx``.
        """
        if not self.formats:
            return {}
        if not isinstance(saliency, MetaTensor) or not saliency.meta.get("filename_or_obj"):
            raise ValueError(
                "saliency: expected a MetaTensor whose meta names its source (filename_or_obj), "
                f"got {type(saliency).__name__}"
            )
        path = Path(str(saliency.meta["filename_or_obj"])).resolve()
        if not is_dicom_path(path):
            raise ValueError(f"{path}: not a DICOM file or series folder; DICOM objects need a DICOM source")
        if "sr" in self.formats and class_idx is None:
            raise ValueError("class_idx: the SR (formats 'sr') needs the explained class's index")
        source = read_dicom(path)
        where = f"the map of {path}"
        array = map_in_source_order(saliency.detach().cpu().numpy(), saliency.affine.cpu().numpy(), source, where)
        report = None if class_idx is None else ReportContent(int(class_idx), probability)
        return export(
            source,
            map_on_source_grid(array, source, name=where),
            _output_folder(self.output_dir, path, self.data_root_dir),
            self.formats,
            method=self.method,
            class_label=class_idx,
            seg_threshold=self.seg_threshold,
            allow_inside_source=self.allow_inside_source,
            overwrite=self.overwrite,
            report=report if "sr" in self.formats else None,
        )


class ExportDicomd(MapTransform):
    """Dictionary wrapper of :class:`ExportDicom`: export ``data[key]``, the explained class and probability read from
    ``<key>_class`` and ``<key>_score`` (as :class:`~medhdm.transforms.Explaind` stores them; absent: not in the SR,
    which then cannot be written). The written paths by format go under ``<key>_dicom``.

    Args:
        keys: the map key(s), each map on its source grid (after ``Invertd``).
        The rest: as :class:`ExportDicom`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        formats: str | Sequence[str] = ("sc", "pm", "seg"),
        method: str = "HDM",
        seg_threshold: float = 0.5,
        data_root_dir: str | os.PathLike | None = None,
        overwrite: bool = False,
        allow_inside_source: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.exporter = ExportDicom(
            output_dir, formats, method, seg_threshold, data_root_dir, overwrite, allow_inside_source
        )

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            class_idx = d.get(f"{key}_class")
            probability = d.get(f"{key}_score")
            d[f"{key}_dicom"] = self.exporter(
                d[key],
                None if class_idx is None else int(class_idx),
                None if probability is None else float(probability),
            )
        return d
