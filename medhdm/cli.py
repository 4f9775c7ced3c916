"""The ``medhdm`` command line.

Every error is one line on stderr, without a traceback (``--debug`` prints it): exit
status 2 for bad input (``ValueError``, ``TypeError``, ``FileNotFoundError``, a file or
folder that cannot be used), 1 for a failure of the run itself (out of memory, a full
disk, an error inside the model), 0 for success.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .io.errors import BAD_INPUT

__all__ = ["main"]


def _check_out_folder(path: str, option: str = "--out") -> None:
    """``path`` can be (or become) a folder: refused if it, or a folder above it, exists and is not a folder."""
    out = Path(path)
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "" if folder == out else f" (a folder above {out})"
                raise ValueError(f"{option}: {folder}{what} exists and is not a folder")
            return


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    _check_out_folder(args.out)
    if args.cases < 1:
        raise ValueError(f"--cases: expected at least 1, got {args.cases}")
    if args.cases_3d < 0:
        raise ValueError(f"--cases-3d: expected 0 or more, got {args.cases_3d}")
    run_demo(Path(args.out), n_cases=args.cases, n_cases_3d=args.cases_3d)


def _deidentify_salt(args: argparse.Namespace) -> str | None:
    """The salt from --deidentify-salt-file, MEDHDM_DEIDENTIFY_SALT (with --deidentify), or --deidentify-salt."""
    given = [
        n
        for n, v in (("--deidentify-salt", args.deidentify_salt), ("--deidentify-salt-file", args.deidentify_salt_file))
        if v
    ]
    if len(given) > 1:
        raise ValueError("give one of --deidentify-salt and --deidentify-salt-file")
    if args.deidentify_salt_file:
        path = Path(args.deidentify_salt_file)
        try:
            salt = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(
                f"--deidentify-salt-file: cannot read {path} ({getattr(err, 'strerror', None) or err})"
            ) from None
        if not salt:
            raise ValueError(f"--deidentify-salt-file: {path} is empty")
        return salt
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


def _deidentification(args: argparse.Namespace):
    """The :class:`~medhdm.export.Deidentification` that the de-identification options ask for, or ``None``."""
    salt = _deidentify_salt(args)
    if salt is None:
        return None
    from .export import Deidentification

    return Deidentification(salt, retain_dates=args.retain_dates)


def _add_deidentify_options(parser: argparse.ArgumentParser, what: str = "the DICOM outputs") -> None:
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


def _report_content(args: argparse.Namespace, formats: list[str]):
    """What ``export --format sr`` says: ``--class-label`` (the class index), ``--probability``, ``--scores``."""
    import json

    from .export import ReportContent

    if "sr" not in formats:
        given = [n for n, v in (("--probability", args.probability), ("--scores", args.scores)) if v is not None]
        if given:
            raise ValueError(f"{'/'.join(given)}: only with --format sr (they are what the SR reports)")
        return None
    if args.class_label is None or not str(args.class_label).strip().isdigit():
        raise ValueError(
            f"--class-label: the SR (--format sr) needs the explained class's index (0, 1, ...); got {args.class_label}"
        )
    scores = None
    if args.scores is not None:
        try:
            scores = json.loads(Path(args.scores).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"--scores: cannot read {args.scores} as JSON ({err})") from None
        if not isinstance(scores, dict):
            raise ValueError(f"--scores: {args.scores} holds no JSON object of scores by name")
    try:
        return ReportContent(int(args.class_label), args.probability, scores=scores)
    except (TypeError, ValueError) as err:  # "probability: ..." or "scores: ...": said with the option
        name, _, problem = str(err).partition(": ")
        flag = {"probability": "--probability", "scores": f"--scores {args.scores}"}.get(name, "--class-label")
        raise ValueError(f"{flag}: {problem}") from None


def _export(args: argparse.Namespace) -> None:
    from .export import OverlayStyle, check_export_arguments, export, map_on_source_grid
    from .io.dicom import read_dicom
    from .io.maps import load_lesion, load_map

    # every argument checked before any file is read
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    style = OverlayStyle(cmap=args.cmap, threshold=args.threshold, alpha=args.alpha, legend=not args.no_legend)
    deidentify = _deidentification(args)
    salt = deidentify.salt if deidentify is not None else None
    check_export_arguments(formats, args.out, style, args.window_preset, args.seg_threshold, salt)
    report = _report_content(args, formats)
    source = read_dicom(args.image)
    saliency = map_on_source_grid(load_map(args.map, source), source, name=str(args.map))
    lesion = load_lesion(args.lesion, source) if args.lesion else None
    written = export(
        source,
        saliency,
        args.out,
        formats,
        method=args.method,
        class_label=args.class_label,
        style=style,
        lesion_mask=lesion,
        window_preset=args.window_preset,
        seg_threshold=args.seg_threshold,
        deidentify_salt=salt,
        allow_inside_source=args.allow_inside_source,
        overwrite=args.overwrite,
        retain_dates=args.retain_dates,
        report=report,
    )
    for fmt, paths in written.items():
        where = paths[0] if len(paths) == 1 else f"{len(paths)} files in {Path(args.out)}"
        print(f"{fmt}: {where}")


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}


def _parse_json(text: str | None, name: str) -> dict:
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


def _method_arguments(args: argparse.Namespace) -> tuple[int | None, dict]:
    """``--steps`` and ``--method-args`` checked against the method: its steps and keyword arguments."""
    from .explain.registry import method_arguments

    arguments = _parse_json(args.method_args, "--method-args")
    return method_arguments(args.method, args.steps, arguments, "--method-args", "--steps")


def _bench_data(args: argparse.Namespace) -> None:
    from .data.bench_files import write_lesionbench

    if args.cases < 1:
        raise ValueError(f"--cases: expected at least 1, got {args.cases}")
    _check_out_folder(args.out)
    if args.manifest and Path(args.manifest).is_dir():
        raise ValueError(f"--manifest: {args.manifest} is a folder; give the manifest file's path (a .json file)")
    path = write_lesionbench(
        args.out,
        n_cases=args.cases,
        spatial_dims=args.dims,
        seed=args.seed,
        manifest_path=args.manifest,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.cases} LesionBench {args.dims}D cases and {path}")


def _model_and_spec(args: argparse.Namespace):
    """The classifier's recipe (:class:`medhdm.cohort.ModelRecipe`), the classifier and its input spec."""
    from .cohort import ModelRecipe
    from .pipeline import InputSpec

    class_idx = getattr(args, "class_idx", None)
    if class_idx is not None and class_idx < 0:
        raise ValueError(f"--class-idx: expected a class index >= 0, got {class_idx}")
    recipe = ModelRecipe(args.model, args.weights, _parse_json(args.model_args, "--model-args"), args.device)
    # with --engine ray the workers load it on --device; here it only gives the input size and configuration
    model = recipe.load("cpu" if getattr(args, "engine", "local") == "ray" else None)
    size = None
    if args.spatial_size:
        try:
            size = tuple(int(v) for v in args.spatial_size.split(","))
        except ValueError:
            raise ValueError(f"--spatial-size: expected sizes like 96,96, got {args.spatial_size!r}") from None
    spatial_size = InputSpec.for_model(model, size).spatial_size
    intensity_range = None
    if args.intensity_range:
        try:
            low, high = (float(v) for v in args.intensity_range.split(","))
        except ValueError:
            raise ValueError(
                f"--intensity-range: expected two numbers like -1000,0, got {args.intensity_range!r}"
            ) from None
        intensity_range = (low, high)
    layout = "monai" if args.axcodes else args.layout
    spec = InputSpec(spatial_size, layout=layout, axcodes=args.axcodes or "RAS", intensity_range=intensity_range)
    return recipe, model, spec


