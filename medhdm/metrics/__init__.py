"""Scores of saliency maps against lesion annotations."""

from .localisation import (
    LOCALISATION_KEYS,
    auroc,
    energy_in_lesion,
    lesion_hit_rate,
    pointing_game,
    rank_accuracy,
    score,
)

__all__ = ["LOCALISATION_KEYS", "auroc", "energy_in_lesion", "lesion_hit_rate", "pointing_game", "rank_accuracy", "score"]
