# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Explain a MONAI bundle with its own preprocessing
#
# MONAI users ship models as bundles (the Model Zoo layout: `configs/metadata.json`,
# `configs/inference.json` with `network_def` and `preprocessing`, `models/model.pt`).
# medhdm explains a bundle two ways, both with the bundle's own preprocessing (nothing re-typed):
#
# 1. `medhdm explain --bundle DIR` (also `evaluate`, `pacs explain`, `pacs serve`);
# 2. the bundle component `explain.json`, run by MONAI itself after the bundle's inference:
#    `python -m monai.bundle run --config_file "['configs/inference.json','configs/explain.json']"`.
#
# Here the bundle is written with MONAI's `init_bundle` around medhdm's shipped 2D classifier, with
# the preprocessing LesionBench's NIfTI files need. Set `MEDHDM_TUTORIAL_OUT` for the output folder.

# %%
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from monai.bundle import init_bundle

from medhdm.cli import main
from medhdm.data.bench_files import write_lesionbench
from medhdm.models import load_bundle, load_default_classifier, write_explain_config

out = Path(os.environ.get("MEDHDM_TUTORIAL_OUT", ".")).resolve()
manifest = write_lesionbench(out / "lesionbench2d", n_cases=2, spatial_dims=2, seed=7, lesion_weights=(0, 1, 0, 0))
images = sorted((out / "lesionbench2d").glob("case*/image.nii.gz"))

# %% [markdown]
# ## A bundle
# The inference config in the Model Zoo's style: a `SupervisedEvaluator` over the files of
# `dataset_dir`, predictions saved by `ClassificationSaver`. The preprocessing loads the NIfTI file,
# drops its one-slice axis, puts the axes in the order the classifier was trained on (slice, row,
# column: `Orientationd` to `PL`) and maps CT numbers -1000..0 to 0..1.

# %%
preprocessing = [
    {"_target_": "LoadImaged", "keys": "image", "image_only": True},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "SqueezeDimd", "keys": "image", "dim": -1},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "PL"},
    {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 0, "b_min": 0, "b_max": 1},
    {"_target_": "Resized", "keys": "image", "spatial_size": [96, 96], "mode": "bilinear"},
]
inference = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "device": "$torch.device('cpu')",
    "dataset_dir": "data",
    "output_dir": "$@bundle_root + '/eval'",
    "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*', 'image.nii.gz')))",
    "network_def": {
        "_target_": "DenseNet",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 2,
        "init_features": 16,
        "growth_rate": 8,
        "block_config": [3, 3, 3],
        "bn_size": 2,
    },
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
    "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 0},
    "inferer": {"_target_": "SimpleInferer"},
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}],
    },
    "handlers": [
        {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
        },
        {
            "_target_": "ClassificationSaver",
            "output_dir": "@output_dir",
            "batch_transform": "$lambda batch: [item['image'].meta for item in batch]",
            "output_transform": "$lambda output: [item['pred'].argmax() for item in output]",
        },
    ],
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
        "val_handlers": "@handlers",
    },
    "run": ["$@evaluator.run()"],
}
metadata = {
    "version": "0.1.0",
    "name": "lesion classifier (tutorial)",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [96, 96]}},
        "outputs": {
            "pred": {"type": "probabilities", "num_channels": 2, "channel_def": {"0": "no lesion", "1": "lesion"}}
        },
    },
}
bundle = out / "lesion_bundle"
if not bundle.exists():
    init_bundle(bundle, network=load_default_classifier(), metadata_str=metadata, inference_str=inference)
loaded = load_bundle(bundle)
print("classes:", loaded.class_names, "| bundle sha256:", loaded.digest[:16])

# %% [markdown]
# ## 1. `medhdm explain --bundle`
# The network from `network_def` and `models/model.pt`, the input through the bundle's
# `preprocessing` (its loading steps replaced by medhdm's checked loader), the map taken back
# to the source grid through the same transforms inverted. The run's configuration hash covers
# the bundle's files (`record.json`).

# %%
main(
    [
        "explain",
        *[a for i in images for a in ("--image", str(i))],
        "--bundle",
        str(bundle),
        "--out",
        str(out / "via_bundle"),
    ]
)

# %% [markdown]
# ## 2. `python -m monai.bundle run` with medhdm's `explain.json`
# `write_explain_config` copies the component into `configs/`. It adds medhdm's `Explaind`,
# `Invertd` and `SaveImaged` to the evaluator's postprocessing, so the maps land beside the
# predictions in the bundle's `output_dir`.

# %%
explain_json = write_explain_config(bundle)
command = [
    sys.executable, "-m", "monai.bundle", "run",
    "--config_file", f"['{bundle}/configs/inference.json','{explain_json}']",
    "--bundle_root", str(bundle),
    "--dataset_dir", str(out / "lesionbench2d"),
    "--explain_data_root_dir", str(out / "lesionbench2d"),  # one folder per case: the files share a name
]  # fmt: skip
subprocess.run(command, check=True, env={**os.environ, "MEDHDM_THREADS": "1"})
print(sorted(p.name for p in (bundle / "eval").iterdir()))

# %% [markdown]
# For DICOM inputs (a datalist of series folders or files, loaded by the bundle's own `LoadImaged`), the
# component also writes each map into its source study when asked:
# `--explain_dicom_formats "['pm','seg','sr']"` (any of `sc`, `pm`, `seg`, `sr`) puts a Parametric Map, a SEG of the
# map at `explain_dicom_seg_threshold` (default 0.5) and the structured report (the explained class and its
# probability) in `<name>_dicom/` beside `<name>_saliency.nii.gz`. The map must come back on the source grid
# (it does through `Invertd`); anything else is an error naming the file.
#
# The two ways give the same map (up to the floating-point effect of torch's thread count).

# %%
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
first = images[0].parent.name
image = np.asarray(nib.load(images[0]).dataobj)[..., 0]
via_bundle = np.asarray(nib.load(next((out / "via_bundle").glob(f"{first}*/*_saliency.nii.gz"))).dataobj)[..., 0]
via_run = np.asarray(nib.load(bundle / "eval" / first / "image_saliency.nii.gz").dataobj).reshape(via_bundle.shape)
for ax, data, title in zip(axes, (image, via_bundle, via_run), ("image", "--bundle", "monai.bundle run")):
    ax.imshow(np.asarray(data).T, cmap="gray" if title == "image" else "inferno")
    ax.set_title(title)
    ax.axis("off")
fig.savefig(out / "bundle_maps.png", dpi=80)
print("largest difference:", float(np.abs(via_bundle - via_run).max()))
