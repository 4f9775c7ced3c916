"""The structured report of one explained series: a TID 1500 Measurement Report (Comprehensive 3D SR).

Content tree (highdicom builds and validates it)::

    Imaging Measurement Report (TID 1500)
      Observer: device "medhdm" (the model's name as the device's model name, when known)
      Procedure reported: Imaging
      Imaging Measurements
        Measurement Group (TID 1411 volumetric ROI; TID 1501 without a SEG)
          Tracking Identifier / UID
          Referenced Segment: the saliency SEG, segment 1, with its source images   [with a SEG]
          Source images for the group: the explained images                        [without a SEG]
          Finding: Saliency (DCM 130404)
          Algorithm Identification (TID 4019): "medhdm <method>", medhdm's version, and with a run
              configuration its parameters: model name, model class, weights SHA-256, method settings
              (JSON), configuration SHA-256, classifier input (JSON)
          Explained class (qualitative evaluation, 99MEDHDM code "class<k>")
          Explained target region (qualitative evaluation, 99MEDHDM code "region-predicted",
              "region-component<k>" or "region-mask")                              [a segmenter's]
          Probability (DCM 122157) of the explained class, UCUM "1"                 [when known]
          Localisation and faithfulness (deletion/insertion AUC) scores (99MEDHDM)  [when given]
        Measurement Group per finding (TID 1411)                                  [with the findings' SEG]
          Tracking Identifier "finding k" / UID
          Referenced Segment: SEG_findings.dcm, segment k, with its source images
          Finding: Saliency (DCM 130404)
          Area (mm2) or Volume (mm3); evidence share and evidence in log-odds (99MEDHDM, UCUM "1")
          Image Region (DCM 111030): the finding's centroid, a POINT: SCOORD3D in the source's frame of
              reference (a volume), or SCOORD on the one source image (column, row; pixel centres at .5)

The evidence (Current Requested Procedure Evidence) lists the source images and the SEG.
:func:`build_structured_report` makes the data set (:func:`medhdm.export.export` writes it as
``SR.dcm`` beside the SC, PM and SEG, format ``"sr"``); :func:`read_structured_report` reads the
values back with highdicom.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .. import __version__

__all__ = ["SCORE_CODES", "ReportContent", "build_structured_report", "read_structured_report", "report_scores"]

_SCHEME = "99MEDHDM"
EXPLAINED_CLASS = Code("explained-class", _SCHEME, "Explained class")
EXPLAINED_REGION = Code("explained-region", _SCHEME, "Explained target region")
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
EVIDENCE_SHARE = Code("evidence-share", _SCHEME, "Share of the explanation's evidence")
EVIDENCE = Code("evidence-logodds", _SCHEME, "Evidence in log-odds of the explained class")
_SIZE = {
    "mm^2": (codes.SCT.Area, Code("mm2", "UCUM", "square millimeter")),
    "mm^3": (codes.SCT.Volume, Code("mm3", "UCUM", "cubic millimeter")),
}
_IMAGING = Code("363679005", "SCT", "Imaging")


def report_scores(scores: Mapping[str, float] | None) -> dict[str, float] | None:
    """The scores of ``scores`` (a scored map, :func:`medhdm.evaluation.score_saved_map`) that an SR carries:
    those of :data:`SCORE_CODES` with a finite value (an undefined one, NaN, is left out); ``None`` stays ``None``."""
    if scores is None:
        return None
    return {name: float(scores[name]) for name in SCORE_CODES if name in scores and math.isfinite(scores[name])}


@dataclass(frozen=True)
class ReportContent:
    """What the SR says about the explanation, beyond the images and the SEG it references.

    Attributes:
        class_idx: the explained class (coded ``class<k>``, scheme 99MEDHDM).
        probability: the model's probability of that class; ``None`` (not known): no Probability measurement.
        class_name: the class's name (the code's meaning; default ``class <k>``).
        config: the run configuration (:func:`medhdm.models.identity.run_configuration`): the
            algorithm's parameters and the device's model name; ``None`` (not known): left out.
        scores: localisation / faithfulness scores by name (:data:`SCORE_CODES`); a value that is not
            finite is left out of the SR.
        region: a segmenter's target region as it was asked: ``"predicted"`` (the model's own mask for
            the class), ``"component:k"`` or ``"mask"`` (given); the explained score is the class's mean
            logit over it. ``None``: a classifier (no region item).
        findings: the explanation's findings in rank order, each ``{"size", "size_unit", "share", "evidence"}``
            (:meth:`medhdm.explain.Finding.record`) and its centroid as ``"centroid_lps"`` (patient mm, x y z) or
            ``"centroid_pixel"`` (column, row on the first source image; :func:`medhdm.export.export` adds them);
            one measurement group each when the findings' SEG is given.

    Raises:
        ValueError: a class index below 0, a probability outside [0, 1], an unknown score name.
        TypeError: a score that is not a number.
    """

    class_idx: int
    probability: float | None = None
    class_name: str | None = None
    config: dict | None = field(default=None, repr=False)
    scores: Mapping[str, float] | None = None
    region: str | None = None
    findings: Sequence[Mapping] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.region is not None and _region_code(self.region) is None:
            raise ValueError(f"region: expected 'predicted', 'component:k' or 'mask', got {self.region!r}")
        if isinstance(self.class_idx, bool) or not isinstance(self.class_idx, int) or self.class_idx < 0:
            raise ValueError(f"class_idx: expected a class index (an integer, 0 or more), got {self.class_idx!r}")
        if self.probability is not None and not 0.0 <= float(self.probability) <= 1.0:
            raise ValueError(f"probability: expected a value in [0, 1], got {self.probability}")
        unknown = sorted(set(self.scores or {}) - set(SCORE_CODES))
        if unknown:
            raise ValueError(f"scores: unknown names {unknown}; expected some of {sorted(SCORE_CODES)}")
        for name, value in (self.scores or {}).items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"scores: {name}: expected a number, got {value!r}")


def _region_code(region: str) -> Code | None:
    """The code of a target region (``"predicted"``, ``"component:k"``, ``"mask"``); None for anything else."""
    head, _, k = region.partition(":")
    if region in ("predicted", "mask"):
        meaning = "the model's predicted mask" if region == "predicted" else "a given mask"
        return Code(f"region-{region}", _SCHEME, meaning)
    if head == "component" and k.isdigit() and int(k) >= 1:
        return Code(f"region-component{int(k)}", _SCHEME, f"connected component {int(k)} of the predicted mask")
    return None


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


def _centroid_region(finding: Mapping, sources: list[pydicom.Dataset]):
    """A finding's centroid as an Image Region POINT: SCOORD3D in the frame of reference, or SCOORD on the
    first source image; None when the record has neither."""
    if finding.get("centroid_lps") is not None:
        point = np.asarray([finding["centroid_lps"]], dtype=np.float64)
        return hd.sr.ImageRegion3D(hd.sr.GraphicTypeValues3D.POINT, point, str(sources[0].FrameOfReferenceUID))
    if finding.get("centroid_pixel") is not None:
        point = np.asarray([finding["centroid_pixel"]], dtype=np.float64)
        image = hd.sr.SourceImageForRegion.from_source_image(sources[0])
        return hd.sr.ImageRegion(hd.sr.GraphicTypeValues.POINT, point, image)
    return None


def _finding_groups(sources: list[pydicom.Dataset], seg: pydicom.Dataset, findings, uid) -> list:
    """One TID 1411 group per finding: tracked as ``"finding k"``, segment ``k`` of the findings' SEG, its size
    (Area or Volume, when in mm), its evidence share and log-odds, and its centroid (an Image Region POINT)."""
    groups = []
    for k, finding in enumerate(findings, start=1):
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=k,
            source_images=[hd.sr.SourceImageForSegmentation.from_source_image(ds) for ds in sources],
        )
        measurements = [
            hd.sr.Measurement(name=EVIDENCE_SHARE, value=float(finding["share"]), unit=_UNITLESS),
            hd.sr.Measurement(name=EVIDENCE, value=float(finding["evidence"]), unit=_UNITLESS),
        ]
        if finding["size_unit"] in _SIZE:
            name, unit = _SIZE[finding["size_unit"]]
            measurements.insert(0, hd.sr.Measurement(name=name, value=float(finding["size"]), unit=unit))
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid(f"sr/finding/{k}"), identifier=f"finding {k}"),
            referenced_segment=segment,
            finding_type=codes.DCM.Saliency,
            measurements=measurements,
        )
        region = _centroid_region(finding, sources)
        if region is not None:
            group[0].ContentSequence.append(region)
        groups.append(group)
    return groups


def _observer(uid: Callable[[str], str], config: dict | None) -> hd.sr.ObserverContext:
    """The device observer: medhdm, with the model's name (when the configuration is known) as the device's model."""
    model = str(config["model"]["name"])[:64] if config is not None else None
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid("sr/device"), name="medhdm", manufacturer_name="medhdm", model_name=model
        ),
    )


def _group_items(content: ReportContent, method: str, uid: Callable[[str], str]) -> dict:
    """What the measurement group holds besides its images: tracking, finding, algorithm, measurements, class."""
    parameters = _parameters(content.config) if content.config is not None else None
    algorithm = hd.sr.AlgorithmIdentification(name=f"medhdm {method}"[:64], version=__version__, parameters=parameters)
    measurements = []
    if content.probability is not None:
        measurements.append(
            hd.sr.Measurement(name=codes.DCM.Probability, value=float(content.probability), unit=_UNITLESS)
        )
    measurements += [  # a share that is not defined (no evidence above the reference: NaN) is left out
        hd.sr.Measurement(name=SCORE_CODES[name], value=float(value), unit=_UNITLESS)
        for name, value in sorted((content.scores or {}).items())
        if math.isfinite(float(value))
    ]
    explained = _class_code(content.class_idx, content.class_name)
    return {
        "tracking_identifier": hd.sr.TrackingIdentifier(uid=uid("sr/tracking"), identifier=f"{method} saliency"[:64]),
        "finding_type": codes.DCM.Saliency,
        "algorithm_id": algorithm,
        "measurements": measurements,
        "qualitative_evaluations": [
            hd.sr.QualitativeEvaluation(name=EXPLAINED_CLASS, value=explained),
            *(
                [hd.sr.QualitativeEvaluation(name=EXPLAINED_REGION, value=_region_code(content.region))]
                if content.region is not None
                else []
            ),
        ],
    }


def build_structured_report(
    sources: Sequence[pydicom.Dataset],
    content: ReportContent,
    *,
    method: str,
    uid: Callable[[str], str],
    series_number: int,
    seg: pydicom.Dataset | None = None,
    findings_seg: pydicom.Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The SR of one explained series (see the module docstring).

    Args:
        sources: the explained source images (their headers are enough), referenced in Instance Number order.
        content: the explained class, its probability, the run configuration and the scores.
        method: the explanation method, named in the algorithm, the tracking identifier and the series.
        uid: the derived UIDs from keys ``"sr/series"``, ``"sr/instance"``, ``"sr/tracking"``, ``"sr/device"``
            (:class:`~medhdm.export.dicom.DerivationInfo`: deterministic, or new random ones).
        series_number: the SR's Series Number.
        seg: the saliency SEG, referenced by the measurement group (``None``: none was made).
        findings_seg: the findings' SEG (one segment per finding of ``content.findings``, in order): one
            measurement group per finding, UIDs keyed ``"sr/finding/<k>"`` (``None``: no finding groups).
    """
    sources = sorted(sources, key=lambda ds: int(ds.get("InstanceNumber", 0) or 0))
    groups = [_measurement_group(sources, seg, _group_items(content, method, uid))]
    if findings_seg is not None and content.findings:
        groups += _finding_groups(sources, findings_seg, content.findings, uid)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_observer(uid, content.config)),
        procedure_reported=_IMAGING,
        imaging_measurements=groups,
    )
    referenced = [ds for ds in (seg, findings_seg if len(groups) > 1 else None) if ds is not None]
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, *referenced],
        content=report,
        series_instance_uid=uid("sr/series"),
        series_number=series_number,
        sop_instance_uid=uid("sr/instance"),
        instance_number=1,
        manufacturer="medhdm",
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = f"medhdm {method} report"[:64]
    sr.SoftwareVersions = f"medhdm {__version__}"
    return sr


