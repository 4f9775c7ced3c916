# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Export a map into the source study, and check it
#
# Explain pydicom's `CT_small.dcm` with the gradient baseline, export the map as a DICOM
# Secondary Capture overlay, a Parametric Map and a SEG (plus NIfTI and PNG), then check
# what a PACS would check: the validator's verdict, the references to the source, and
# the pixels. From the shell:
# `medhdm export --image CT_small.dcm --map map.npy --out exported --format sc,pm,seg`.

# %%
import os
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pydicom
from pydicom.data import get_testdata_file

from medhdm.explain import make_explainer
from medhdm.export import OverlayStyle, export
from medhdm.models import load_model
from medhdm.pipeline import InputSpec, explain_image

out = Path(os.environ.get("MEDHDM_TUTORIAL_OUT", "."))
source_path = get_testdata_file("CT_small.dcm")
result = explain_image(source_path, make_explainer("gxi", load_model("default")), InputSpec((96, 96)), keep_dicom=True)
saliency = result.saliency_in_dicom_order()  # (1, 128, 128): slices, rows, columns, as in the DICOM
print("map", saliency.shape, "class", result.class_idx)

# %% [markdown]
# ## Export
# The objects join the source study (same patient and study, a new series each) and
# reference the exact source instance. Nothing is written into the source's folder.

# %%
written = export(
    result.dicom,
    saliency,
    out / "exported",
    ["sc", "pm", "seg", "nifti", "png"],
    method="GradientInput",
    class_label=result.class_idx,
    style=OverlayStyle(threshold=0.3),
)
for fmt, paths in written.items():
    print(fmt, [p.name for p in paths])

# %% [markdown]
# ## Check
# `dciodvfy` (Debian's dicom3tools) validates against the IODs, if installed.

# %%
source = pydicom.dcmread(source_path)
for path in written["sc"] + written["pm"] + written["seg"]:
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
    if shutil.which("dciodvfy"):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
        print(path.name, ds.SOPClassUID.name, "dciodvfy errors:", errors)
sc = pydicom.dcmread(written["sc"][0])
print("SC references", sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID)
print("Series description:", sc.SeriesDescription)

fig, ax = plt.subplots(figsize=(4, 4))
ax.imshow(sc.pixel_array)
ax.set_title("the Secondary Capture as stored")
ax.axis("off")
fig.savefig(out / "export_to_dicom.png", dpi=80)
