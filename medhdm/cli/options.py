"""The option groups that several commands share, each declared once beside the function that reads it.

- model: ``--model --bundle --weights --model-args --spatial-size --layout --axcodes --intensity-range --device
  --slices --slice-reduce`` (:func:`add_model_options`; :func:`model_and_spec`, :func:`slices`,
  :func:`check_device`);
- method: ``--method --method-args --steps --class-idx`` (:func:`add_method_options`;
  :func:`method_arguments`, :func:`make_method`), the names read from :mod:`medhdm.explain.registry`;
- credentials: ``--token-file --basic-auth-file`` (:func:`add_credential_options`);
- de-identification: ``--deidentify --deidentify-salt-file --deidentify-salt --retain-dates``
  (:func:`add_deidentify_options`; :func:`deidentification`);
- engine: ``--engine --workers --gpus-per-worker --address --batch-size`` (:func:`add_engine_options`;
  :func:`engine_options`);
- export: ``--format --cmap --threshold --alpha --no-legend --window-preset --seg-threshold``
  (:func:`add_export_options`; :func:`format_list`, :func:`overlay_style`).

The readers check every value before any work and raise ``ValueError`` naming the flag.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..explain.registry import METHODS

__all__ = [
    "add_credential_options",
    "add_deidentify_options",
    "add_engine_options",
    "add_export_options",
    "add_method_options",
    "add_model_options",
    "add_steps_option",
    "check_case_folders",
    "check_device",
    "check_out_folder",
    "deidentification",
    "engine_options",
    "finish_command",
    "format_list",
    "make_method",
    "method_arguments",
    "method_names",
    "model_and_spec",
    "overlay_style",
    "parse_json",
    "slices",
]


def finish_command(parser: argparse.ArgumentParser, run) -> None:
    """``run(args)`` runs the command; ``args.cli_flags`` holds its option strings (for :func:`~medhdm.cli.main.main`
    to name a flag where a message below the CLI names a parameter)."""
    flags = frozenset(s for action in parser._actions for s in action.option_strings)  # argparse lists no other way
    parser.set_defaults(func=run, cli_flags=flags)


# -- output folders, JSON, format lists -------------------------------------------------------------


def check_out_folder(path: str, option: str = "--out") -> None:
    """``path`` can be (or become) a folder: refused if it, or a folder above it, exists and is not a folder."""
    out = Path(path)
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "" if folder == out else f" (a folder above {out})"
                raise ValueError(f"{option}: {folder}{what} exists and is not a folder")
            return


def check_case_folders(out: str, ids: list[str]) -> None:
    """Each case's folder ``out/<id>`` is a folder or does not exist yet."""
    for name in ids:
        folder = Path(out) / name
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--out: {folder} exists and is not a folder (the outputs of case {name} go there)")


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}


def parse_json(text: str | None, name: str) -> dict:
    """The JSON object given to the option ``name`` (``{}`` when the option is absent)."""
    import json

    if text is None:
        return {}
    if not text.strip():
        raise ValueError(f"{name}: empty; give a JSON object such as '{{\"seed\": 1}}', or leave the option out")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name}: not valid JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"{name}: JSON nested too deeply") from None
    if not isinstance(value, dict):
        kind = "null" if value is None else "true/false" if isinstance(value, bool) else _JSON_TYPES[type(value)]
        raise ValueError(f"{name}: expected a JSON object {{...}}, got {kind}")  # noqa: TRY004 (bad input)
    return value


def format_list(text: str | None) -> list[str]:
    """The comma-separated formats of ``text`` (empty items left out)."""
    return [f.strip() for f in (text or "").split(",") if f.strip()]


