"""The structured report of one explained series: a TID 1500 Measurement Report (Comprehensive 3D SR).

Content tree (highdicom builds and validates it)::

    Imaging Measurement Report (TID 1500)
      Observer: device "medhdm" (model name)
      Procedure reported: Imaging
      Imaging Measurements
        Measurement Group (TID 1411 volumetric ROI; TID 1501 without a SEG)
          Tracking Identifier / UID
          Referenced Segment: the saliency SEG, segment 1, with its source images   [with a SEG]
          Source images for the group: the explained images                        [without a SEG]
          Finding: Saliency (DCM 130404)
          Algorithm Identification (TID 4019): "medhdm <method>", medhdm's version, parameters:
              model name, model class, weights SHA-256, method settings (JSON), configuration SHA-256,
              classifier input (JSON)
          Explained class (qualitative evaluation, 99MEDHDM code "class<k>")
          Probability (DCM 122157) of the explained class, UCUM "1"
          Localisation and faithfulness (deletion/insertion AUC) scores (99MEDHDM)  [when given]

The evidence (Current Requested Procedure Evidence) lists the source images and the SEG.
:func:`read_structured_report` reads the values back with highdicom.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .. import __version__
from ..io.atomic import atomic_write

__all__ = ["SCORE_CODES", "read_structured_report", "write_structured_report"]

_SCHEME = "99MEDHDM"
EXPLAINED_CLASS = Code("explained-class", _SCHEME, "Explained class")
#: the scores an SR may carry, by their medhdm name (code values of at most 16 characters: a longer one is
#: written as LongCodeValue, which highdicom's reader of the referenced segment does not accept)
SCORE_CODES = {
    "pointing_game": Code("pointing-game", _SCHEME, "Pointing game hit"),
    "auroc": Code("saliency-auroc", _SCHEME, "Saliency AUROC against the lesion"),
    "lesion_hit_rate": Code("lesion-hit-rate", _SCHEME, "Lesion hit rate"),
    "energy_in_lesion": Code("energy-in-lesion", _SCHEME, "Saliency energy in the lesion"),
    "deletion_auc": Code("deletion-auc", _SCHEME, "Deletion AUC"),
    "insertion_auc": Code("insertion-auc", _SCHEME, "Insertion AUC"),
    "deletion_auc_log": Code("deletion-auclog", _SCHEME, "Deletion AUC over log share"),
    "insertion_auc_log": Code("insertion-auclog", _SCHEME, "Insertion AUC over log share"),
    "deletion_half": Code("deletion-half", _SCHEME, "Share deleted to remove half the evidence"),
    "insertion_half": Code("insertion-half", _SCHEME, "Share inserted to restore half the evidence"),
}
_UNITLESS = Code("1", "UCUM", "no units")
_IMAGING = Code("363679005", "SCT", "Imaging")


def _class_code(class_idx: int, name: str | None) -> Code:
    return Code(f"class{class_idx}", _SCHEME, (name or f"class {class_idx}")[:64])


def _parameters(config: dict) -> list[str]:
    model = config["model"]
    extra = {k: v for k, v in config.get("extra", {}).items()}
    return [
        f"model name: {model['name']}",
        f"model class: {model['class']}",
        f"model weights sha256: {model['weights_sha256']}",
        f"method settings: {json.dumps(config['settings'], sort_keys=True, default=repr)}",
        f"configuration sha256: {_config_hash(config)}",
        f"input: {json.dumps(extra, sort_keys=True, default=repr)}",
    ]


def _config_hash(config: dict) -> str:
    from ..models.identity import configuration_hash

    return configuration_hash(config)


def _measurement_group(sources: list[pydicom.Dataset], seg: pydicom.Dataset | None, common: dict):
    """TID 1411 (volumetric ROI: the SEG's segment 1 with its source images), or TID 1501 without a SEG."""
    if seg is not None:
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=1,
            source_images=[hd.sr.SourceImageForSegmentation.from_source_image(ds) for ds in sources],
        )
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **common)
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources], **common
        )
    return group


