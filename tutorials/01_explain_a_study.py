# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Explain a DICOM study and put the map back on its grid
#
# Write a small LesionBench case as a DICOM image (what a PACS export gives you), load
# it through MONAI with medhdm's DICOM reader, explain the shipped classifier with HDM,
# and check that the map comes back on the source grid: same shape, same affine, its
# hottest pixel on the annotated lesion. The same steps run from the shell as
# `medhdm explain --image case000/image.dcm --intensity-range=-1000,0 --out maps`.
#
# Set `MEDHDM_TUTORIAL_STEPS` to run with fewer optimisation steps (the test suite does).

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.explain import make_explainer
from medhdm.io.annotations import ImageGrid, load_annotation
from medhdm.io.manifest import load_manifest
from medhdm.models import load_model
from medhdm.pipeline import InputSpec, explain_image, load_image

out = Path(os.environ.get("MEDHDM_TUTORIAL_OUT", "."))
steps = int(os.environ.get("MEDHDM_TUTORIAL_STEPS", "5"))
manifest = write_lesionbench(out / "lesionbench2d", n_cases=2, spatial_dims=2)
case = load_manifest(manifest)[0]
print(case)

# %% [markdown]
# ## Load with MONAI
# `load_image` is `LoadImage(reader=DicomSeriesReader())` plus `EnsureChannelFirst`: a
# MetaTensor with the RAS affine and the DICOM provenance (UIDs of every slice).

# %%
image = load_image(case["image"])
print(image.shape, image.meta["Modality"], image.meta["StudyInstanceUID"])
print(image.affine)

# %% [markdown]
# ## Explain, and invert the preprocessing
# The classifier needs 96 x 96 inputs on the scale it was trained on; the preprocessing is
# an invertible MONAI `Compose`, so the map is resampled back onto the source pixels.

# %%
model = load_model("default")
spec = InputSpec((96, 96), intensity_range=LESIONBENCH_INTENSITY_RANGE)
result = explain_image(case["image"], make_explainer("hdm", model, steps=steps), spec)
print("class", result.class_idx, "p =", round(result.score, 3), "map", result.saliency.shape)
assert result.saliency.shape == tuple(image.shape[1:])
assert np.allclose(result.affine, image.affine.numpy())

# %% [markdown]
# ## Does it point at the lesion?

# %%
lesion = load_annotation(case["lesion"], ImageGrid.from_image(image))
peak = np.unravel_index(result.saliency.argmax(), result.saliency.shape)
print("hottest pixel", peak, "inside the lesion:", bool(lesion[peak] > 0))

fig, axes = plt.subplots(1, 2, figsize=(8, 4))
axes[0].imshow(image[0].numpy().T, cmap="gray")
axes[0].contour(lesion.T > 0, levels=[0.5], colors="cyan")
axes[0].set_title("image and lesion")
axes[1].imshow(image[0].numpy().T, cmap="gray")
axes[1].imshow(result.saliency.T, cmap="inferno", alpha=0.5)
axes[1].set_title(f"HDM, class {result.class_idx}")
for ax in axes:
    ax.axis("off")
fig.savefig(out / "explain_a_study.png", dpi=80)