def _engine_options(args: argparse.Namespace):
    """The cohort options (--engine, --workers, --gpus-per-worker, --address, --batch-size, --overwrite)
    as a :class:`medhdm.cohort.CohortOptions`."""
    from .cohort import CohortOptions

    if args.engine == "local" and (args.address or args.workers is not None or args.gpus_per_worker):
        raise ValueError("--workers, --gpus-per-worker and --address: only with --engine ray")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected at least 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers: expected at least 1, got {args.workers}")
    if args.gpus_per_worker < 0:
        raise ValueError(f"--gpus-per-worker: expected 0 or more, got {args.gpus_per_worker}")
    if args.engine == "ray" and args.device.startswith("cuda") and not args.gpus_per_worker:
        raise ValueError(f"--device {args.device} with --engine ray: give --gpus-per-worker (1, or 0.5 to share a GPU)")
    return CohortOptions(
        engine=args.engine,
        batch_size=args.batch_size,
        workers=args.workers or 2,
        gpus_per_worker=args.gpus_per_worker,
        address=args.address,
        overwrite=args.overwrite,
        log=lambda line: print(line, flush=True),
    )


def _slices(args: argparse.Namespace):
    """The --slices / --slice-reduce options as a SliceSelection (None without --slices)."""
    from .pipeline import SliceSelection

    if args.slices is None:
        return None
    text = args.slices.strip()
    if not text or ("," in text and not all(v.strip() for v in text.split(","))):
        raise ValueError(f"--slices: expected 'all', 'top:K' or slice indices like 3,4,5, got {args.slices!r}")
    return SliceSelection.parse(text, reduce=args.slice_reduce)


