"""Evaluating explanation methods against lesion annotations and the model.

- :mod:`~medhdm.evaluation.scoring`: the scoring of one map (localisation, faithfulness), of a saved map too;
- :mod:`~medhdm.evaluation.run`: the evaluation run (a manifest of files, or tensors in memory);
- :mod:`~medhdm.evaluation.statistics`: the summary over cases and paired comparisons;
- :mod:`~medhdm.evaluation.tables`: the table formatter.
"""

from .run import (
    add_case,
    case_figure,
    compare_methods,
    evaluate_cases,
    evaluate_manifest,
    froc_curves,
    froc_from_rows,
    new_figures,
)
from .scoring import FAITHFULNESS_KEYS, ModelView, faithfulness_means, model_view, score_row, score_saved_map
from .statistics import bootstrap_ci, compare_with_first, paired_comparison, summarise
from .tables import format_table

__all__ = [
    "FAITHFULNESS_KEYS",
    "ModelView",
    "add_case",
    "bootstrap_ci",
    "case_figure",
    "compare_methods",
    "compare_with_first",
    "evaluate_cases",
    "evaluate_manifest",
    "faithfulness_means",
    "format_table",
    "froc_curves",
    "froc_from_rows",
    "model_view",
    "new_figures",
    "paired_comparison",
    "score_row",
    "score_saved_map",
    "summarise",
]
