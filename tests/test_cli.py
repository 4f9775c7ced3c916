"""The command line's structure: option groups declared once and alike in every command, the method names read from
the registry, ``export --label`` (``--method`` its alias), and messages from below the CLI that name the functions'
parameters, which the CLI names as the flags the user typed."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pydicom
import pytest

from medhdm.cli import build_parser, main
from medhdm.cli.main import name_flags
from medhdm.data.bench_files import write_lesionbench
from medhdm.explain.registry import METHODS
from medhdm.io.outputs import check_output_folder

METHOD_OPTIONS = ("--method", "--method-args", "--steps", "--class-idx")
MODEL_OPTIONS = ("--model", "--bundle", "--weights", "--model-args", "--spatial-size", "--layout", "--axcodes")
MODEL_OPTIONS += ("--intensity-range", "--device", "--slices", "--slice-reduce")
CREDENTIALS = ("--token-file", "--basic-auth-file")


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its name (``pacs explain`` for the nested ones)."""
    found = {}

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[" ".join([*path, name])] = sub
                    walk(sub, [*path, name])

    walk(build_parser(), [])
    return found


def _option(parser: argparse.ArgumentParser, flag: str) -> tuple:
    """What a user sees of ``flag``: its strings, default, type, choices and help."""
    action = next(a for a in parser._actions if flag in a.option_strings)
    return tuple(action.option_strings), action.default, action.type, action.choices, action.help


@pytest.mark.parametrize(
    ("flags", "commands"),
    [
        (METHOD_OPTIONS, ("explain", "pacs explain", "pacs serve")),
        (MODEL_OPTIONS + ("--steps",), ("explain", "evaluate", "pacs explain", "pacs serve")),
        (CREDENTIALS, ("pacs explain", "pacs serve")),
        (("--deidentify-salt-file", "--deidentify-salt", "--retain-dates"), ("explain", "export", "pacs serve")),
        (("--engine", "--workers", "--gpus-per-worker", "--address", "--batch-size"), ("explain", "evaluate")),
    ],
)
def test_an_option_group_is_the_same_in_every_command_that_has_it(flags, commands):
    parsers = _commands()
    for flag in flags:
        seen = {command: _option(parsers[command], flag) for command in commands}
        assert len(set(seen.values())) == 1, (flag, seen)


