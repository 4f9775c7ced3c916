"""MONAI bundles (the Model Zoo layout) as medhdm classifiers, with the bundle's own preprocessing.

A bundle folder holds ``configs/metadata.json``, ``configs/inference.json`` (or ``.yaml``)
with ``network_def`` and ``preprocessing``, and ``models/model.pt``. :func:`load_bundle`
builds the network from ``network_def`` with MONAI's ``ConfigParser`` and loads the
checkpoint; :func:`bundle_preprocessing` builds the bundle's ``preprocessing`` the same
way (never re-typed), less its loading steps (``LoadImage(d)``, ``EnsureChannelFirst(d)``):
medhdm loads the study itself (:class:`~medhdm.transforms.LoadStudy`, a channel-first
``MetaTensor`` on the source grid, as ``LoadImaged`` + ``EnsureChannelFirstd`` give it), and
the rest runs on key ``"image"``, so ``Invertd`` takes a map back through it.
:func:`bundle_digest` is the SHA-256 of the bundle's configuration files and checkpoint,
the bundle's part of a run's configuration hash.

The bundle component :data:`EXPLAIN_CONFIG` (``explain.json``, copied into a bundle by
:func:`write_explain_config`) explains every case of the bundle's own inference::

    python -m monai.bundle run --config_file "['configs/inference.json','configs/explain.json']" --bundle_root .

It adds medhdm's :class:`~medhdm.transforms.Explaind` (method ``explain_method``, default
``hdm``, keyword arguments ``explain_args``), ``Invertd`` through the bundle's
``preprocessing`` and ``SaveImaged`` to the evaluator's ``postprocessing`` (after the
bundle's own), so each map is written on its source grid beside the predictions
(``explain_output_dir``, default the bundle's ``output_dir``; with ``explain_data_root_dir``, in the
image's folder relative to it, for datasets whose files share a name). With ``explain_dicom_formats`` (some
of ``sc``, ``pm``, ``seg``, ``sr``; default none) a DICOM source's map also goes into its study as those
objects, in ``<name>_dicom/`` beside the map (:class:`~medhdm.export.ExportDicomd`; ``explain_dicom_seg_threshold``,
``explain_dicom_overwrite``). It expects the Model Zoo's
names: ``network``, ``preprocessing``, ``postprocessing``, ``evaluator``, ``output_dir``; its
``+imports`` adds to the bundle's ``imports`` instead of replacing them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "EXPLAIN_CONFIG",
    "Bundle",
    "bundle_digest",
    "bundle_network",
    "bundle_preprocessing",
    "load_bundle",
    "write_explain_config",
]

#: the bundle component: a config that ``python -m monai.bundle run`` merges after ``configs/inference.json``
EXPLAIN_CONFIG = Path(__file__).parent / "configs" / "explain.json"

_LOADING = ("LoadImage", "LoadImaged", "EnsureChannelFirst", "EnsureChannelFirstd")


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle.

    Attributes:
        path: the bundle folder.
        model: the network in eval mode, the checkpoint loaded.
        class_names: from ``metadata.json`` (``network_data_format.outputs.pred.channel_def``), in class order.
        spatial_shape: the input's ``spatial_shape`` in ``metadata.json`` (2 or 3 axes; 0 where it is not
            a number, such as ``"16*n"``).
        digest: :func:`bundle_digest`.
    """

    path: Path
    model: nn.Module
    class_names: tuple[str, ...]
    spatial_shape: tuple[int, ...]
    digest: str


def _config_file(folder: Path) -> Path:
    if not folder.is_dir():
        raise FileNotFoundError(f"bundle: {folder}: no such folder")
    for ext in ("json", "yaml", "yml"):
        if (folder / "configs" / f"inference.{ext}").is_file():
            return folder / "configs" / f"inference.{ext}"
    raise ValueError(f"bundle: {folder} is not a MONAI bundle (no configs/inference.json or .yaml)")


def _parser(folder: Path):
    from monai.bundle import ConfigParser

    config = _config_file(folder)
    parser = ConfigParser()
    try:
        parser.read_config(str(config))
    except (ValueError, OSError) as err:
        raise ValueError(f"bundle: cannot read {config} ({str(err).splitlines()[0]})") from None
    parser["bundle_root"] = str(folder)
    return parser, config


def _parsed(parser, config: Path, key: str):
    """``parser``'s content for ``key``, built; a missing key or one that cannot be built names it."""
    if key not in parser.config:
        raise ValueError(f"bundle: {config} defines no '{key}'")
    try:
        return parser.get_parsed_content(key, instantiate=True)
    except Exception as err:  # noqa: BLE001 (ConfigParser wraps any error of the config's code)
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        lines = str(cause).strip().splitlines() or [type(cause).__name__]
        raise ValueError(f"bundle: {config}: '{key}' cannot be built ({type(cause).__name__}: {lines[0]})") from None