def _check_case_folders(out: str, ids: list[str]) -> None:
    """Each case's folder ``out/<id>`` is a folder or does not exist yet."""
    for name in ids:
        folder = Path(out) / name
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--out: {folder} exists and is not a folder (the outputs of case {name} go there)")


def _evaluate(args: argparse.Namespace) -> None:
    from .cohort import EvaluateRecipe, evaluate_cohort
    from .evaluation import FAITHFULNESS_KEYS, format_table, summarise
    from .explain.registry import method_key
    from .io.manifest import load_manifest
    from .study import StudyCase, check_output_folder

    entries = load_manifest(args.manifest)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    twice = sorted({m for m in names if names.count(m) > 1})
    if twice:
        raise ValueError(f"--methods: {', '.join(twice)} given twice")
    maps = {}
    for item in args.maps or []:
        name, sep, folder = item.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ValueError(f"--maps: expected NAME=DIR, got {item!r}")
        if name.strip() in maps:
            raise ValueError(f"--maps: the name {name.strip()!r} is given twice")
        maps[name.strip()] = folder.strip()
    if not names and not maps:
        raise ValueError("--methods: give at least one method (or --methods '' with --maps)")
    clash = sorted(set(maps) & set(names))
    if clash:
        raise ValueError(f"--maps: names already used by methods: {', '.join(clash)}")
    for name in names:
        method_key(name)  # an unknown method fails here, before any work
    for name, folder in maps.items():
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--maps {name}: {folder}: no such map folder")
    missing = [e["id"] for e in entries if "lesion" not in e]
    if missing:
        raise ValueError(f"{args.manifest}: cases without a 'lesion' annotation cannot be scored: {', '.join(missing)}")
    if args.curve_steps is not None and args.curve_steps < 1:
        raise ValueError(f"--curve-steps: expected an integer >= 1, got {args.curve_steps}")
    check_output_folder(args.out, [StudyCase(Path(e["image"]), e["id"]) for e in entries])
    _check_case_folders(args.out, [e["id"] for e in entries])
    options = _engine_options(args)
    recipe, model, spec = _model_and_spec(args)
    evaluation = EvaluateRecipe(
        recipe,
        spec,
        tuple(names),
        steps=args.steps,
        maps=tuple(maps.items()),
        faithfulness=not args.no_faithfulness,
        curve_steps=args.curve_steps,
        slices=_slices(args),
    )
    title = f"medhdm evaluation: {Path(args.manifest).name}"
    _, rows = evaluate_cohort(entries, evaluation, args.out, title=title, options=options, model=model)
    faithful = [k for k in FAITHFULNESS_KEYS if rows and k in rows[0]]
    digits = {"deletion_half": 4, "insertion_half": 4}
    print(format_table(summarise(rows, ["pointing_game", "auroc", "lesion_hit_rate", *faithful]), digits=digits))
    print(f"report: {Path(args.out) / 'report.html'}")


