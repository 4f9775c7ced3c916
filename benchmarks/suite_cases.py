"""The two small cases of the test suite, every method, one table each.

    python benchmarks/suite_cases.py

1. Two lesions under a classifier that pools by maximum (tests/test_explain_planted.py):
   40 x 40, a fixed blob detector, lesion 2 slightly fainter, constant reference 0.1.
   Mask methods run with the papers' preservation-only loss (as in the test) and with
   medhdm's defaults.
2. The small MONAI DenseNet of tests/test_explain_trained.py (medhdm.testing.train_blob_densenet), 32 x 32
   bright-blob images, 12 held-out positive cases.
Prints method x (pointing game, energy in lesion, pixel AUROC, lesions hit), forward
passes per call and seconds per image on this machine.
"""

from __future__ import annotations

import time
import warnings

import torch
from common import default_methods

from medhdm import HDM, MDM, RISE, GradientInput, MaskObjective, NeuroMask, Occlusion
from medhdm.data import stack_cases
from medhdm.evaluation import compare_methods, format_table, summarise
from medhdm.testing import BlobDetector, plant, train_blob_densenet

COLUMNS = ["pointing_game", "energy_in_lesion", "auroc", "lesion_hit_rate", "passes", "seconds"]


def two_lesion_case() -> None:
    x, labels = plant((40, 40), [(slice(6, 12), slice(6, 12)), (slice(26, 33), slice(24, 31))])
    x[0, 0, 26:33, 24:31] = 0.97
    model = BlobDetector(2, pool="max", kernel=5).calibrate(x)
    bench = MaskObjective(steps=60, lambda_area=2.0)
    aux = MaskObjective(steps=60, lambda_area=2.0, lambda_tv=1.0)
    small = dict(reference=0.1, benchmark_grids=(8, 4), auxiliary_grids=(4, 2), threshold=0.3)
    methods = {
        "HDM (papers' loss, as in the test)": HDM(model, benchmark_objective=bench, auxiliary_objective=aux, **small),
        "HDM (defaults, + deletion)": HDM(model, **small),
        "MDM (papers' loss)": MDM(model, reference=0.1, objective=bench),
        "NeuroMask (papers' loss)": NeuroMask(model, reference=0.1, grid=2, objective=aux),
        "GradientInput": GradientInput(model, reference=0.1),
        "Occlusion": Occlusion(model, mask_size=5),
        "RISE": RISE(model, reference=0.1),
    }
    rows = compare_methods(methods, x, labels, class_idx=1)
    print("Two lesions, max-pool blob detector, 40 x 40 (1 image)\n")
    print(format_table(summarise(rows, COLUMNS), COLUMNS, digits={"seconds": 2}))


def trained_case() -> None:
    model, test = train_blob_densenet()
    positives = [c for c in test if c.n_lesions == 1][:12]
    x, lesions, _ = stack_cases(positives)
    methods = {
        "HDM (test settings: 50 steps, papers' loss, 2 stages)": HDM(
            model,
            benchmark_objective=MaskObjective(steps=50, lambda_area=2.0),
            auxiliary_objective=MaskObjective(steps=50, lambda_area=2.0, lambda_tv=1.0),
            max_stages=2,
        ),
        **{("HDM (defaults)" if k == "HDM" else k): v for k, v in default_methods(model).items()},
    }
    rows = compare_methods(methods, x, lesions, class_idx=1, batch_size=12)
    print("\nSmall DenseNet trained in the test, 32 x 32, 12 held-out one-blob cases (batch of 12)\n")
    print(format_table(summarise(rows, COLUMNS), COLUMNS, digits={"seconds": 2}))


if __name__ == "__main__":
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", category=UserWarning)
    start = time.perf_counter()
    two_lesion_case()
    trained_case()
    print(f"\n({time.perf_counter() - start:.0f} s)")
