"""``--model`` class paths: only ``torch.nn.Module`` subclasses are built, and nothing else is ever called."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.networks.nets import DenseNet
from pydicom.data import get_testdata_file

from medhdm.cli import main
from medhdm.models import load_model

TINY_2D = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "init_features": 4,
    "growth_rate": 4,
    "block_config": [2, 2],
    "bn_size": 2,
}


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# Callables that must never be called from a class path, with keyword arguments that would
# leave a trace (a marker file) if they were; and classes that are not networks.
def _hostile(marker: Path) -> list[tuple[str, dict]]:
    shell = f"touch {marker}"
    return [
        ("os.system", {"command": shell}),
        ("os:system", {"command": shell}),
        ("subprocess.call", {"args": ["touch", str(marker)]}),
        ("subprocess.Popen", {"args": ["touch", str(marker)]}),  # a class, but not an nn.Module
        ("builtins.exec", {"source": f"open({str(marker)!r}, 'w').close()"}),
        ("pathlib.Path.touch", {"self": str(marker)}),
        ("pathlib.Path", {}),
        ("torch.nn.functional.relu", {"input": 1}),
        ("torch.nn", {}),  # a module object, not a class
    ]


@pytest.mark.parametrize("index", range(9))
def test_load_model_refuses_anything_but_a_module_subclass(tmp_path, index):
    marker = tmp_path / "ran"
    spec, kwargs = _hostile(marker)[index]
    weights = tmp_path / "w.pt"
    torch.save({}, weights)
    with pytest.raises(ValueError, match=r"not a torch\.nn\.Module subclass|cannot import") as err:
        load_model(spec, weights=weights, model_args=kwargs)
    assert repr(spec) in str(err.value)
    assert not marker.exists()


def test_cli_refuses_os_system_and_runs_nothing(tmp_path):
    """The reported attack, through the real command line in a fresh interpreter."""
    marker = tmp_path / "pwned"
    source = Path(get_testdata_file("CT_small.dcm"))
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "medhdm.cli",
            "explain",
            "--image",
            str(source),
            "--out",
            str(out),
            "--model",
            "os.system",
            "--model-args",
            json.dumps({"command": f"touch {marker}"}),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=work,
        check=False,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin", "MEDHDM_THREADS": "1"},
    )
    assert run.returncode == 2, run.stderr
    assert "'os.system'" in run.stderr and "torch.nn.Module" in run.stderr
    assert "Traceback" not in run.stderr
    assert not marker.exists()
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before
    assert _tree(work) == {}  # not even the output folder was made


def test_missing_weights_are_refused_before_the_class_is_built(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(DenseNet, "__init__", lambda self, *a, **k: built.append(1) or torch.nn.Module.__init__(self))
    with pytest.raises(ValueError, match="weights: a state-dict file is needed"):
        load_model("monai.networks.nets.DenseNet", model_args=TINY_2D)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model("monai.networks.nets.DenseNet", weights=tmp_path / "none.pt", model_args=TINY_2D)
    assert built == []


def test_a_network_class_path_still_loads(tmp_path, capsys):
    net = DenseNet(**TINY_2D)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    for spec in ("monai.networks.nets.DenseNet", "monai.networks.nets:DenseNet"):
        model = load_model(spec, weights=tmp_path / "net.pt", model_args=TINY_2D)
        assert isinstance(model, DenseNet) and not model.training
        for a, b in zip(model.state_dict().values(), net.state_dict().values()):
            assert torch.equal(a, b)
    rc = main(
        ["explain", "--image", get_testdata_file("CT_small.dcm"), "--out", str(tmp_path / "o"), "--model", "os.getcwd"]
    )
    assert rc == 2 and "not a torch.nn.Module subclass" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