def read_structured_report(path: str | os.PathLike) -> dict:
    """The values of an SR made by :func:`build_structured_report`, read back with highdicom.

    Returns:
        ``{"algorithm": name, "version", "parameters": {key: value}, "class_code", "class_meaning",
        "probability", "scores": {name: value}, "segment": SEG SOP Instance UID or None,
        "sources": [SOP Instance UIDs], "region_code", "region_meaning" (None for a classifier's),
        "findings": per finding group {"tracking", "uid", "segment", "segment_number", "size", "size_unit",
        "share", "evidence", "centroid_lps" (x y z, patient mm) or "centroid_pixel" (column, row) with
        "centroid_image" (its SOP Instance UID), None when absent}}``.
    """
    sr = hd.sr.srread(path)
    groups = sr.content.get_volumetric_roi_measurement_groups() or sr.content.get_image_measurement_groups()
    finding_groups = [g for g in groups if str(g.tracking_identifier or "").startswith("finding ")]
    groups = [g for g in groups if g not in finding_groups]
    if len(groups) != 1:
        raise ValueError(f"{path}: expected one measurement group of the map, found {len(groups)}")
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
        "region_code": None,
        "region_meaning": None,
    }
    for measurement in group.get_measurements():
        if measurement.name == codes.DCM.Probability:
            out["probability"] = float(measurement.value)
        elif measurement.name.value in names:
            out["scores"][names[measurement.name.value]] = float(measurement.value)
    for evaluation in group.get_qualitative_evaluations(name=EXPLAINED_CLASS):
        out["class_code"], out["class_meaning"] = evaluation.value.value, evaluation.value.meaning
    for evaluation in group.get_qualitative_evaluations(name=EXPLAINED_REGION):
        out["region_code"], out["region_meaning"] = evaluation.value.value, evaluation.value.meaning
    segment = getattr(group, "referenced_segment", None)
    if segment is not None:
        out["segment"] = str(segment.referenced_sop_instance_uid)
        images = segment.source_images_for_segmentation
    else:
        images = group.source_images
    out["sources"] = [str(image.referenced_sop_instance_uid) for image in images]
    out["findings"] = [_read_finding(g) for g in finding_groups]
    return out


