"""Explaind inside Compose and as an evaluator post-transform that writes one map per case."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    Resized,
    SaveImaged,
)

from medhdm import GradientInput
from medhdm.testing import BlobDetector, plant
from medhdm.transforms import Explaind


def test_explaind_in_compose_points_at_the_planted_box():
    x, _ = plant((48, 48), [(slice(30, 36), slice(8, 14))])
    model = BlobDetector(2).calibrate(x)
    image = MetaTensor(x[0], affine=torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0])))
    out = Compose([Explaind(keys="image", explainer=GradientInput(model), output_key="saliency")])({"image": image})
    saliency = out["saliency"]
    assert isinstance(saliency, MetaTensor) and tuple(saliency.shape) == (1, 48, 48)
    torch.testing.assert_close(saliency.affine, image.affine)
    row, col = np.unravel_index(int(saliency[0].argmax()), (48, 48))
    assert 30 <= row < 36 and 8 <= col < 14
    assert out["saliency_class"] == 1 and out["saliency_score"] > 0.9
    # Explaining the other class on request, through a key as a label would be.
    other = Explaind("image", GradientInput(model), class_idx_key="label")({"image": image, "label": torch.tensor([0])})
    assert other["image_saliency_class"] == 0


def test_explaind_errors():
    model = BlobDetector(2)
    with pytest.raises(TypeError, match="expected a medhdm Explainer"):
        Explaind("image", explainer=model)
    with pytest.raises(ValueError, match="one per key"):
        Explaind(["a", "b"], GradientInput(model), output_key=["s"])
    with pytest.raises(ValueError, match="channel-first image tensor"):
        Explaind("image", GradientInput(model))({"image": torch.zeros(8, 8)})
    with pytest.raises(KeyError, match="class_idx_key"):
        Explaind("image", GradientInput(model), class_idx_key="label")({"image": torch.zeros(1, 8, 8)})


def test_evaluator_post_transform_writes_one_map_per_case_on_the_source_grid(tmp_path):
    from monai.engines import SupervisedEvaluator

    # Two NIfTI cases of 60 x 44 with a bright box each, at different places.
    boxes = [(slice(40, 48), slice(6, 14)), (slice(10, 18), slice(28, 36))]
    cases = []
    for i, box in enumerate(boxes):
        x, _ = plant((60, 44), [box], seed=i)
        affine = np.diag([0.8, 1.2, 1.0, 1.0])
        nib.save(nib.Nifti1Image(x[0, 0].numpy(), affine), tmp_path / f"case{i}.nii.gz")
        cases.append({"image": str(tmp_path / f"case{i}.nii.gz")})
    model = BlobDetector(2)
    with torch.no_grad():
        model.calibrate(torch.nn.functional.interpolate(plant((60, 44), [boxes[0]])[0], size=(48, 48)))
    preprocessing = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Resized("image", (48, 48))])
    loader = DataLoader(Dataset(cases, transform=preprocessing), batch_size=2)
    post = Compose(
        [
            Explaind(keys="image", explainer=GradientInput(model), output_key="saliency"),
            Invertd(keys="saliency", transform=preprocessing, orig_keys="image", nearest_interp=False),
            SaveImaged(
                keys="saliency",
                output_dir=tmp_path / "maps",
                output_postfix="saliency",
                resample=False,
                separate_folder=False,
                print_log=False,
            ),
        ]
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=model, postprocessing=post
    )
    evaluator.run()
    for i, box in enumerate(boxes):
        written = nib.load(tmp_path / "maps" / f"case{i}_saliency.nii.gz")
        assert written.shape[:2] == (60, 44)
        np.testing.assert_allclose(written.affine, np.diag([0.8, 1.2, 1.0, 1.0]), atol=1e-5)
        data = np.asarray(written.dataobj).reshape(60, 44)
        row, col = np.unravel_index(int(data.argmax()), data.shape)
        assert box[0].start <= row < box[0].stop and box[1].start <= col < box[1].stop
