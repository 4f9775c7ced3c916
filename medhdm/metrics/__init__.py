"""Scores of saliency maps: against lesion annotations (localisation) and against the model (faithfulness)."""

from .faithfulness import (
    average_drop,
    deletion_auc,
    deletion_curve,
    half_evidence_fraction,
    increase_in_confidence,
    insertion_auc,
    sanity_check,
    seed_agreement,
)
from .localisation import (
    LOCALISATION_KEYS,
    auprc,
    auroc,
    dice_top,
    energy_in_lesion,
    iou_top,
    lesion_hit_rate,
    pointing_game,
    rank_accuracy,
    score,
    score_batch,
)

__all__ = [
    "LOCALISATION_KEYS",
    "auprc",
    "auroc",
    "average_drop",
    "deletion_auc",
    "deletion_curve",
    "dice_top",
    "energy_in_lesion",
    "half_evidence_fraction",
    "increase_in_confidence",
    "insertion_auc",
    "iou_top",
    "lesion_hit_rate",
    "pointing_game",
    "rank_accuracy",
    "sanity_check",
    "score",
    "score_batch",
    "seed_agreement",
]