def _observer(uids, config: dict) -> hd.sr.ObserverContext:
    """The device observer: medhdm, with the model's name as the device's model name."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids("sr/device"),
            name="medhdm",
            manufacturer_name="medhdm",
            model_name=str(config["model"]["name"])[:64],
        ),
    )


def write_structured_report(
    path: str | os.PathLike,
    source_paths: Sequence[str | os.PathLike],
    *,
    config: dict,
    class_idx: int,
    probability: float,
    uids,
    seg_path: str | os.PathLike | None = None,
    class_name: str | None = None,
    scores: dict[str, float] | None = None,
) -> Path:
    """Write the SR of one explained series to ``path`` (atomically); returns ``path``.

    Args:
        path: the SR file.
        source_paths: the explained source images (headers are read).
        config: the run configuration (:func:`medhdm.pacs.run.pacs_configuration`).
        class_idx, probability: the explained class and its probability.
        uids: the series' :class:`~medhdm.pacs.uids.DerivedUIDs` (``"sr/series"``, ``"sr/instance"``, ...).
        seg_path: the saliency SEG, referenced by the measurement group (``None``: none was made).
        class_name: the class's name, if the model card gives one.
        scores: localisation / faithfulness scores by name (:data:`SCORE_CODES`); ``None`` when the study
            has no lesion annotation to score against (the SR then holds none).
    """
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in source_paths]
    sources.sort(key=lambda ds: int(ds.get("InstanceNumber", 0) or 0))
    first = sources[0]
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True) if seg_path is not None else None
    unknown = sorted(set(scores or {}) - set(SCORE_CODES))
    if unknown:
        raise ValueError(f"scores: unknown names {unknown}; expected some of {sorted(SCORE_CODES)}")
    method = str(config["method"])
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"medhdm {method}"[:64], version=__version__, parameters=_parameters(config)
    )
    measurements = [hd.sr.Measurement(name=codes.DCM.Probability, value=float(probability), unit=_UNITLESS)]
    measurements += [  # a share that is not defined (no evidence above the reference: NaN) is left out
        hd.sr.Measurement(name=SCORE_CODES[name], value=float(value), unit=_UNITLESS)
        for name, value in sorted((scores or {}).items())
        if math.isfinite(float(value))
    ]
    evaluations = [hd.sr.QualitativeEvaluation(name=EXPLAINED_CLASS, value=_class_code(class_idx, class_name))]
    tracking = hd.sr.TrackingIdentifier(uid=uids("sr/tracking"), identifier=f"{method} saliency"[:64])
    common = {
        "tracking_identifier": tracking,
        "finding_type": codes.DCM.Saliency,
        "algorithm_id": algorithm,
        "measurements": measurements,
        "qualitative_evaluations": evaluations,
    }
    group = _measurement_group(sources, seg, common)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_observer(uids, config)),
        procedure_reported=_IMAGING,
        imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=sources + ([seg] if seg is not None else []),
        content=report,
        series_instance_uid=uids("sr/series"),
        series_number=int(first.get("SeriesNumber", 0) or 0) + 1003,
        sop_instance_uid=uids("sr/instance"),
        instance_number=1,
        manufacturer="medhdm",
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = f"medhdm {method} report"[:64]
    sr.SoftwareVersions = f"medhdm {__version__}"
    out = Path(path)
    atomic_write(out, lambda tmp: sr.save_as(tmp, enforce_file_format=True))
    return out


def read_structured_report(path: str | os.PathLike) -> dict:
    """The values of an SR written by :func:`write_structured_report`, read back with highdicom.

    Returns:
        ``{"algorithm": name, "version", "parameters": {key: value}, "class_code", "class_meaning",
        "probability", "scores": {name: value}, "segment": SEG SOP Instance UID or None,
        "sources": [SOP Instance UIDs]}``.
    """
    sr = hd.sr.srread(path)
    groups = sr.content.get_volumetric_roi_measurement_groups() or sr.content.get_image_measurement_groups()
    if len(groups) != 1:
        raise ValueError(f"{path}: expected one measurement group, found {len(groups)}")
    group = groups[0]

    def texts(code: Code) -> list[str]:  # the group's own content items (TID 4019 items hang off the container)
        return [str(item.value) for item in group[0].ContentSequence.find(code)]

    parameters = {}
    for text in texts(codes.DCM.AlgorithmParameters):
        key, _, value = text.partition(": ")
        parameters[key] = value
    names = {code.value: name for name, code in SCORE_CODES.items()}
    out = {
        "algorithm": next(iter(texts(codes.DCM.AlgorithmName)), None),
        "version": next(iter(texts(codes.DCM.AlgorithmVersion)), None),
        "parameters": parameters,
        "class_code": None,
        "class_meaning": None,
        "probability": None,
        "scores": {},
        "segment": None,
        "sources": [],
    }
    for measurement in group.get_measurements():
        if measurement.name == codes.DCM.Probability:
            out["probability"] = float(measurement.value)
        elif measurement.name.value in names:
            out["scores"][names[measurement.name.value]] = float(measurement.value)
    for evaluation in group.get_qualitative_evaluations(name=EXPLAINED_CLASS):
        out["class_code"], out["class_meaning"] = evaluation.value.value, evaluation.value.meaning
    segment = getattr(group, "referenced_segment", None)
    if segment is not None:
        out["segment"] = str(segment.referenced_sop_instance_uid)
        images = segment.source_images_for_segmentation
    else:
        images = group.source_images
    out["sources"] = [str(image.referenced_sop_instance_uid) for image in images]
    return out