@pytest.mark.parametrize(
    ("command", "flag"),
    [("explain", "--method"), ("pacs explain", "--method"), ("pacs serve", "--method"), ("evaluate", "--methods")],
)
def test_the_method_help_names_every_method_of_the_registry(command, flag):
    help_text = _option(_commands()[command], flag)[-1]
    missing = [name for name in METHODS if not re.search(rf"\b{name}\b", help_text)]
    assert not missing, (missing, help_text)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A LesionBench DICOM image and a map on its grid."""
    root = tmp_path_factory.mktemp("cli")
    manifest = write_lesionbench(root / "lb", 1, 2)
    image = manifest.parent / "case000" / "image.dcm"
    ds = pydicom.dcmread(image)
    saliency = np.linspace(0, 1, ds.Rows * ds.Columns, dtype=np.float32).reshape(ds.Rows, ds.Columns)
    np.save(root / "map.npy", saliency)
    return image, root / "map.npy"


@pytest.mark.parametrize("flag", ["--label", "--method"])
def test_export_label_names_the_series_and_method_is_its_alias(case, tmp_path, capsys, flag):
    image, saliency = case
    out = tmp_path / "out"
    argv = ["export", "--image", str(image), "--map", str(saliency), "--format", "sc", "--out", str(out)]
    assert main([*argv, flag, "MyMethod"]) == 0, capsys.readouterr().err
    assert pydicom.dcmread(out / "SC_0001.dcm").SeriesDescription == "medhdm MyMethod saliency"


@pytest.mark.parametrize(
    ("text", "flags", "expected"),
    [
        ("out_dir: /x is a file", {"--out"}, "--out: /x is a file"),
        (
            "out: /x exists; pass overwrite=True to redo",
            {"--out", "--overwrite"},
            "--out: /x exists; pass --overwrite to redo",
        ),
        ("out: /x exists; pass overwrite=True", {"--work"}, "out: /x exists; pass overwrite=True"),
        ("address ray://h:1: no cluster", {"--address"}, "--address ray://h:1: no cluster"),
        (
            "2 of 2 cases failed; case 1 (a, b) failed: export_formats: b",
            {"--export"},
            "2 of 2 cases failed; case 1 (a, b) failed: --export: b",
        ),
        ("/data/out: no such file", {"--out"}, "/data/out: no such file"),
        ("image: the out: here", {"--out"}, "image: the out: here"),
        ("workers_x: 1", {"--workers"}, "workers_x: 1"),
        (
            "model: m.pt is not a TorchScript file; for a state dict give the network class path and weights=",
            {"--model", "--weights"},
            "--model: m.pt is not a TorchScript file; for a state dict give the network class path and --weights",
        ),
        ("image: 3D; explain it with slices= ('all')", {"--slices"}, "image: 3D; explain it with --slices ('all')"),
        ("a: constant; check intensity_range=", {"--intensity-range"}, "a: constant; check --intensity-range"),
        ("log_file: cannot append to /x", {"--log-file"}, "--log-file: cannot append to /x"),
        ("calling_aet: expected 1-16 characters", {"--aet", "--calling-aet"}, "--aet: expected 1-16 characters"),
        ("calling_aet: expected 1-16 characters", {"--calling-aet"}, "--calling-aet: expected 1-16 characters"),
        (
            "url: credentials in the URL are refused",
            {"--destination"},
            "--destination: credentials in the URL are refused",
        ),
        (
            "url: x; give token_file= or basic_auth_file=",
            {"--dicomweb", "--token-file", "--basic-auth-file"},
            "--dicomweb: x; give --token-file or --basic-auth-file",
        ),
        (
            "a.dcm: no geometry; export a Secondary Capture (format 'sc')",
            {"--format"},
            "a.dcm: no geometry; export a Secondary Capture (--format sc)",
        ),
        (
            "a.dcm: no geometry; export a Secondary Capture (format 'sc')",
            {"--export"},
            "a.dcm: no geometry; export a Secondary Capture (format 'sc')",
        ),
    ],
)
def test_name_flags_names_the_flags_of_the_command_only(text, flags, expected):
    assert name_flags(text, frozenset(flags)) == expected


def test_a_message_below_the_cli_names_the_parameter_and_the_cli_the_flag(case, tmp_path, capsys):
    """``io.outputs.check_output_folder`` names ``out_dir``, ``write_lesionbench`` ``out_dir`` and ``overwrite=True``,
    the export staging ``out`` and ``overwrite=True``; the CLI prints ``--out`` and ``--overwrite`` in their place."""
    image, saliency = case
    with pytest.raises(ValueError, match=f"^out_dir: {re.escape(str(image))} is a file, not a folder"):
        check_output_folder(image, [])
    write_lesionbench(tmp_path / "lb", 1, 2)
    with pytest.raises(FileExistsError, match=r"^out_dir: .*; give another folder or overwrite=True$"):
        write_lesionbench(tmp_path / "lb", 1, 2, overwrite=False)

    assert main(["bench-data", "--out", str(tmp_path / "lb"), "--cases", "1"]) == 2
    err = capsys.readouterr().err
    assert f"error: --out: {tmp_path / 'lb'}" in err and err.rstrip().endswith("give another folder or --overwrite")

    argv = ["export", "--image", str(image), "--map", str(saliency), "--format", "png", "--out", str(tmp_path / "x")]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"medhdm export: error: --out: {tmp_path / 'x'} already holds a medhdm export" in err, err
    assert "pass --overwrite to replace it" in err and "overwrite=True" not in err, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["pacs", "serve", "--destination", "http://u:p@h/dicom-web", "--calling-aet", "A"],
            "--destination: credentials",
        ),
        (
            ["pacs", "serve", "--destination", "http://h/dicom-web", "--calling-aet", "A", "--port", "70000"],
            "--port: expected 0 to 65535",
        ),
        (
            ["pacs", "explain", "--dicomweb", "http:///dicom-web", "--study", "1.2"],
            "--dicomweb: expected an http(s)://host/... URL",
        ),
        (["pacs", "explain", "--dicomweb", "http://h", "--study", "1..2"], "--study: '1..2' is not a DICOM UID"),
        (["pacs", "explain", "--dicomweb", "http://h", "--query", "Foo"], "--query: expected KEY=VALUE"),
        (
            ["pacs", "explain", "--dicomweb", "http://h", "--study", "1.2", "--seg-threshold", "0"],
            "--seg-threshold: expected a value in (0, 1], got 0",
        ),
        (
            ["pacs", "serve", "--destination", "http://h/dicom-web", "--calling-aet", "A", "--seg-threshold", "1.5"],
            "--seg-threshold: expected a value in (0, 1], got 1.5",
        ),
    ],
)
def test_pacs_messages_name_the_commands_flags(argv, message, tmp_path, capsys):
    """Messages of ``medhdm.pacs`` name parameters (``url``, ``port``, ``study_uids``); each command prints its flag."""
    rc = main(
        [*argv, "--work", str(tmp_path / "w")] if argv[1] == "explain" else [*argv, "--spool", str(tmp_path / "s")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
