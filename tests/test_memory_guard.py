"""The memory guard: ``max_batch`` splits the model's batches (same maps), and an out-of-memory call is retried
with smaller batches instead of failing."""

import numpy as np
import pytest
import torch
from torch import nn

from medhdm import HDM, MDM, RISE, GradientInput
from medhdm.data import make_case
from medhdm.models import load_default_classifier


class BatchLimit(nn.Module):
    """The shipped classifier behind a device that holds at most ``limit`` images per call (larger: CUDA's OOM)."""

    def __init__(self, model: nn.Module, limit: int | None = None) -> None:
        super().__init__()
        self.model, self.limit, self.sizes = model, limit, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        if self.limit is not None and x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {x.shape[0]}")
        return self.model(x)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    return torch.stack(
        [torch.from_numpy(make_case(rng, (96, 96), n_lesions=2).image) for _ in range(2)]
    )  # (2, 1, 96, 96)


@pytest.fixture(scope="module")
def model():
    return load_default_classifier()


def test_max_batch_splits_every_call_and_keeps_hdms_map(model, images):
    # HDM at its defaults; the chunks change float rounding only (1e-7 in the masks; HDM's thresholded
    # stages can carry that further, which is why the tolerance is 1e-3 and not 1e-6: see the MDM test)
    plain = HDM(model).explain(images[:1], class_idx=1)
    guarded_model = BatchLimit(model)
    guarded = HDM(guarded_model, max_batch=3).explain(images[:1], class_idx=1)
    assert max(guarded_model.sizes) <= 3
    assert plain.images_evaluated > 3 * plain.forward_passes  # the unguarded calls were larger
    assert guarded.images_evaluated == plain.images_evaluated
    assert guarded.forward_passes == plain.forward_passes
    torch.testing.assert_close(guarded.saliency, plain.saliency, atol=1e-3, rtol=0)


def test_out_of_memory_is_retried_with_halved_batches(model, images):
    plain = MDM(model).set_steps(3).explain(images, class_idx=1)
    small_device = BatchLimit(model, limit=5)
    result = MDM(small_device).set_steps(3).explain(images, class_idx=1)
    assert result.max_batch is not None and result.max_batch <= 5
    assert max(small_device.sizes) > 5  # it did run out of memory first
    torch.testing.assert_close(result.saliency, plain.saliency, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", [RISE, GradientInput])
def test_the_guard_covers_the_baselines(model, images, method):
    plain = method(model).explain(images, class_idx=1)
    result = method(BatchLimit(model, limit=1)).explain(images, class_idx=1)
    assert result.max_batch == 1
    torch.testing.assert_close(result.saliency, plain.saliency, atol=1e-5, rtol=0)


def test_out_of_memory_at_one_image_is_a_clear_error(model, images):
    with pytest.raises(MemoryError, match="out of memory with one image per model call"):
        MDM(BatchLimit(model, limit=0)).set_steps(3).explain(images[:1], class_idx=1)


def test_max_batch_is_checked_and_not_a_setting(model):
    with pytest.raises(ValueError, match="max_batch"):
        HDM(model, max_batch=0)
    assert "max_batch" not in HDM(model, max_batch=4).settings()
