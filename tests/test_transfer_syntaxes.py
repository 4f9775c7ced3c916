"""DICOM as scanners and archives send it: every transfer syntax medhdm reads, against the uncompressed original.

The compressed files are made here by dcmtk (``dcmconv``, ``dcmcrle``, ``dcmcjpeg``, ``dcmcjpls``) and
GDCM (``gdcmconv``) from uncompressed CT originals (pydicom's CT_small at 16, 12 and 8 bits stored;
:func:`medhdm.testing.ct_originals`), as one 2D file, a 3-slice series and an enhanced multi-frame image.

- Image level, every syntax (:data:`medhdm.data.transfer_syntaxes.ENCODINGS`): the pixels medhdm reads equal
  the original's for a lossless syntax; near-lossless JPEG-LS stays within its NEAR bound; the lossy ones
  (JPEG Baseline quality 90 on 8-bit data, JPEG Extended quality 90 on 12-bit data, JPEG 2000 at 10:1)
  within :data:`LOSSY_RMS` and :data:`LOSSY_MAX` of the original's range, and really differ from it.
- Map level, on a LesionBench case with the shipped classifier: Grad-CAM (cheap) and HDM maps from a JPEG
  Lossless SV1 copy equal the uncompressed one's within 1e-5; from a JPEG 2000 10:1 copy within
  :data:`MAP_TOLERANCE` and pointing to the same place.
- Exports from compressed sources: SC, PM, SEG and SR written in Explicit VR Little Endian, referencing the
  compressed instances (lossy tools give new SOP Instance UIDs), Lossy Image Compression carried over,
  0 dciodvfy errors.
- A syntax medhdm cannot decode, or a decoder package that is missing: one line naming the file and the
  syntax (name and UID); no other decoder is tried.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import MPEG4HP41, UID, ExplicitVRLittleEndian
from validators import dciodvfy_errors, tool

from medhdm.cli import main
from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.data.transfer_syntaxes import ENCODINGS, encode, encoding
from medhdm.explain import make_explainer
from medhdm.export import export
from medhdm.export.sr import ReportContent
from medhdm.io import read_dicom
from medhdm.io.decoding import NATIVE, decoder_for
from medhdm.models import load_model
from medhdm.pipeline import InputSpec, explain_image
from medhdm.testing import ct_originals

ROOT = Path(__file__).resolve().parents[1]
#: lossy syntaxes at image level: RMS and largest difference, as shares of the original's range of CT numbers
LOSSY_RMS, LOSSY_MAX = 0.01, 0.05
#: lossy (JPEG 2000 10:1) at map level: the largest difference of a map in [0, 1] from the uncompressed one's
MAP_TOLERANCE = {"gradcam": 0.05, "hdm": 0.25}
#: ... and how far (voxels, each axis) its maximum may lie from the uncompressed map's maximum
POINTING_VOXELS = 2
KINDS = ("file", "series")


def _tools() -> None:
    for name in ("dcmconv", "dcmcrle", "dcmcjpeg", "dcmcjpls"):
        tool(name)
    tool("gdcmconv", "libgdcm-tools")


@pytest.fixture(scope="session")
def originals(tmp_path_factory) -> dict[tuple[int, str], Path]:
    """The uncompressed originals by (bits stored, kind): a 2D file and a 3-slice series folder."""
    root = tmp_path_factory.mktemp("originals")
    out = {}
    for bits in (16, 12, 8):
        out[bits, "file"] = ct_originals(root / f"file{bits}", depth=1, bits_stored=bits)[0]
        out[bits, "series"] = ct_originals(root / f"series{bits}", depth=3, bits_stored=bits)[0].parent
    return out


@pytest.fixture(scope="session")
def encoded(tmp_path_factory, originals) -> dict[tuple[str, str], Path]:
    """Every encoding of :data:`ENCODINGS` of the 2D file and of the series, by (key, kind)."""
    _tools()
    root = tmp_path_factory.mktemp("encoded")
    out = {}
    for item in ENCODINGS:
        out[item.key, "file"] = encode(originals[item.bits_stored, "file"], root / item.key / "image.dcm", item)
        out[item.key, "series"] = encode(originals[item.bits_stored, "series"], root / item.key / "series", item)
    return out


def _sop_uids(path: Path) -> set[str]:
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("item", ENCODINGS, ids=lambda item: item.key)
def test_every_syntax_reads_as_the_uncompressed_original(item, kind, originals, encoded):
    path = encoded[item.key, kind]
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    assert {pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID for f in files} == {
        item.transfer_syntax
    }
    source, original = read_dicom(path), read_dicom(originals[item.bits_stored, kind])
    assert source.pixels.shape == original.pixels.shape == ((3, 128, 128) if kind == "series" else (1, 128, 128))
    assert np.allclose(source.affine_ras, original.affine_ras) and source.spacing == original.spacing
    assert [str(d.SOPInstanceUID) for d in source.datasets] == [
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in source.paths
    ]
    difference = np.abs(source.pixels.astype(np.float64) - original.pixels)
    slope = float(original.first.get("RescaleSlope", 1))
    if item.lossless:
        assert np.array_equal(source.pixels, original.pixels)
    elif item.max_error is not None:  # near-lossless JPEG-LS: the standard's bound, in stored values
        assert 0 < difference.max() <= item.max_error * slope
    else:
        span = float(original.pixels.max() - original.pixels.min())
        assert 0 < difference.max() <= LOSSY_MAX * span
        assert np.sqrt(np.mean(difference**2)) <= LOSSY_RMS * span
    expected = NATIVE if not UID(item.transfer_syntax).is_encapsulated else "pylibjpeg"
    assert decoder_for(item.transfer_syntax) == ("pyjpegls" if item.key.startswith("jpegls") else expected)


@pytest.fixture(scope="session")
def multiframe(tmp_path_factory, originals) -> dict[str, Path]:
    """The 16-bit series as one Legacy Converted Enhanced CT, uncompressed and compressed (lossless and lossy)."""
    _tools()
    root = tmp_path_factory.mktemp("multiframe")
    series = read_dicom(originals[16, "series"])
    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        series.datasets,
        series_instance_uid=pydicom.uid.generate_uid(entropy_srcs=["mf/series"]),
        series_number=9,
        sop_instance_uid=pydicom.uid.generate_uid(entropy_srcs=["mf/instance"]),
        instance_number=1,
    )
    image.save_as(root / "enhanced.dcm")
    out = {"original": root / "enhanced.dcm"}
    for key in ("jpeg_lossless_sv1", "jpeg2000"):
        out[key] = encode(root / "enhanced.dcm", root / key / "enhanced.dcm", key)
    return out


@pytest.mark.parametrize("key", ["jpeg_lossless_sv1", "jpeg2000"])
def test_a_compressed_multiframe_image_reads_as_its_series(multiframe, originals, key):
    ds = pydicom.dcmread(multiframe[key], stop_before_pixels=True)
    assert int(ds.NumberOfFrames) == 3 and ds.file_meta.TransferSyntaxUID == encoding(key).transfer_syntax
    source, series = read_dicom(multiframe[key]), read_dicom(originals[16, "series"])
    assert source.multiframe and np.allclose(source.affine_ras, series.affine_ras)
    difference = np.abs(source.pixels - series.pixels)
    if encoding(key).lossless:
        assert np.array_equal(source.pixels, series.pixels)
    else:
        span = float(series.pixels.max() - series.pixels.min())
        assert 0 < difference.max() <= LOSSY_MAX * span and np.sqrt(np.mean(difference**2)) <= LOSSY_RMS * span


# --- maps -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def lesion_case(tmp_path_factory) -> dict:
    """A 2D LesionBench case with one lesion: its image uncompressed, as JPEG Lossless SV1 and as JPEG 2000 10:1."""
    _tools()
    root = tmp_path_factory.mktemp("lesion_case")
    write_lesionbench(root / "bench", n_cases=1, spatial_dims=2, seed=7, lesion_weights=(0, 1, 0, 0))
    case = root / "bench" / "case000"
    image = case / "image.dcm"
    return {
        "original": image,
        "jpeg_lossless_sv1": encode(image, root / "sv1.dcm", "jpeg_lossless_sv1"),
        "jpeg2000": encode(image, root / "j2k.dcm", "jpeg2000"),
        "lesion": np.squeeze(np.asarray(nib.load(case / "lesion.nii.gz").dataobj)) > 0,
    }


@pytest.fixture(scope="session")
def maps(lesion_case) -> dict[tuple[str, str], np.ndarray]:
    """Grad-CAM and HDM maps of the shipped 2D classifier for each version of the lesion case."""
    model = load_model("default")
    spec = InputSpec((96, 96), intensity_range=LESIONBENCH_INTENSITY_RANGE)
    out = {}
    for method in MAP_TOLERANCE:
        explainer = make_explainer(method, model)
        for version in ("original", "jpeg_lossless_sv1", "jpeg2000"):
            out[method, version] = explain_image(lesion_case[version], explainer, spec).saliency
    return out


@pytest.mark.parametrize("method", list(MAP_TOLERANCE))
def test_maps_from_compressed_copies_match_the_uncompressed_map(maps, lesion_case, method):
    original = maps[method, "original"]
    assert original.max() > 0.5  # a real map, not an empty one that any copy would match
    assert np.abs(maps[method, "jpeg_lossless_sv1"] - original).max() <= 1e-5
    lossy = maps[method, "jpeg2000"]
    assert np.abs(lossy - original).max() <= MAP_TOLERANCE[method]
    peak, lossy_peak = (
        np.unravel_index(original.argmax(), original.shape),
        np.unravel_index(lossy.argmax(), lossy.shape),
    )
    assert max(abs(int(a) - int(b)) for a, b in zip(peak, lossy_peak)) <= POINTING_VOXELS
    lesion = lesion_case["lesion"]
    assert bool(lesion[peak]) == bool(lesion[lossy_peak])  # the pointing game gives the same answer


def test_explain_and_export_a_jpeg_lossless_ct_from_the_command_line(tmp_path, capsys):
    """The reported failure: CT_small compressed by dcmcjpeg (JPEG Lossless SV1), explained and exported."""
    _tools()
    image = encode(pydicom.data.get_testdata_file("CT_small.dcm"), tmp_path / "in" / "ct.dcm", "jpeg_lossless_sv1")
    out = tmp_path / "out"
    rc = main(["explain", "--image", str(image), "--method", "gxi", "--out", str(out), "--export", "sc"])
    assert rc == 0, capsys.readouterr().err
    scs = sorted((out / "ct" / "ct_dicom").glob("SC_*.dcm"))
    assert len(scs) == 1
    sc = pydicom.dcmread(scs[0])
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == pydicom.dcmread(image).SOPInstanceUID


# --- exports --------------------------------------------------------------------------------------------------------


def _referenced(ds: pydicom.Dataset) -> set[str]:
    """Every Referenced SOP Instance UID in ``ds``, at any depth."""
    found = set()

    def walk(dataset):
        for element in dataset:
            if element.keyword == "ReferencedSOPInstanceUID":
                found.add(str(element.value))
            elif element.VR == "SQ":
                for item in element.value:
                    walk(item)

    walk(ds)
    return found


EXPORT_SOURCES = [("jpeg_lossless_sv1", "series"), ("jpeg_extended", "series"), ("jpeg2000", "multiframe")]


@pytest.mark.parametrize(("key", "kind"), EXPORT_SOURCES, ids=lambda v: v)
def test_exports_from_a_compressed_source_are_uncompressed_valid_and_reference_it(
    key, kind, encoded, originals, multiframe, tmp_path
):
    item = encoding(key)
    path = multiframe[key] if kind == "multiframe" else encoded[key, kind]
    original = multiframe["original"] if kind == "multiframe" else originals[item.bits_stored, kind]
    source = read_dicom(path)
    saliency = np.zeros(source.pixels.shape, np.float32)
    saliency[:, 40:70, 50:80] = 0.9
    written = export(path, saliency, tmp_path / "out", ["sc", "pm", "seg", "sr"], report=ReportContent(1, 0.8))
    sources = _sop_uids(path)
    if not item.lossless:
        assert sources.isdisjoint(_sop_uids(original))  # the lossy copy is a new instance
    seg_uid = str(pydicom.dcmread(written["seg"][0]).SOPInstanceUID)
    for fmt, paths in written.items():
        referenced = set()
        for p in paths:
            ds = pydicom.dcmread(p)
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, (fmt, p.name)
            errors, report = dciodvfy_errors(p)
            assert errors == [], f"{fmt} {p.name}:\n{report}"
            referenced |= _referenced(ds)
            if fmt != "sr":
                assert ds.get("LossyImageCompression", "00") == ("00" if item.lossless else "01"), (fmt, p.name)
        assert sources <= referenced, fmt  # every compressed instance is referenced ...
        assert referenced <= sources | {seg_uid}, fmt  # ... and nothing else (the SR also names the SEG)


# --- what cannot be decoded -----------------------------------------------------------------------------------------


def _relabelled(path: Path, target: Path, syntax: str) -> Path:
    """``path`` with its Transfer Syntax UID changed to ``syntax`` (its encapsulated pixel data kept)."""
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


MPEG4 = re.escape(f"{UID(MPEG4HP41).name} ({MPEG4HP41})")


def test_a_syntax_without_decoder_is_one_line_naming_the_file_and_the_syntax(encoded, multiframe, tmp_path):
    single = _relabelled(encoded["jpeg2000_lossless", "file"], tmp_path / "video.dcm", MPEG4HP41)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(single))}: pixel data in {MPEG4} cannot be decoded"):
        read_dicom(single)
    enhanced = _relabelled(multiframe["jpeg2000"], tmp_path / "mf" / "video.dcm", MPEG4HP41)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(enhanced))}: pixel data in {MPEG4} cannot be decoded"):
        read_dicom(enhanced)
    private = _relabelled(encoded["jpeg2000_lossless", "file"], tmp_path / "private.dcm", "1.2.826.0.1.3680043.9.1")
    with pytest.raises(ValueError, match=r"a transfer syntax pydicom does not know \(1\.2\.826\.0\.1\.3680043\.9\.1\)"):
        read_dicom(private)


def test_the_command_line_names_the_syntax_it_cannot_decode_in_one_line(encoded, tmp_path, capsys):
    series = tmp_path / "series"
    paths = sorted(encoded["jpeg2000_lossless", "series"].iterdir())
    for p in paths[:-1]:
        (series / p.name).parent.mkdir(parents=True, exist_ok=True)
        (series / p.name).write_bytes(p.read_bytes())
    bad = _relabelled(paths[-1], series / paths[-1].name, MPEG4HP41)
    rc = main(["explain", "--image", str(series), "--method", "gxi", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert str(bad) in err and UID(MPEG4HP41).name in err and MPEG4HP41 in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.nii.gz"))


#: run first in a fresh interpreter: pyjpegls as if not installed (neither its module jpeg_ls nor its metadata)
HIDE_PYJPEGLS = """
import importlib.machinery as machinery, sys
class Hidden(machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] == "jpeg_ls" else super().find_spec(name, path, target)
    @classmethod
    def find_distributions(cls, *args, **kwargs):
        return (d for d in super().find_distributions(*args, **kwargs) if d.metadata["Name"] != "pyjpegls")