def _explain(args: argparse.Namespace) -> None:
    from .cohort import ExplainRecipe, explain_cohort
    from .io.cases import unique_case_ids
    from .study import StudyCase, check_output_folder

    images = [Path(p) for p in args.image or []]
    for path in images:
        if not path.exists():
            raise FileNotFoundError(f"--image: {path}: no such file or folder")
    ids = unique_case_ids(images) if images else []  # manifest images were checked by load_manifest
    entries = [{"id": name, "image": str(path), "class_idx": args.class_idx} for path, name in zip(images, ids)]
    if args.manifest:
        from .io.manifest import load_manifest

        entries += [
            {"id": e["id"], "image": str(e["image"]), "class_idx": e.get("class_idx", args.class_idx)}
            for e in load_manifest(args.manifest)
        ]
    if not entries:
        raise ValueError("give --image (one or more) or --manifest")
    ids = [e["id"] for e in entries]
    if len(set(ids)) != len(ids):
        raise ValueError(
            "two images would give the same case name: " + ", ".join(sorted({i for i in ids if ids.count(i) > 1}))
        )
    formats = [f.strip() for f in (args.export or "").split(",") if f.strip()]
    if not formats and (args.deidentify or args.deidentify_salt or args.deidentify_salt_file):
        raise ValueError("--deidentify: only with --export (it de-identifies the exported DICOM objects)")
    deidentify = _deidentification(args)
    if formats:  # checked before any work
        from .export import OverlayStyle, check_export_arguments
        from .io.reader import is_dicom_path

        check_export_arguments(formats, args.out, OverlayStyle(), None, 0.5, deidentify and deidentify.salt)
        not_dicom = [e for e in entries if not is_dicom_path(e["image"])]
        if not_dicom:
            raise ValueError(f"--export: {not_dicom[0]['image']} is not DICOM; DICOM export needs DICOM sources")
    check_output_folder(args.out, [StudyCase(Path(e["image"]), e["id"]) for e in entries])
    _check_case_folders(args.out, ids)
    steps, method_args = _method_arguments(args)
    options = _engine_options(args)
    recipe, model, spec = _model_and_spec(args)
    explain = ExplainRecipe(
        recipe,
        spec,
        args.method,
        steps=steps,
        method_args=method_args,
        export=tuple(formats),
        slices=_slices(args),
        deidentify=deidentify,
    )
    result = explain_cohort(entries, explain, args.out, options=options, model=model)
    print(
        f"{len(result.done)} cases explained, {len(result.skipped)} already complete; "
        f"maps (one folder per case) and explanations.csv in {Path(args.out)}"
    )


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The cohort options shared by ``explain`` and ``evaluate``."""
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


def _pacs_explain(args: argparse.Namespace) -> None:
    from .explain.registry import make_explainer
    from .pacs.archive import ArchiveError, RetryPolicy
    from .pacs.destinations import parse_destination
    from .pacs.query import check_deidentified_formats, parse_formats, parse_query, parse_study_uids
    from .pacs.secrets import credentials_from_env
    from .pacs.workflow import PacsOptions, explain_archive_studies

    # every argument checked before any work
    deidentify = _deidentification(args)
    formats = parse_formats(args.push) if args.push != "none" else ("sc", "pm", "seg", "sr")
    if deidentify is not None and args.push == "none":
        formats = ("sc", "pm", "seg")  # written, not pushed
    check_deidentified_formats(formats, deidentify)
    query = parse_query(args.query or [])
    study_uids = parse_study_uids(args.study or [])  # each becomes a folder name
    if not args.study and not query:
        raise ValueError("give --study UID (one or more) or --query KEY=VALUE (one or more)")
    retry = RetryPolicy(attempts=args.retries, delay=args.retry_delay)
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.dicomweb:
        credentials = credentials_from_env(args.token_file, args.basic_auth_file)
        archive = parse_destination(args.dicomweb, credentials, retry=retry, log=log)
    else:
        if args.token_file or args.basic_auth_file:
            raise ValueError("--token-file/--basic-auth-file: only with --dicomweb")
        archive = parse_destination(args.dimse, retry=retry, calling_aet=args.calling_aet, log=log)
    _, model, spec = _model_and_spec(args)
    steps, method_args = _method_arguments(args)
    explainer = make_explainer(args.method, model, steps=steps, **method_args)
    studies = list(study_uids)
    if query:
        found = archive.search_studies(query)
        print(f"{archive.describe()}: {len(found)} studies match the query", flush=True)
        studies += [uid for uid in found if uid not in studies]
    options = PacsOptions(args.model, formats, _slices(args), args.class_idx, deidentify=deidentify)
    outcomes = explain_archive_studies(
        archive, studies, explainer, spec, Path(args.work), options, push=args.push != "none", log=log
    )
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    print(f"{len(outcomes)} studies: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    if counts["failed"]:
        first = next(o for o in outcomes if o.status == "failed")
        raise ArchiveError(
            f"{counts['failed']} of {len(outcomes)} studies failed; first: {first.study_uid}: {first.error}"
        )


def _pacs_serve(args: argparse.Namespace) -> None:
    import logging

    from .explain.registry import make_explainer
    from .pacs.destinations import parse_destination
    from .pacs.query import check_deidentified_formats, parse_formats
    from .pacs.secrets import credentials_from_env
    from .pacs.serve import ServeSettings, explain_and_push, run_service, setup_logging
    from .pacs.workflow import PacsOptions

    # every argument checked before the model loads or the port opens
    formats = parse_formats(args.push)
    deidentify = _deidentification(args)
    check_deidentified_formats(formats, deidentify)
    settings = ServeSettings(
        spool=Path(args.spool),
        aet=args.aet,
        calling_aets=tuple(args.calling_aet or ()),
        host=args.host,
        port=args.port,
        stable_seconds=args.stable_seconds,
        retry_seconds=args.retry_seconds,
        max_attempts=args.max_attempts,
    )
    if not settings.calling_aets:
        raise ValueError("--calling-aet: give at least one calling AE title allowed to send studies")
    redactor = setup_logging(logging.DEBUG if args.debug else logging.INFO, args.log_file)
    log = logging.getLogger("medhdm.pacs.serve")
    credentials = credentials_from_env(args.token_file, args.basic_auth_file)
    destination = parse_destination(args.destination, credentials, calling_aet=args.aet, log=log.warning)
    _, model, spec = _model_and_spec(args)
    steps, method_args = _method_arguments(args)
    explainer = make_explainer(args.method, model, steps=steps, **method_args)
    log.info(
        "medhdm pacs serve: model %s, method %s, results %s to %s; a study is explained %g s after its last instance",
        args.model,
        args.method,
        ",".join(formats),
        destination.describe(),
        settings.stable_seconds,
    )
    options = PacsOptions(args.model, formats, _slices(args), args.class_idx, deidentify=deidentify)
    process = explain_and_push(explainer, spec, options, destination)
    run_service(settings, process, redactor)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="default",
        help="'default' (2D) or 'default3d', a TorchScript file, "
        "a MONAI bundle folder, or a network class path such as monai.networks.nets.DenseNet121 "
        "(with --weights)",
    )
    parser.add_argument("--weights", default=None, help="state-dict file for a network class path")
    parser.add_argument("--model-args", default=None, help="JSON keyword arguments of the network class")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps of mask methods")
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
        help="a 2D classifier on 3D series: explain slice by slice, "
        "'all', 'top:K' (the K slices with the highest class probability) or indices like 3,4,5 "
        "(0-based, series order); the map is 0 on the other slices",
    )
    parser.add_argument(
        "--slice-reduce",
        default="max",
        choices=("max", "mean"),
        help="with --slices: the study-level probability of a class, max (default) or mean over slices",
    )


def _add_demo_command(sub) -> None:
    """``medhdm demo``."""
    demo = sub.add_parser("demo", help="explain and score held-out lesion cases with HDM and the baselines")
    demo.add_argument("--out", default="medhdm-demo", help="output folder (default: ./medhdm-demo)")
    demo.add_argument("--cases", type=int, default=6, help="number of 2D cases (default: 6)")
    demo.add_argument("--cases-3d", type=int, default=2, help="number of 3D cases (default: 2)")
    demo.set_defaults(func=_demo)


def _add_explain_command(sub) -> None:
    """``medhdm explain``."""
    ex = sub.add_parser("explain", help="explain studies (DICOM file/series folder, NIfTI) with a classifier")
    images = ex.add_mutually_exclusive_group()
    images.add_argument("--image", action="append", help="DICOM file, DICOM series folder or NIfTI file (repeatable)")
    images.add_argument(
        "--manifest", default=None, help="a data manifest (data_manifests/README.md); its images (not with --image)"
    )
    ex.add_argument(
        "--method",
        default="hdm",
        help="hdm, mdm, neuromask, gradcam, gradcampp, gxi, smoothgrad, occlusion, rise (default hdm)",
    )
    ex.add_argument("--method-args", default=None, help="JSON keyword arguments of the explainer")
    ex.add_argument("--class-idx", type=int, default=None, help="class to explain (default: the predicted one)")
    _add_model_options(ex)
    ex.add_argument(
        "--out",
        required=True,
        help="output folder: <case>/<case>_saliency.nii.gz and record.json per case, explanations.csv; "
        "a re-run resumes (skips the cases complete for the same configuration)",
    )
    ex.add_argument("--export", default=None, help="also export DICOM sources: comma-separated sc,pm,seg,nifti,png")
    _add_deidentify_options(ex, "the exported DICOM objects")
    ex.add_argument(
        "--overwrite", action="store_true", help="redo the cases a previous run completed with another configuration"
    )
    _add_engine_options(ex)
    ex.set_defaults(func=_explain)


def _add_evaluate_command(sub) -> None:
    """``medhdm evaluate``."""
    ev = sub.add_parser(
        "evaluate",
        help="explain every case of a manifest with several methods, score the maps "
        "against the lesions and write report.html",
    )
    ev.add_argument("--manifest", required=True, help="a data manifest whose cases have 'lesion' annotations")
    ev.add_argument(
        "--methods",
        default="hdm,gxi,gradcam,occlusion",
        help="comma-separated methods (default hdm,gxi,gradcam,occlusion)",
    )
    ev.add_argument("--out", required=True, help="output folder: report.html, per_case.csv, summary.csv/json, figures")
    ev.add_argument("--no-faithfulness", action="store_true", help="skip deletion/insertion")
    ev.add_argument(
        "--curve-steps",
        type=int,
        default=None,
        metavar="N",
        help="sample the deletion/insertion curves at N equal shares of the voxels and report the classic "
        "deletion_auc/insertion_auc over the share 0..1 (64: the columns before issue 16, item 6); default: 0 and 41 "
        "log-spaced shares from 0.01 %%, reported as deletion_auc_log/insertion_auc_log (area over "
        "log10(share), scaled to [0, 1]); deletion_half/insertion_half in both cases",
    )
    ev.add_argument(
        "--overwrite",
        action="store_true",
        help="redo the cases a previous run completed with another configuration (or replace a report)",
    )
    _add_engine_options(ev)
    ev.add_argument(
        "--maps",
        action="append",
        metavar="NAME=DIR",
        help="also score maps made elsewhere "
        "(repeatable): DIR holds <case id>.nii.gz, <case id>_saliency.nii.gz or <case id>/<case id>_saliency.nii.gz "
        "(an explain --out) on the image grid, or "
        "<case id>.npy in MONAI/NIfTI order (column, row[, slice]); values in [0, 1]",
    )
    _add_model_options(ev)
    ev.set_defaults(func=_evaluate)


def _add_bench_data_command(sub) -> None:
    """``medhdm bench-data``."""
    bench = sub.add_parser("bench-data", help="write LesionBench cases (DICOM, NIfTI, SEG) and their manifest")
    bench.add_argument("--out", required=True, help="output folder")
    bench.add_argument("--cases", type=int, default=8, help="number of cases (default 8)")
    bench.add_argument("--dims", type=int, default=2, choices=(2, 3), help="2 (images) or 3 (series)")
    bench.add_argument("--seed", type=int, default=4242, help="seed of cases and UIDs (default 4242)")
    bench.add_argument(
        "--manifest",
        default=None,
        help="manifest path (default OUT/manifest.json); must lie in OUT or a folder above it",
    )
    bench.add_argument("--overwrite", action="store_true", help="replace existing cases and manifest")
    bench.set_defaults(func=_bench_data)


def _add_export_command(sub) -> None:
    """``medhdm export``."""
    exp = sub.add_parser("export", help="write a saliency map into the source study (DICOM SC/PM/SEG/SR, NIfTI, PNG)")
    exp.add_argument(
        "--image", required=True, help="source DICOM file (single-frame or enhanced multi-frame) or series folder"
    )
    exp.add_argument("--map", required=True, help="map on the source grid: .npy (H, W) / (D, H, W), or NIfTI")
    exp.add_argument("--out", required=True, help="output folder (not inside the source folder)")
    exp.add_argument("--format", default="sc,pm,seg,nifti,png", help="comma-separated: sc,pm,seg,sr,nifti,png")
    exp.add_argument("--method", default="HDM", help="method named in the series description (default HDM)")
    exp.add_argument(
        "--class-label",
        default=None,
        help="explained class, named in the series description; with sr its index (0, 1, ...), required",
    )
    exp.add_argument(
        "--probability", type=float, default=None, help="sr: the class's probability (left out of the SR if not given)"
    )
    exp.add_argument(
        "--scores",
        default=None,
        metavar="JSON",
        help="sr: a JSON file of scores by name (pointing_game, auroc, deletion_auc_log, ...; "
        "as medhdm evaluate names them); the SR names the method and medhdm's version, not the model",
    )
    exp.add_argument("--lesion", default=None, help="lesion mask on the source grid (.npy or NIfTI), outlined")
    exp.add_argument("--cmap", default="inferno", help="matplotlib colormap (default inferno)")
    exp.add_argument("--threshold", type=float, default=0.25, help="overlay drawn where map >= this (0.25)")
    exp.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (0.5)")
    exp.add_argument("--no-legend", action="store_true", help="do not burn in the colour bar and label")
    exp.add_argument("--window-preset", default=None, help="CT window preset: soft_tissue, lung, bone, brain")
    exp.add_argument("--seg-threshold", type=float, default=0.5, help="SEG holds map >= this (0.5)")
    _add_deidentify_options(exp)
    exp.add_argument("--overwrite", action="store_true", help="replace an export that --out already holds")
    exp.add_argument("--allow-inside-source", action="store_true", help="allow --out inside the source folder")
    exp.set_defaults(func=_export)


def _add_pacs_serve_command(pacs_sub) -> None:
    """``medhdm pacs serve``."""
    serve = pacs_sub.add_parser(
        "serve",
        help="receive studies as a DICOM Storage SCP, explain each once it is stable, push the results",
    )
    serve.add_argument("--spool", required=True, help="folder for received studies, the journal and the quarantine")
    serve.add_argument(
        "--calling-aet",
        action="append",
        metavar="AET",
        help="calling AE title allowed to send (repeatable; at least one; all others are rejected)",
    )
    serve.add_argument("--aet", default="MEDHDM", help="this service's AE title (default MEDHDM)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    serve.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112; 0: a free one, logged)")
    serve.add_argument(
        "--destination", required=True, help="where results go: a DICOMweb root URL or AET@HOST:PORT (C-STORE)"
    )
    serve.add_argument("--token-file", default=None, help="file with a DICOMweb bearer token (or MEDHDM_PACS_TOKEN)")
    serve.add_argument(
        "--basic-auth-file", default=None, help="file with user:password (or MEDHDM_PACS_USER/MEDHDM_PACS_PASSWORD)"
    )
    serve.add_argument("--push", default="sc,pm,seg,sr", help="results to push: subset of sc,pm,seg,sr (default all)")
    _add_deidentify_options(serve, "the results (not the SR: with it, --push some of sc,pm,seg)")
    serve.add_argument(
        "--stable-seconds",
        type=float,
        default=30.0,
        help="explain a study once no instance arrived for this long (default 30)",
    )
    serve.add_argument(
        "--retry-seconds", type=float, default=30.0, help="first wait before a failed push is retried (default 30)"
    )
    serve.add_argument(
        "--max-attempts", type=int, default=5, help="attempts before a study whose push fails is set aside (5)"
    )
    serve.add_argument("--log-file", default=None, help="also append the log to this file")
    serve.add_argument("--method", default="hdm", help="explanation method (as for medhdm explain; default hdm)")
    serve.add_argument("--method-args", default=None, help="JSON keyword arguments of the explainer")
    serve.add_argument("--class-idx", type=int, default=None, help="class to explain (default: the predicted one)")
    _add_model_options(serve)
    serve.set_defaults(func=_pacs_serve)


def _add_pacs_command(sub) -> None:
    """``medhdm pacs explain``."""
    pacs = sub.add_parser(
        "pacs", help="explain studies that live in an archive (DICOMweb, DIMSE) and push results back"
    )
    pacs_sub = pacs.add_subparsers(dest="pacs_command", required=True)
    ex = pacs_sub.add_parser(
        "explain",
        help="query or name studies, retrieve, explain, and push SC/PM/SEG/SR back into each study",
        description="Credentials (DICOMweb) come from MEDHDM_PACS_TOKEN, MEDHDM_PACS_USER/MEDHDM_PACS_PASSWORD, "
        "MEDHDM_PACS_TOKEN_FILE, MEDHDM_PACS_BASIC_AUTH_FILE, or --token-file/--basic-auth-file;"
        " never the command line.",
    )
    where = ex.add_mutually_exclusive_group(required=True)
    where.add_argument("--dicomweb", default=None, help="DICOMweb root URL, e.g. http://127.0.0.1:8042/dicom-web")
    where.add_argument("--dimse", default=None, help="DICOM node AET@HOST:PORT (C-FIND, C-GET, C-STORE)")
    ex.add_argument("--study", action="append", help="Study Instance UID (repeatable)")
    ex.add_argument(
        "--query",
        action="append",
        metavar="KEY=VALUE",
        help="select studies (repeatable): Modality, StudyDate (20240101-20241231), AccessionNumber, PatientID",
    )
    ex.add_argument("--push", default="sc,pm,seg,sr", help="what to push back: some of sc,pm,seg,sr, or none")
    _add_deidentify_options(ex, "the derived objects (not the SR: with it, --push some of sc,pm,seg)")
    ex.add_argument("--work", default="medhdm-pacs", help="local folder: cache, maps, derived objects")
    ex.add_argument("--token-file", default=None, help="file holding a bearer token (DICOMweb)")
    ex.add_argument("--basic-auth-file", default=None, help="file holding user:password (DICOMweb)")
    ex.add_argument("--calling-aet", default="MEDHDM", help="our AE title for --dimse (default MEDHDM)")
    ex.add_argument("--retries", type=int, default=4, help="attempts of a failing request or push (default 4)")
    ex.add_argument("--retry-delay", type=float, default=1.0, help="first wait between attempts, doubling (1 s)")
    ex.add_argument("--method", default="hdm", help="explanation method, as for medhdm explain (default hdm)")
    ex.add_argument("--method-args", default=None, help="JSON keyword arguments of the explainer")
    ex.add_argument("--class-idx", type=int, default=None, help="class to explain (default: the predicted one)")
    _add_model_options(ex)
    ex.set_defaults(func=_pacs_explain)
    _add_pacs_serve_command(pacs_sub)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="medhdm", description="Hierarchical Dynamic Masks for MONAI classifiers.")
    parser.add_argument("--version", action="version", version=f"medhdm {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_demo_command,
        _add_explain_command,
        _add_evaluate_command,
        _add_bench_data_command,
        _add_export_command,
        _add_pacs_command,
    ):
        add(sub)
    return parser


def _check_device(name: str, here: bool = True) -> None:
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import logging
    import warnings

    import torch

    from .io.redact import install_redaction

    # every log record and warning, medhdm's or a library's, through the redactor of patient names and IDs
    redactor = install_redaction()
    # MONAI announces on every DICOM load that the optional GPU decoder (nvImageCodec) is absent;
    # pydicom's decoders are used instead, which is what medhdm expects. Keep the CLI's output readable.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")

    torch.set_num_threads(max(1, min(int(os.environ.get("MEDHDM_THREADS", "2")), os.cpu_count() or 1)))
    try:
        if getattr(args, "device", None) is not None:
            _check_device(args.device, here=getattr(args, "engine", "local") != "ray")
        args.func(args)
    except Exception as err:  # noqa: BLE001 (every error ends as one line and an exit status)
        if args.debug:
            import traceback

            print(redactor.redact(traceback.format_exc()), file=sys.stderr, end="")
        from .cohort.run import CohortFailed

        if isinstance(err, CohortFailed):  # the message names the first failure and its error type
            bad_input, text = err.bad_input, str(err)
        else:
            bad_input = isinstance(err, BAD_INPUT)
            text = str(err) if bad_input else f"{type(err).__name__}: {err}"
        text = redactor.redact(" ".join(text.split()))  # one line, without patient names or IDs
        print(f"medhdm {args.command}: error: {text}", file=sys.stderr)
        return 2 if bad_input else 1
    except KeyboardInterrupt:
        print(f"medhdm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
