# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Explain a study that lives in Orthanc, and push the results back into it
#
# A LesionBench CT series goes into a private Orthanc (with its DICOMweb plugin), is
# retrieved by medhdm over DICOMweb, explained, and its explanation comes back into the
# same study as four new series: a Secondary Capture overlay per slice (any viewer shows
# it), a Parametric Map, a SEG of the salient region, and a structured report (SR) with
# the model's identity, the method, the explained class and its probability, and the
# localisation scores against the study's lesion annotation. From the shell, with your
# own Orthanc:
#
#     medhdm pacs explain --dicomweb http://localhost:8042/dicom-web --study <Study UID> \
#         --model default3d --method hdm --intensity-range=-1000,0 --push sc,pm,seg,sr
#
# Credentials come from `MEDHDM_PACS_USER`/`MEDHDM_PACS_PASSWORD` or `MEDHDM_PACS_TOKEN`
# (or `--basic-auth-file`/`--token-file`), never from the command line. Needs Debian's
# `orthanc` and `orthanc-dicomweb` packages.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import io

import matplotlib.image
import matplotlib.pyplot as plt
import pydicom

from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.explain import make_explainer
from medhdm.export import read_structured_report
from medhdm.models import load_model
from medhdm.pacs import PacsOptions, explain_archive_studies, parse_destination
from medhdm.pacs.orthanc import LocalOrthanc
from medhdm.pipeline import InputSpec

out = Path(os.environ.get("MEDHDM_TUTORIAL_OUT", "."))
steps = int(os.environ.get("MEDHDM_TUTORIAL_STEPS", "5"))
bench = Path(tempfile.mkdtemp(prefix="lesionbench-"))
write_lesionbench(bench, n_cases=2, spatial_dims=3, seed=7)
case = bench / "case001"  # a case with lesions; lesion_seg.dcm is its annotation
files = sorted((case / "image").glob("*.dcm")) + [case / "lesion_seg.dcm"]
study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
print("study", study_uid, "-", len(files) - 1, "CT slices and a lesion SEG")

# %% [markdown]
# ## An archive holding the study
# `LocalOrthanc` starts Orthanc on free local ports with its storage in a temporary
# folder; with your own archive, skip this and use its DICOMweb URL.

# %%
orthanc = LocalOrthanc(Path(tempfile.mkdtemp(prefix="orthanc-"))).start()
orthanc.upload(files)
for series in orthanc.series_of(study_uid):
    print(f"{series['number']:>5}  {series['modality']:<4} {series['instances']:>3}  {series['description']}")

# %% [markdown]
# ## Retrieve, explain, push back
# `explain_archive_studies` is what `medhdm pacs explain` runs: per study it lists the
# instances (QIDO-RS), retrieves the CT series into a local cache (WADO-RS), explains it
# through `medhdm.study.explain_study`, exports SC/PM/SEG and the SR (`medhdm.export`) with
# deterministic UIDs, and stores everything into the study (STOW-RS). `PacsOptions` holds
# what every study of a run shares: the model's name, the formats, slices, class, de-identification.

# %%
model = load_model("default3d")
spec = InputSpec(InputSpec.for_model(model).spatial_size, intensity_range=LESIONBENCH_INTENSITY_RANGE)
explainer = make_explainer("hdm", model, steps=steps)
archive = parse_destination(orthanc.dicomweb_url)
work = out / "pacs-work"
options = PacsOptions(model_name="default3d")
(outcome,) = explain_archive_studies(archive, [study_uid], explainer, spec, work, options)
print(outcome.status, outcome.seconds)
for series in orthanc.series_of(study_uid):
    print(f"{series['number']:>5}  {series['modality']:<4} {series['instances']:>3}  {series['description']}")

# %% [markdown]
# ## The same command again adds nothing
# The derived UIDs are a function of the source UIDs, the model's weights, the method and
# its settings, and medhdm's version: the archive already holds them all, so the study is
# skipped without being retrieved.

# %%
before = orthanc.instances_count()
(again,) = explain_archive_studies(archive, [study_uid], explainer, spec, work, options)
print(again.status, "- instances before", before, "after", orthanc.instances_count())
assert again.status == "skipped" and orthanc.instances_count() == before

# %% [markdown]
# ## What the archive shows
# Orthanc renders the Secondary Capture of the slice with the most lesion (its
# `/instances/{id}/preview`); the SR read back holds the model, the decision and the scores.

# %%
sr_path = next(p for p in outcome.derived if p.name == "SR.dcm")
report = read_structured_report(sr_path)
print("model", report["parameters"]["model name"], "weights", report["parameters"]["model weights sha256"][:12])
print("class", report["class_meaning"], "probability", round(report["probability"], 3), "scores", report["scores"])

sc_series = next(
    s for s in orthanc.series_of(study_uid) if s["description"].startswith("medhdm") and s["instances"] > 1
)
instances = orthanc.instances_of_series(sc_series["id"])
middle = instances[len(instances) // 2]
preview = matplotlib.image.imread(io.BytesIO(orthanc.rest("GET", f"/instances/{middle}/preview").content), format="png")
fig, ax = plt.subplots(figsize=(4, 4))
ax.imshow(preview)
ax.set_title("Orthanc's preview of a medhdm SC")
ax.axis("off")
fig.savefig(out / "orthanc_preview.png", dpi=80, bbox_inches="tight")
orthanc.stop()
