# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Explain a segmentation model: why did it mark this region?
#
# medhdm explains a segmenter (a MONAI UNet, output `(B, K, *S)`) for a *target*: a class
# and a region, the model's own mask (`region="predicted"`), one of its connected
# components (`"component:k"`, 1 the largest) or a mask you give. The explained score is
# the class's mean logit over the region, and the region stays fixed while the masks are
# learned. Every method (HDM, MDM, NeuroMask, Gradient x Input, occlusion, RISE, Grad-CAM)
# takes the same `region=`.
#
# The shipped `lesion_unet2d` / `lesion_unet3d` were trained on LesionBench's cue task:
# a lesion is to be marked only when a small square marker (the cue) lies near it. So the
# explanation of the lesion's mask should show the lesion *and* the cue. Here: one case as
# a NIfTI file, one as a DICOM series, explained end to end, the target region written
# beside the map (NIfTI, and DICOM SEG segment 2) and named in the SR. From the shell:
# `medhdm explain --model segmenter2d --image case.nii.gz --region predicted --out maps`.
#
# Set `MEDHDM_TUTORIAL_STEPS` to run with fewer optimisation steps (the test suite does).

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np

from medhdm import HDM, MaskObjective
from medhdm.data import make_cue_dataset
from medhdm.data.dicom_series import write_series
from medhdm.export.sr import read_structured_report
from medhdm.models import load_model
from medhdm.pipeline import InputSpec, explain_image
from medhdm.study import StudyCase, explain_study
from medhdm.testing import ct_volume

out = Path(os.environ.get("MEDHDM_TUTORIAL_OUT", "."))
steps = int(os.environ.get("MEDHDM_TUTORIAL_STEPS", "0")) or None


def hdm(model):
    """HDM at its defaults, or with fewer optimisation steps for a quick run."""
    if steps is None:
        return HDM(model)
    quick = MaskObjective(steps=steps, lambda_area=2.0, lambda_del=0.0)
    return HDM(model, benchmark_objective=quick, auxiliary_objective=quick, volume_benchmark_objective=quick)


# %% [markdown]
# ## A NIfTI file
# One held-out cue case (the cue present) written as a NIfTI image with its lesion and cue
# masks. `explain_image` loads it with MONAI, resizes it to the model's 64 x 64 input,
# explains the model's predicted mask and inverts the map and the region onto the file's grid.

# %%
model = load_model("segmenter2d")
case = next(c for c in make_cue_dataset(9090, 8, (64, 64)) if c.label == 1)
affine = np.diag([0.8, 0.8, 1.0, 1.0])
nib.save(nib.Nifti1Image(case.image[0], affine), out / "cue_case.nii.gz")
spec = InputSpec(spatial_size=(64, 64), layout="monai", axcodes="RAS", intensity_range=(0.0, 1.0))
result = explain_image(out / "cue_case.nii.gz", hdm(model), spec, class_idx=1)
print("class", result.class_idx, "score", round(result.score, 3), "region", result.region_spec, result.region.sum())
cue, lesion = case.cue[0], case.lesions[0] > 0
total = result.saliency.sum()
print(f"share of the map on the cue {result.saliency[cue].sum() / total:.3f} (its area {cue.mean():.4f})")
print(f"share of the map on the lesion {result.saliency[lesion].sum() / total:.3f} (its area {lesion.mean():.4f})")

# %% [markdown]
# A mask you give works the same way: here the annotated lesion itself.

# %%
nib.save(nib.Nifti1Image(lesion.astype(np.uint8), affine), out / "cue_case_lesion.nii.gz")
given = explain_image(out / "cue_case.nii.gz", hdm(model), spec, class_idx=1, region=out / "cue_case_lesion.nii.gz")
assert given.region_spec == "mask" and np.array_equal(given.region, lesion.astype(np.uint8))
print(f"the given lesion: share of the map on the cue {given.saliency[cue].sum() / given.saliency.sum():.3f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
axes[0].imshow(case.image[0], cmap="gray")
axes[0].contour(cue, colors="yellow")
axes[0].set_title("image, cue in yellow")
axes[1].imshow(result.region, cmap="gray")
axes[1].set_title("target: predicted mask")
axes[2].imshow(case.image[0], cmap="gray")
axes[2].imshow(result.saliency, cmap="hot", alpha=0.5)
axes[2].set_title("HDM map")
for ax in axes:
    ax.axis("off")
fig.savefig(out / "segmenter_nifti.png", dpi=80)

# %% [markdown]
# ## A DICOM series
# The same steps from a DICOM series: a 3D cue case written slice by slice (CT numbers, with
# pydicom's CT_small as the template), explained by the 3D segmenter with `explain_study`,
# which writes the map and `<case>_region.nii.gz` and exports a SEG (segment 1 the salient
# region, segment 2 the explained target region) and an SR naming the class and the region.

# %%
model3d = load_model("segmenter3d")
volume_case = next(c for c in make_cue_dataset(9091, 8, (16, 32, 32)) if c.label == 1)
template, _ = ct_volume(1)
hu = (volume_case.image[0] * 1000.0 - 1000.0).astype(np.float32)  # [0, 1] -> -1000..0 HU
write_series(template, hu, out / "cue_series", pixel_spacing=(1.0, 1.0))
spec3d = InputSpec(spatial_size=(16, 32, 32), intensity_range=(-1000.0, 0.0))
(out / "maps").mkdir(exist_ok=True)
row = explain_study(
    StudyCase(out / "cue_series", "cue3d", 1),
    hdm(model3d),
    spec3d,
    out / "maps",
    export_formats=("seg", "sr"),
    region="predicted",
)
report = read_structured_report(next((out / "maps" / "cue3d").rglob("SR*.dcm")))
print("SR:", report["class_code"], report["region_code"], "-", report["region_meaning"])
region3d = np.asarray(nib.load(out / "maps" / "cue3d" / "cue3d_region.nii.gz").dataobj)
print("region voxels", int(region3d.sum()), "score", round(row["score"], 3))