def _read_finding(group) -> dict:
    """One finding group's values (see :func:`read_structured_report`)."""
    segment = group.referenced_segment
    out = {
        "tracking": str(group.tracking_identifier),
        "uid": str(group.tracking_uid),
        "segment": str(segment.referenced_sop_instance_uid),
        "segment_number": int(segment.referenced_segment_numbers[0]),
        "size": None,
        "size_unit": None,
        "centroid_lps": None,
        "centroid_pixel": None,
        "centroid_image": None,
    }
    for item in group[0].ContentSequence.find(codes.DCM.ImageRegion):
        if item.ValueType == "SCOORD3D":
            out["centroid_lps"] = tuple(float(v) for v in hd.sr.Scoord3DContentItem.from_dataset(item).value[0])
        elif item.ValueType == "SCOORD":
            scoord = hd.sr.ScoordContentItem.from_dataset(item)
            out["centroid_pixel"] = tuple(float(v) for v in scoord.value[0])
            out["centroid_image"] = str(item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    units = {code.value: unit for unit, (code, _) in _SIZE.items()}
    for measurement in group.get_measurements():
        if measurement.name.value in units:
            out["size"], out["size_unit"] = float(measurement.value), units[measurement.name.value]
        elif measurement.name == EVIDENCE_SHARE:
            out["share"] = float(measurement.value)
        elif measurement.name == EVIDENCE:
            out["evidence"] = float(measurement.value)
    return out
