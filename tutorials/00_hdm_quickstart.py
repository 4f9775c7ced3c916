# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # HDM in five minutes
#
# Explain the shipped lesion classifier (a small MONAI DenseNet) on one synthetic case
# with three lesions, look at what each HDM stage found, and compare with a one-pass
# gradient baseline, scored against the lesion annotation.
#
# Set `MEDHDM_TUTORIAL_STEPS` to run with fewer optimisation steps (the test suite does).

# %%
import os

import numpy as np
import torch

from medhdm import HDM, GradientInput, MaskObjective
from medhdm.data import make_case
from medhdm.metrics import score
from medhdm.models import load_default_classifier

steps = int(os.environ.get("MEDHDM_TUTORIAL_STEPS", "5"))
model = load_default_classifier()
case = make_case(np.random.default_rng(7), (96, 96), n_lesions=3)
x = torch.from_numpy(case.image)[None]  # (1, 1, 96, 96)
lesions = torch.from_numpy(case.lesions)  # (1, 96, 96), one label per lesion
print("p(lesion) =", torch.softmax(model(x), 1)[0, 1].item())

# %% [markdown]
# ## Explain with HDM
# `explain` returns the full record; calling the explainer returns only the map.

# %%
# HDM's defaults, with the step count spelled out: 5 Adam steps per mask phase, lr 0.3
# annealed to 0.03; benchmark masks (grids S/16, S/8) with a 2 % area budget and the deletion
# term, auxiliary masks (S/4, S/2) with the mean-area penalty and smoothness; up to 4 stages,
# each explaining the image with the soft regions of the stages before removed and weighted by
# the larger of the evidence (log-odds) its region carries alone and the evidence its removal
# took; the fused map smoothed by a Gaussian of 1/32 of the image size,
# then refined at pixel level: fused map + the positive part of each stage input's smoothed gradient
# (smoothed with 0 outside the image).
fast = {"steps": steps, "lr": 0.3, "final_lr": 0.03}
hdm = HDM(
    model,
    benchmark_objective=MaskObjective(**fast, area=0.02, lambda_area=30.0, lambda_del=1.0),
    auxiliary_objective=MaskObjective(**fast, lambda_area=1.0, lambda_del=1.0, lambda_tv=1.0),
    fusion="either",
    smooth=1 / 32,
    refine=1.0,
    refine_by="positive_gradient",
    signal_padding="zeros",
    threshold=None,
)
result = hdm.explain(x, class_idx=1)
for level, stage in enumerate(result.stages, start=1):
    print(
        f"stage {level}: p before {stage.score_before.item():.3f}, after removing its region "
        f"{stage.score_after.item():.3f}, fusion weight {stage.alpha.item():.2f}"
    )
print("forward passes:", result.forward_passes, "backward passes:", result.backward_passes)

# %% [markdown]
# ## Compare with Gradient x Input, scored against the lesions

# %%
baseline = GradientInput(model)(x, class_idx=1)
for name, saliency in {"HDM": result.saliency, "GradientInput": baseline}.items():
    metrics = score(saliency[0], lesions)
    print(name, {k: round(v, 3) for k, v in metrics.items()})

# %% [markdown]
# ## Look at it

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

panels = {"image": x[0, 0], "HDM": result.saliency[0, 0], "GradientInput": baseline[0, 0]}
panels.update({f"stage {i + 1}": s.map[0, 0] for i, s in enumerate(result.stages)})
fig, axes = plt.subplots(1, len(panels), figsize=(2.5 * len(panels), 2.6))
for ax, (title, image) in zip(axes, panels.items()):
    ax.imshow(image, cmap="gray" if title == "image" else "inferno")
    ax.contour(lesions[0] > 0, levels=[0.5], colors="cyan", linewidths=0.7)
    ax.set_title(title)
    ax.axis("off")
fig.tight_layout()
out = os.environ.get("MEDHDM_TUTORIAL_OUT", ".")
fig.savefig(os.path.join(out, "hdm_quickstart.png"), dpi=80)
