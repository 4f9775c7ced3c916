"""Scratch (issue 24 follow-up): HDM's stage terms of one call per set, stored for offline re-fusion.

    python benchmarks/focus_dump.py DIMS SEED CASES OUT [random]

Stores refined map T, per-stage new regions C_l, positive signals d_l, signed smoothed gradients, alphas,
the default map, Gradient x Input, lesions. ``random``: the sanity check's randomised copy as well.
"""

import sys
import time
import warnings

import torch
from common import held_out_cases
from hdm_focus import stage_terms

from medhdm import HDM, GradientInput
from medhdm.explain.reference import gaussian_blur
from medhdm.explain.hdm import _SIGNAL_SMOOTHING
from medhdm.metrics.faithfulness import _randomised
from medhdm.models import DEFAULT_3D, load_default_classifier


class RecordingHDM(HDM):
    """HDM that also keeps each stage's signed smoothed gradient (full batch) in ``masks['signed<l>']``."""

    def _sensitivity(self, scorer, x_in, reference, class_idx, run):
        out = super()._sensitivity(scorer, x_in, reference, class_idx, run)
        signal = scorer.gradient(x_in, class_idx, measure="log_odds", signed=True)
        wide = self._sigma(x_in, run.spacing, _SIGNAL_SMOOTHING)
        self._signed = gaussian_blur(signal, wide, padding=self.signal_padding).detach()
        return out

    def _stage(self, scorer, x, reference, class_idx, o_r, idx, level, run):
        o_after = super()._stage(scorer, x, reference, class_idx, o_r, idx, level, run)
        full = torch.zeros_like(x[:, :1])
        full[idx] = self._signed
        run.masks[f"signed{level}"] = full
        return o_after


def dump(model, x, lesions):
    hdm = RecordingHDM(model).explain(x, 1)
    T, C, D, A = stage_terms(hdm)
    signed = [hdm.masks[f"signed{i + 1}"] for i in range(len(C))]
    return {"T": T, "C": C, "D": D, "A": A, "signed": signed, "saliency": hdm.saliency, "lesions": lesions,
            "fused": hdm.masks["fused"], "active": [s.active for s in hdm.stages]}


def main():
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    dims, seed, cases, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    model = load_default_classifier() if dims == 2 else load_default_classifier(DEFAULT_3D)
    size = tuple(model.medhdm_card["recipe"]["spatial_size"])
    x, lesions, _ = held_out_cases(cases, size=size, seed=seed)
    t = time.time()
    res = {"trained": dump(model, x, lesions)}
    res["GI"] = GradientInput(model).explain(x, 1).saliency
    if len(sys.argv) > 5:
        res["random"] = dump(_randomised(model, 0), x, lesions)
    torch.save(res, out)
    print(out, f"{time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
