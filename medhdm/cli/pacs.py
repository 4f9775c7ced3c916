"""``medhdm pacs explain`` (studies in an archive) and ``medhdm pacs serve`` (a DICOM Storage SCP): explain
studies and push the results back."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options

__all__ = ["add_command", "run_explain", "run_serve"]


def add_command(sub) -> None:
    """``medhdm pacs explain`` and ``medhdm pacs serve``."""
    pacs = sub.add_parser(
        "pacs", help="explain studies that live in an archive (DICOMweb, DIMSE) and push results back"
    )
    pacs_sub = pacs.add_subparsers(dest="pacs_command", required=True)
    _add_explain_command(pacs_sub)
    _add_serve_command(pacs_sub)


def _add_explain_command(pacs_sub) -> None:
    """``medhdm pacs explain``."""
    ex = pacs_sub.add_parser(
        "explain",
        help="query or name studies, retrieve, explain, and push SC/PM/SEG/SR back into each study",
        description="Credentials (DICOMweb) come from MEDHDM_PACS_TOKEN, MEDHDM_PACS_USER/MEDHDM_PACS_PASSWORD, "
        "MEDHDM_PACS_TOKEN_FILE, MEDHDM_PACS_BASIC_AUTH_FILE, or --token-file/--basic-auth-file;"
        " never the command line.",
    )
    where = ex.add_mutually_exclusive_group(required=True)
    where.add_argument("--dicomweb", default=None, help="DICOMweb root URL, e.g. http://127.0.0.1:8042/dicom-web")
    where.add_argument("--dimse", default=None, help="DICOM node AET@HOST:PORT (C-FIND, C-GET or C-MOVE, C-STORE)")
    ex.add_argument("--study", action="append", help="Study Instance UID (repeatable)")
    keys = "Modality, StudyDate (20240101-20241231), AccessionNumber, PatientID"
    ex.add_argument("--query", action="append", metavar="KEY=VALUE", help=f"select studies (repeatable): {keys}")
    ex.add_argument("--push", default="sc,pm,seg,sr", help="what to push back: some of sc,pm,seg,sr, or none")
    options.add_seg_threshold_option(ex)
    options.add_deidentify_options(ex, "the derived objects (not the SR: with it, --push some of sc,pm,seg)")
    ex.add_argument("--work", default="medhdm-pacs", help="local folder: cache, maps, derived objects")
    options.add_credential_options(ex)
    ex.add_argument("--calling-aet", default="MEDHDM", help="our AE title for --dimse (default MEDHDM)")
    ex.add_argument(
        "--move-to",
        default=None,
        metavar="AET",
        help="with --dimse: retrieve by C-MOVE to this AE title (the archive knows it with our address and "
        "--move-port), received by our own Storage SCP; default: C-GET",
    )
    ex.add_argument("--move-port", type=int, default=None, help="with --move-to: the port our Storage SCP listens on")
    ex.add_argument(
        "--move-host", default="0.0.0.0", help="with --move-to: the address it listens on (default 0.0.0.0: all)"
    )
    options.add_tls_options(ex)
    ex.add_argument("--retries", type=int, default=4, help="attempts of a failing request or push (default 4)")
    ex.add_argument("--retry-delay", type=float, default=1.0, help="first wait between attempts, doubling (1 s)")
    options.add_method_options(ex)
    options.add_model_options(ex)
    options.finish_command(ex, run_explain)


def _add_serve_command(pacs_sub) -> None:
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
    options.add_credential_options(serve)
    options.add_tls_options(serve, server=True)
    serve.add_argument("--push", default="sc,pm,seg,sr", help="results to push: subset of sc,pm,seg,sr (default all)")
    options.add_seg_threshold_option(serve)
    options.add_deidentify_options(serve, "the results (not the SR: with it, --push some of sc,pm,seg)")
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
    serve.add_argument(
        "--keep",
        default="forever",
        help="how long received instances stay in the spool once their study is done: done (deleted once the "
        "results are pushed), a duration such as 7d, 12h, 30m, or forever (default); the journal keeps the record",
    )
    serve.add_argument("--log-file", default=None, help="also append the log to this file")
    options.add_method_options(serve)
    options.add_model_options(serve)
    options.finish_command(serve, run_serve)


def _archive(args: argparse.Namespace, log):
    """The archive of ``--dicomweb`` (with the credentials) or ``--dimse``."""
    from ..pacs.archive import RetryPolicy
    from ..pacs.destinations import parse_destination
    from ..pacs.secrets import credentials_from_env

    retry = RetryPolicy(attempts=args.retries, delay=args.retry_delay)
    tls = options.tls_files(args)
    if args.dicomweb:
        if args.move_to or args.move_port is not None:
            raise ValueError("--move-to/--move-port: only with --dimse (C-MOVE)")
        credentials = credentials_from_env(args.token_file, args.basic_auth_file)
        return parse_destination(args.dicomweb, credentials, retry=retry, log=log, tls=tls)
    if args.token_file or args.basic_auth_file:
        raise ValueError("--token-file/--basic-auth-file: only with --dicomweb")
    return parse_destination(
        args.dimse, retry=retry, calling_aet=args.calling_aet, log=log, tls=tls, move=_move_target(args)
    )


def _move_target(args: argparse.Namespace):
    """The C-MOVE target of ``--move-to``/``--move-port``/``--move-host``, or ``None`` (C-GET)."""
    if not args.move_to:
        if args.move_port is not None:
            raise ValueError("--move-port: only with --move-to AET")
        return None
    if args.move_port is None:
        raise ValueError("--move-to: give --move-port, the port the archive sends the instances to")
    from ..pacs.dimse import MoveTarget

    return MoveTarget(args.move_to, args.move_port, args.move_host)


def run_explain(args: argparse.Namespace) -> None:
    """``medhdm pacs explain``."""
    from ..pacs.archive import ArchiveError
    from ..pacs.query import parse_query, parse_study_uids
    from ..pacs.workflow import PacsOptions, explain_archive_studies

    # every argument checked before any work
    deidentify = options.deidentification(args)
    formats = args.push
    if args.push == "none":  # written, not pushed
        formats = ("sc", "pm", "seg") if deidentify is not None else ("sc", "pm", "seg", "sr")
    study = PacsOptions(
        args.bundle or args.model,
        formats,
        options.slices(args),
        args.class_idx,
        seg_threshold=args.seg_threshold,
        deidentify=deidentify,
    )
    query = parse_query(args.query or [])
    study_uids = parse_study_uids(args.study or [])  # each becomes a folder name
    if not args.study and not query:
        raise ValueError("give --study UID (one or more) or --query KEY=VALUE (one or more)")
    log = lambda s: print(s, flush=True)  # noqa: E731
    archive = _archive(args, log)
    options.method_arguments(args)  # checked before the model loads
    _, model, spec = options.model_and_spec(args)
    explainer = options.make_method(args, model)
    studies = list(study_uids)
    if query:
        found = archive.search_studies(query)
        print(f"{archive.describe()}: {len(found)} studies match the query", flush=True)
        studies += [uid for uid in found if uid not in studies]
    outcomes = explain_archive_studies(
        archive, studies, explainer, spec, Path(args.work), study, push=args.push != "none", log=log
    )
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    print(f"{len(outcomes)} studies: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    if counts["failed"]:
        first = next(o for o in outcomes if o.status == "failed")
        raise ArchiveError(
            f"{counts['failed']} of {len(outcomes)} studies failed; first: {first.study_uid}: {first.error}"
        )


def run_serve(args: argparse.Namespace) -> None:
    """``medhdm pacs serve``."""
    import logging

    from ..pacs.destinations import parse_destination
    from ..pacs.secrets import credentials_from_env
    from ..pacs.serve import ServeSettings, explain_and_push, run_service, setup_logging
    from ..pacs.spool import parse_keep
    from ..pacs.workflow import PacsOptions

    # every argument checked before the model loads or the port opens
    deidentify = options.deidentification(args)
    model_name = args.bundle or args.model
    study = PacsOptions(
        model_name,
        args.push,
        options.slices(args),
        args.class_idx,
        seg_threshold=args.seg_threshold,
        deidentify=deidentify,
    )
    settings = ServeSettings(
        spool=Path(args.spool),
        aet=args.aet,
        calling_aets=tuple(args.calling_aet or ()),
        host=args.host,
        port=args.port,
        stable_seconds=args.stable_seconds,
        retry_seconds=args.retry_seconds,
        max_attempts=args.max_attempts,
        keep_seconds=parse_keep(args.keep),
        tls=options.tls_files(args),
    )
    if settings.tls is not None:
        settings.tls.server_context()  # a missing certificate or a bad file: refused before the model loads
    if not settings.calling_aets:
        raise ValueError("--calling-aet: give at least one calling AE title allowed to send studies")
    redactor = setup_logging(logging.DEBUG if args.debug else logging.INFO, args.log_file)
    log = logging.getLogger("medhdm.pacs.serve")
    credentials = credentials_from_env(args.token_file, args.basic_auth_file)
    # the TLS files serve the listener and a DIMSE or https:// destination (an http:// URL is plain by choice)
    tls = None if args.destination.strip().lower().startswith("http://") else settings.tls
    destination = parse_destination(args.destination, credentials, calling_aet=args.aet, log=log.warning, tls=tls)
    options.method_arguments(args)  # checked before the model loads
    _, model, spec = options.model_and_spec(args)
    explainer = options.make_method(args, model)
    log.info(
        "medhdm pacs serve: model %s, method %s, results %s to %s; a study is explained %g s after its last "
        "instance; received instances kept: %s",
        args.bundle or args.model,
        args.method,
        ",".join(study.formats),
        destination.describe(),
        settings.stable_seconds,
        {"done": "until the study is done", "forever": "forever"}.get(args.keep.strip().lower(), args.keep),
    )
    process = explain_and_push(explainer, spec, study, destination)
    run_service(settings, process, redactor)