sys.meta_path[sys.meta_path.index(machinery.PathFinder)] = Hidden
"""


def test_a_missing_decoder_package_is_named_and_no_other_decoder_is_tried(encoded):
    """Without pyjpegls, JPEG-LS is refused naming the package, although pylibjpeg-libjpeg could decode it:
    the decoder is medhdm's choice, the same on every install."""
    path = encoded["jpegls_lossless", "file"]
    script = HIDE_PYJPEGLS + (
        "import pydicom, pydicom.pixels.decoders.pylibjpeg as p; assert p.is_available(pydicom.uid.JPEGLSLossless)\n"
        "from medhdm.io import read_dicom\n"
        f"read_dicom({str(path)!r})\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"ValueError: {path}: pixel data in JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)"
    )
    assert "needs pydicom's pyjpegls decoder" in last and "pip install 'numpy' 'pyjpegls>=1.2'" in last


def test_pyproject_installs_the_decoder_of_every_compressed_syntax():
    """A fresh install decodes every syntax: each one's plugin requirements are dependencies of medhdm."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    for item in ENCODINGS:
        plugin = decoder_for(item.transfer_syntax)
        if plugin != NATIVE:
            requirements = importlib.import_module(f"pydicom.pixels.decoders.{plugin}").DECODER_DEPENDENCIES
            needed = {re.split(r"[<>=]", d, maxsplit=1)[0].lower() for d in requirements[item.transfer_syntax]}
            assert needed - {"numpy"} <= declared, (item.key, needed - declared)
