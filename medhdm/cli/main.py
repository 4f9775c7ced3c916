"""``medhdm``: the parser of every command, and :func:`main`, which runs one and turns its error into one line.

Every error is one line on stderr, without a traceback (``--debug`` prints it): exit
status 2 for bad input (``ValueError``, ``TypeError``, ``FileNotFoundError``, a file or
folder that cannot be used), 1 for a failure of the run itself (out of memory, a full
disk, an error inside the model), 0 for success, 130 when interrupted.

Messages from below the CLI name the functions' parameters (``out_dir: ...``, ``pass
overwrite=True``); :func:`name_flags` names the command's flags in their place
(``--out: ...``, ``pass --overwrite``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from ..io.errors import BAD_INPUT
from . import bench_data, demo, evaluate, explain, export, pacs
from .options import check_device

__all__ = ["PARAMETER_FLAGS", "build_parser", "main", "name_flags"]

#: the parameters that messages below the CLI start with (``out_dir: ...``, ``address ray://h:1: ...``),
#: and the flag of each (or the flags that set it in different commands, the first the command has wins)
PARAMETER_FLAGS = {
    "out_dir": "--out",
    "out": "--out",
    "export_formats": "--export",
    "engine": "--engine",
    "batch_size": "--batch-size",
    "workers": "--workers",
    "gpus_per_worker": "--gpus-per-worker",
    "address": "--address",
    "model": "--model",
    "weights": "--weights",
    "intensity_range": "--intensity-range",
    "log_file": "--log-file",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "tls_ca": "--tls-ca",
    "move_to": "--move-to",
    "move_port": "--move-port",
    "keep": "--keep",
    "bundle": "--bundle",
    "url": ("--dicomweb", "--destination"),
    "calling_aet": ("--aet", "--calling-aet"),
    "calling_aets": "--calling-aet",
    "port": "--port",
    "stable_seconds": "--stable-seconds",
    "max_attempts": "--max-attempts",
    "query": "--query",
    "study_uids": "--study",
    "push_formats": "--push",
    "token_file": "--token-file",
    "basic_auth_file": "--basic-auth-file",
    "spool": "--spool",
    "seg_threshold": "--seg-threshold",
}

#: the keyword arguments that messages below the CLI suggest (``pass overwrite=True``), and what the CLI prints
#: instead (a flag, maybe with its value), where the command has that flag
KEYWORD_FLAGS = {
    "overwrite=True": "--overwrite",
    "allow_inside_source=True": "--allow-inside-source",
    "weights=": "--weights",
    "slices=": "--slices",
    "intensity_range=": "--intensity-range",
    "format 'sc'": "--format sc",
    "token_file=": "--token-file",
    "basic_auth_file=": "--basic-auth-file",
    "tls_ca=": "--tls-ca",
    "tls_cert=": "--tls-cert",
}

_PREFIX = re.compile(rf"(^|failed: )({'|'.join(sorted(PARAMETER_FLAGS, key=len, reverse=True))})(?=:| [^ ]+:)")
_KEYWORD = re.compile("|".join(re.escape(k) for k in KEYWORD_FLAGS))


def name_flags(text: str, flags: frozenset[str] | set[str]) -> str:
    """``text`` with the parameters and keyword arguments it names replaced by their flags among ``flags``.

    A parameter counts at the start of the message, or of the first failed case's message (``... failed: out: ...``).
    """

    def prefix(match: re.Match) -> str:
        candidates = PARAMETER_FLAGS[match[2]]  # a flag, or the flags that may set it, the command's own first
        found = [f for f in ((candidates,) if isinstance(candidates, str) else candidates) if f in flags]
        return match[1] + (found[0] if found else match[2])

    def keyword(match: re.Match) -> str:
        flag = KEYWORD_FLAGS[match[0]]
        return flag if flag.split()[0] in flags else match[0]

    return _KEYWORD.sub(keyword, _PREFIX.sub(prefix, text))


def build_parser() -> argparse.ArgumentParser:
    """The ``medhdm`` parser: ``demo``, ``explain``, ``evaluate``, ``bench-data``, ``export``, ``pacs``."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="medhdm", description="Hierarchical Dynamic Masks for MONAI classifiers.")
    parser.add_argument("--version", action="version", version=f"medhdm {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (demo, explain, evaluate, bench_data, export, pacs):
        command.add_command(sub)
    return parser


def _quiet_libraries() -> None:
    """MONAI's notice, on every DICOM load, that the optional GPU decoder (nvImageCodec) is absent left out:
    pydicom's decoders are used instead, which is what medhdm expects."""
    import logging
    import warnings

    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


def _error_line(err: Exception, flags: frozenset[str]) -> tuple[bool, str]:
    """Whether ``err`` is bad input, and its one line (the flags named)."""
    from ..cohort.run import CohortFailed

    if isinstance(err, CohortFailed):  # the message names the first failure and its error type
        bad_input, text = err.bad_input, str(err)
    else:
        bad_input = isinstance(err, BAD_INPUT)
        text = str(err) if bad_input else f"{type(err).__name__}: {err}"
    return bad_input, name_flags(" ".join(text.split()), flags)


def main(argv: list[str] | None = None) -> int:
    """Run the command of ``argv`` (default: ``sys.argv[1:]``); return its exit status."""
    args = build_parser().parse_args(argv)
    import torch

    from ..io.redact import install_redaction

    redactor = install_redaction()  # every log record and warning, medhdm's or a library's
    _quiet_libraries()
    torch.set_num_threads(max(1, min(int(os.environ.get("MEDHDM_THREADS", "2")), os.cpu_count() or 1)))
    try:
        if getattr(args, "device", None) is not None:
            check_device(args.device, here=getattr(args, "engine", "local") != "ray")
        args.func(args)
    except Exception as err:  # noqa: BLE001 (every error ends as one line and an exit status)
        if args.debug:
            import traceback

            print(redactor.redact(traceback.format_exc()), file=sys.stderr, end="")
        bad_input, text = _error_line(err, args.cli_flags)
        print(f"medhdm {args.command}: error: {redactor.redact(text)}", file=sys.stderr)  # no patient names or IDs
        return 2 if bad_input else 1
    except KeyboardInterrupt:
        print(f"medhdm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
