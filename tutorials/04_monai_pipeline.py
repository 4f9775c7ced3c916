# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # HDM inside a MONAI pipeline and evaluator
#
# A MONAI `SupervisedEvaluator` runs the shipped classifier over LesionBench cases listed
# in a manifest. Its post-transforms explain every case with `Explaind`, take the map
# back to the source grid with `Invertd`, and save it with `SaveImaged`: one NIfTI map
# per case, next to the usual predictions. Needs `pytorch-ignite` (MONAI's engines).
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
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.transforms import (
    Compose,
    Invertd,
    SaveImaged,
)

from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.explain import make_explainer
from medhdm.io.manifest import load_manifest
from medhdm.models import load_model
from medhdm.pipeline import InputSpec, classifier_transforms
from medhdm.transforms import Explaind, LoadStudyd

out = Path(os.environ.get("MEDHDM_TUTORIAL_OUT", "."))
steps = int(os.environ.get("MEDHDM_TUTORIAL_STEPS", "5"))
cases = load_manifest(write_lesionbench(out / "lesionbench2d", n_cases=4, spatial_dims=2))
model = load_model("default")

# %% [markdown]
# ## The pipeline
# Loading through medhdm's checks (`LoadStudyd`: DICOM or NIfTI, no fallback to another reader), then the
# classifier's invertible preprocessing.

# %%
spec = InputSpec((96, 96), intensity_range=LESIONBENCH_INTENSITY_RANGE)
preprocessing = Compose(
    [
        LoadStudyd("image"),
        classifier_transforms(2, spec),
    ]
)
postprocessing = Compose(
    [
        Explaind(keys="image", explainer=make_explainer("hdm", model, steps=steps), output_key="saliency"),
        Invertd(keys="saliency", transform=preprocessing, orig_keys="image", nearest_interp=False),
        SaveImaged(
            keys="saliency",
            output_dir=out / "maps",
            output_postfix="saliency",
            resample=False,
            separate_folder=False,
            print_log=False,
        ),
    ]
)
data = [{"image": c["image"], "label": c["label"]} for c in cases]
loader = DataLoader(Dataset(data, transform=preprocessing), batch_size=2)
evaluator = SupervisedEvaluator(
    device=torch.device("cpu"), val_data_loader=loader, network=model, postprocessing=postprocessing
)
evaluator.run()

# %% [markdown]
# ## One map per case, on the source grid

# %%
maps = sorted((out / "maps").glob("*_saliency.nii.gz"))
print([m.name for m in maps])
fig, axes = plt.subplots(1, len(maps), figsize=(3 * len(maps), 3))
for ax, path, case in zip(np.atleast_1d(axes), maps, cases):
    saliency = nib.load(path)
    image = nib.load(Path(case["image"]).parent / "image.nii.gz")
    assert np.allclose(saliency.affine, image.affine, atol=1e-4)  # the DICOM's geometry
    ax.imshow(np.asarray(image.dataobj)[..., 0].T, cmap="gray")
    ax.imshow(np.asarray(saliency.dataobj).reshape(image.shape[:2]).T, cmap="inferno", alpha=0.5)
    ax.set_title(f"{case['id']} (label {case['label']})")
    ax.axis("off")
fig.savefig(out / "monai_pipeline.png", dpi=80)