# -- model ------------------------------------------------------------------------------------------


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The classifier and its input: ``--model`` ... ``--slice-reduce``."""
    parser.add_argument(
        "--model",
        default="default",
        help="'default' (2D) or 'default3d', 'segmenter2d' or 'segmenter3d', a TorchScript file, "
        "a MONAI bundle folder, or a network class path such as monai.networks.nets.DenseNet121 "
        "(with --weights)",
    )
    parser.add_argument(
        "--bundle",
        default=None,
        metavar="DIR",
        help="a MONAI bundle folder: its network_def with models/model.pt, its own preprocessing and class names "
        "(instead of --model and the input options)",
    )
    parser.add_argument("--weights", default=None, help="state-dict file for a network class path")
    parser.add_argument("--model-args", default=None, help="JSON keyword arguments of the network class")
    parser.add_argument("--spatial-size", default=None, help="classifier input size, e.g. 96,96 (default: card)")
    parser.add_argument(
        "--layout",
        default="dicom",
        choices=("dicom", "monai"),
        help="array layout the classifier "
        "expects: dicom = (slice, row, column) as in DICOM pixel data (default; the shipped models), "
        "monai = MONAI's order reoriented to --axcodes",
    )
    parser.add_argument("--axcodes", default=None, help="orientation for --layout monai (default RAS); implies it")
    parser.add_argument(
        "--intensity-range",
        default=None,
        help="map these values to 0,1 instead of the 1st-99.5th "
        "percentiles, e.g. --intensity-range=-1000,0 for LesionBench files",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--slices",
        default=None,
        help="a 2D classifier or segmenter on 3D series: explain slice by slice, "
        "'all', 'top:K' (the K slices with the highest class probability; a segmenter's: of the target "
        "region's mean logits in the slice, slices without region left out) or indices like 3,4,5 "
        "(0-based, series order); the map is 0 on the other slices",
    )
    parser.add_argument(
        "--slice-reduce",
        default="max",
        choices=("max", "mean"),
        help="with --slices: the study-level probability of a class, max (default) or mean over slices",
    )


def _pair(text: str, convert, option: str, expected: str) -> tuple:
    try:
        return tuple(convert(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{option}: expected {expected}, got {text!r}") from None


def model_and_spec(args: argparse.Namespace):
    """The classifier's recipe (:class:`medhdm.cohort.ModelRecipe`), the classifier and its input spec."""
    from ..cohort import ModelRecipe
    from ..pipeline import InputSpec

    if args.bundle is not None:
        return _bundle_and_spec(args)
    recipe = ModelRecipe(args.model, args.weights, parse_json(args.model_args, "--model-args"), args.device)
    # with --engine ray the workers load it on --device; here it only gives the input size and configuration
    model = recipe.load("cpu" if getattr(args, "engine", "local") == "ray" else None)
    size = _pair(args.spatial_size, int, "--spatial-size", "sizes like 96,96") if args.spatial_size else None
    spatial_size = InputSpec.for_model(model, size).spatial_size
    intensity_range = None
    if args.intensity_range:
        expected = "two numbers like -1000,0"
        intensity_range = _pair(args.intensity_range, float, "--intensity-range", expected)
        if len(intensity_range) != 2:
            raise ValueError(f"--intensity-range: expected {expected}, got {args.intensity_range!r}")
    layout = "monai" if args.axcodes else args.layout
    spec = InputSpec(spatial_size, layout=layout, axcodes=args.axcodes or "RAS", intensity_range=intensity_range)
    return recipe, model, spec


_INPUT_FLAGS = {
    "model": "--model",
    "weights": "--weights",
    "model_args": "--model-args",
    "spatial_size": "--spatial-size",
    "axcodes": "--axcodes",
    "intensity_range": "--intensity-range",
    "slices": "--slices",
}


def _bundle_and_spec(args: argparse.Namespace):
    """:func:`model_and_spec` for ``--bundle``: the bundle's network, preprocessing and class names."""
    from ..cohort import ModelRecipe
    from ..models import load_bundle
    from ..pipeline import InputSpec

    given = [flag for name, flag in _INPUT_FLAGS.items() if getattr(args, name, None) not in (None, "default")]
    if args.layout != "dicom":
        given.append("--layout")
    if given:
        raise ValueError(f"--bundle: the bundle gives the network and its input; leave out {', '.join(given)}")
    if not Path(args.bundle).is_dir():
        raise FileNotFoundError(f"--bundle: {args.bundle}: no such folder")
    bundle = load_bundle(args.bundle, "cpu" if getattr(args, "engine", "local") == "ray" else args.device)
    recipe = ModelRecipe(str(Path(args.bundle)), None, {}, args.device)
    return recipe, bundle.model, InputSpec.from_bundle(bundle)


def slices(args: argparse.Namespace):
    """The --slices / --slice-reduce options as a :class:`~medhdm.pipeline.SliceSelection` (None without --slices)."""
    from ..pipeline import SliceSelection

    if args.slices is None:
        return None
    text = args.slices.strip()
    if not text or ("," in text and not all(v.strip() for v in text.split(","))):
        raise ValueError(f"--slices: expected 'all', 'top:K' or slice indices like 3,4,5, got {args.slices!r}")
    return SliceSelection.parse(text, reduce=args.slice_reduce)