def bundle_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of what :func:`load_bundle` reads: ``configs/metadata.json``, the inference config and
    ``models/model.pt``, each with its relative path."""
    folder = Path(path)
    files = [folder / "configs" / "metadata.json", _config_file(folder), folder / "models" / "model.pt"]
    digest = hashlib.sha256()
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"bundle: {folder}: no checkpoint {file.relative_to(folder)}")
        digest.update(str(file.relative_to(folder).as_posix()).encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _metadata(folder: Path) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Class names and the input's spatial shape from ``configs/metadata.json``."""
    meta_file = folder / "configs" / "metadata.json"
    try:
        meta = json.loads(meta_file.read_text())
        fmt = meta["network_data_format"]
        shape = fmt["inputs"]["image"]["spatial_shape"]
        channels = fmt["outputs"]["pred"].get("channel_def", {})
    except FileNotFoundError:
        raise ValueError(f"bundle: {folder} has no configs/metadata.json") from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"bundle: {meta_file}: expected network_data_format with inputs.image.spatial_shape and outputs.pred "
            f"({type(err).__name__}: {err})"
        ) from None
    if len(shape) not in (2, 3):
        raise ValueError(f"bundle: {meta_file}: inputs.image.spatial_shape has {len(shape)} axes; expected 2 or 3")
    names = tuple(str(channels[k]) for k in sorted(channels, key=lambda k: int(k)))
    return names, tuple(int(s) if isinstance(s, int) else 0 for s in shape)


def _load_checkpoint(model: nn.Module, folder: Path, device) -> None:
    from .loading import load_state

    weights = folder / "models" / "model.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"bundle: {folder}: no checkpoint models/model.pt")
    load_state(model, weights, device, what="bundle", target=f"'network_def' ({type(model).__name__})")


def load_bundle(path: str | os.PathLike, device: str | torch.device = "cpu") -> Bundle:
    """The bundle at ``path``: network from ``network_def`` with ``models/model.pt``, class names, digest.

    The model is in eval mode on ``device``; it also carries ``model.medhdm_card`` (``classes``
    and ``bundle``, the folder), as the shipped models do. Raises ``ValueError`` naming the key
    (``network_def``, ``preprocessing``) or the file that is missing or does not fit.
    """
    folder = Path(path)
    _config_file(folder)
    class_names, shape = _metadata(folder)
    model = bundle_network(folder, device)
    bundle_preprocessing(folder)  # a preprocessing that cannot be built fails here, before any work
    model.medhdm_card = {"classes": list(class_names), "bundle": str(folder)}  # type: ignore[attr-defined]
    return Bundle(folder, model, class_names, shape, bundle_digest(folder))


def bundle_network(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The bundle's network alone: ``network_def`` with ``models/model.pt``, in eval mode on ``device`` (what
    ``--model DIR`` loads; the input then comes from the input options, not from the bundle)."""
    folder = Path(path)
    parser, config = _parser(folder)
    model = _parsed(parser, config, "network_def")
    if not isinstance(model, nn.Module):
        raise ValueError(  # noqa: TRY004 (a bad bundle, not a wrong Python type)
            f"bundle: {config}: 'network_def' gives a {type(model).__name__}, not a torch.nn.Module"
        )
    _load_checkpoint(model, folder, device)
    return model.to(device).eval()


def bundle_preprocessing(path: str | os.PathLike):
    """The bundle's ``preprocessing`` (a MONAI ``Compose`` on key ``"image"``) without its loading steps."""
    from monai.transforms import Compose, MapTransform

    folder = Path(path)
    parser, config = _parser(folder)
    preprocessing = _parsed(parser, config, "preprocessing")
    steps = list(preprocessing.transforms) if isinstance(preprocessing, Compose) else [preprocessing]
    kept = [t for t in steps if type(t).__name__ not in _LOADING]
    for step in kept:
        if isinstance(step, MapTransform) and "image" not in step.keys:
            raise ValueError(
                f"bundle: {config}: 'preprocessing' step {type(step).__name__} works on keys {list(step.keys)}; "
                "medhdm passes the image as 'image'"
            )
    return Compose(kept)


def write_explain_config(path: str | os.PathLike) -> Path:
    """Copy :data:`EXPLAIN_CONFIG` into the bundle ``path`` as ``configs/explain.json``; its path."""
    from ..io.atomic import atomic_write

    folder = Path(path)
    _config_file(folder)
    target = folder / "configs" / "explain.json"
    atomic_write(target, EXPLAIN_CONFIG.read_bytes())
    return target