def check_device(name: str, here: bool = True) -> None:
    """``name`` is cpu or cuda[:N]; with ``here``, a CUDA device must exist on this machine."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: expected cpu or cuda (cuda:N), got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda (cuda:N), got {name!r}")
    if not here:  # --engine ray: the workers' machines have the GPUs, not necessarily this one
        return
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {name} asked for, but no CUDA device is available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device: {name} asked for, but there are {torch.cuda.device_count()} CUDA device(s)")


# -- method -----------------------------------------------------------------------------------------


def method_names() -> str:
    """The method names :mod:`medhdm.explain.registry` knows, comma-separated."""
    return ", ".join(METHODS)


def add_steps_option(parser: argparse.ArgumentParser) -> None:
    """``--steps``: the optimiser steps of the mask methods."""
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps of mask methods")


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """The explainer: ``--method``, ``--method-args``, ``--steps``, ``--class-idx``."""
    parser.add_argument("--method", default="hdm", help=f"explanation method: {method_names()} (default hdm)")
    parser.add_argument("--method-args", default=None, help="JSON keyword arguments of the explainer")
    add_steps_option(parser)
    parser.add_argument("--class-idx", type=int, default=None, help="class to explain (default: the predicted one)")


def method_arguments(args: argparse.Namespace) -> tuple[int | None, dict]:
    """``--steps`` and ``--method-args`` checked against the method (and ``--class-idx``): its steps and keyword
    arguments."""
    from ..explain.registry import method_arguments as checked

    if args.class_idx is not None and args.class_idx < 0:
        raise ValueError(f"--class-idx: expected a class index >= 0, got {args.class_idx}")
    arguments = parse_json(args.method_args, "--method-args")
    return checked(args.method, args.steps, arguments, "--method-args", "--steps")


def make_method(args: argparse.Namespace, model):
    """The explainer that the method options ask for, for ``model``."""
    from ..explain.registry import make_explainer

    steps, method_args = method_arguments(args)
    return make_explainer(args.method, model, steps=steps, **method_args)


# -- credentials ------------------------------------------------------------------------------------


def add_credential_options(parser: argparse.ArgumentParser) -> None:
    """``--token-file`` and ``--basic-auth-file``: the DICOMweb credentials in files, never on the command line."""
    for flag, what, variables in (
        ("--token-file", "a DICOMweb bearer token", "MEDHDM_PACS_TOKEN"),
        ("--basic-auth-file", "user:password for DICOMweb", "MEDHDM_PACS_USER/MEDHDM_PACS_PASSWORD"),
    ):
        parser.add_argument(flag, default=None, help=f"file holding {what} (or {variables})")


def add_tls_options(parser: argparse.ArgumentParser, server: bool = False) -> None:
    """``--tls-cert``, ``--tls-key``, ``--tls-ca``: TLS for DIMSE (and the CA bundle for an https:// DICOMweb URL)."""
    group = parser.add_argument_group("TLS (DIMSE over TLS; HTTPS for DICOMweb)")
    whose = "this service's" if server else "our client"
    group.add_argument("--tls-cert", default=None, help=f"PEM file: {whose} certificate (DIMSE over TLS)")
    group.add_argument("--tls-key", default=None, help="PEM file: its private key (default: in --tls-cert)")
    peer = "calling nodes must present a certificate it signed" if server else "the archive's certificate is verified"
    group.add_argument("--tls-ca", default=None, help=f"PEM file: CA bundle; {peer} against it")


def tls_files(args: argparse.Namespace):
    """The :class:`~medhdm.pacs.tls.TlsFiles` of the TLS options, or ``None`` when none is given."""
    if not (args.tls_cert or args.tls_key or args.tls_ca):
        return None
    from ..pacs.tls import TlsFiles

    return TlsFiles(
        Path(args.tls_cert) if args.tls_cert else None,
        Path(args.tls_key) if args.tls_key else None,
        Path(args.tls_ca) if args.tls_ca else None,
    )


# -- de-identification ------------------------------------------------------------------------------


def add_deidentify_options(parser: argparse.ArgumentParser, what: str = "the DICOM outputs") -> None:
    """``--deidentify``, its secret (``--deidentify-salt-file``, ``--deidentify-salt``) and ``--retain-dates``."""
    parser.add_argument(
        "--deidentify",
        action="store_true",
        help=f"de-identify {what} (PS3.15 Basic "
        "Profile) with the secret in MEDHDM_DEIDENTIFY_SALT or --deidentify-salt-file",
    )
    parser.add_argument(
        "--deidentify-salt-file", default=None, help="file holding the de-identification secret (implies --deidentify)"
    )
    parser.add_argument(
        "--deidentify-salt",
        default=None,
        help="the secret itself (visible in the process list; prefer MEDHDM_DEIDENTIFY_SALT or --deidentify-salt-file)",
    )
    parser.add_argument(
        "--retain-dates",
        action="store_true",
        help="with --deidentify: keep dates and times (Retain Longitudinal Temporal Information option)",
    )


def _read_salt_file(path: Path) -> str:
    try:
        salt = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise ValueError(f"--deidentify-salt-file: cannot read {path} ({reason})") from None
    if not salt:
        raise ValueError(f"--deidentify-salt-file: {path} is empty")
    return salt


def _deidentify_salt(args: argparse.Namespace) -> str | None:
    """The salt from --deidentify-salt-file, MEDHDM_DEIDENTIFY_SALT (with --deidentify), or --deidentify-salt."""
    if args.deidentify_salt and args.deidentify_salt_file:
        raise ValueError("give one of --deidentify-salt and --deidentify-salt-file")
    if args.deidentify_salt_file:
        return _read_salt_file(Path(args.deidentify_salt_file))
    if args.deidentify_salt:
        return args.deidentify_salt
    if args.deidentify:
        salt = os.environ.get("MEDHDM_DEIDENTIFY_SALT", "").strip()
        if not salt:
            raise ValueError("--deidentify: set MEDHDM_DEIDENTIFY_SALT or give --deidentify-salt-file")
        return salt
    if args.retain_dates:
        raise ValueError("--retain-dates: only with de-identification (--deidentify)")
    return None


def deidentification(args: argparse.Namespace):
    """The :class:`~medhdm.export.Deidentification` that the de-identification options ask for, or ``None``."""
    salt = _deidentify_salt(args)
    if salt is None:
        return None
    from ..export import Deidentification

    return Deidentification(salt, retain_dates=args.retain_dates)


# -- engine -----------------------------------------------------------------------------------------


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The cohort engine: ``--engine``, ``--workers``, ``--gpus-per-worker``, ``--address``, ``--batch-size``."""
    parser.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="local (default: this process) or ray (a pool of workers; pip install -e '.[ray]')",
    )
    parser.add_argument("--workers", type=int, default=None, help="--engine ray: number of workers (default 2)")
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        help="--engine ray: GPUs per worker, fractions share a GPU (default 0: CPU)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="--engine ray: an existing cluster, auto or ray://host:10001 (default: a local cluster on this machine)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="cases explained together in one batch (same input shape; split and retried if out of memory)",
    )


def engine_options(args: argparse.Namespace):
    """The engine options and ``--overwrite`` as a :class:`medhdm.cohort.CohortOptions`."""
    from ..cohort import CohortOptions

    if args.engine == "local" and (args.address or args.workers is not None or args.gpus_per_worker):
        raise ValueError("--workers, --gpus-per-worker and --address: only with --engine ray")
    # the values are checked by CohortOptions (its messages name the parameters; main names the flags)
    cohort = CohortOptions(
        engine=args.engine,
        batch_size=args.batch_size,
        workers=2 if args.workers is None else args.workers,
        gpus_per_worker=args.gpus_per_worker,
        address=args.address,
        overwrite=args.overwrite,
        log=lambda line: print(line, flush=True),
    )
    if args.engine == "ray" and args.device.startswith("cuda") and not args.gpus_per_worker:
        raise ValueError(f"--device {args.device} with --engine ray: give --gpus-per-worker (1, or 0.5 to share a GPU)")
    return cohort


# -- export -----------------------------------------------------------------------------------------


def add_export_options(parser: argparse.ArgumentParser) -> None:
    """What ``medhdm export`` writes and how the overlay looks: ``--format`` ... ``--seg-threshold``."""
    parser.add_argument("--format", default="sc,pm,seg,nifti,png", help="comma-separated: sc,pm,seg,sr,nifti,png")
    parser.add_argument("--cmap", default="inferno", help="matplotlib colormap (default inferno)")
    parser.add_argument("--threshold", type=float, default=0.25, help="overlay drawn where map >= this (0.25)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (0.5)")
    parser.add_argument("--no-legend", action="store_true", help="do not burn in the colour bar and label")
    parser.add_argument("--window-preset", default=None, help="CT window preset: soft_tissue, lung, bone, brain")
    add_seg_threshold_option(parser)


def add_seg_threshold_option(parser: argparse.ArgumentParser) -> None:
    """``--seg-threshold``: the thresholded map's SEG holds the map >= this (``export``, ``explain``, ``pacs``)."""
    parser.add_argument("--seg-threshold", type=float, default=0.5, help="the SEG holds the map >= this (0.5)")


def overlay_style(args: argparse.Namespace):
    """The :class:`~medhdm.export.OverlayStyle` of ``--cmap``, ``--threshold``, ``--alpha`` and ``--no-legend``."""
    from ..export import OverlayStyle

    return OverlayStyle(cmap=args.cmap, threshold=args.threshold, alpha=args.alpha, legend=not args.no_legend)
