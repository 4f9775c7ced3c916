"""Evaluating explanation methods against lesion annotations and the model.

- :mod:`~medhdm.evaluation.run`: the evaluation run (a manifest of files, or tensors in memory);
- :mod:`~medhdm.evaluation.statistics`: the summary over cases and paired comparisons;
- :mod:`~medhdm.evaluation.tables`: the table formatter.
"""

from .run import (
    FAITHFULNESS_KEYS,
    add_case,
    case_figure,
    compare_methods,
    evaluate_cases,
    evaluate_manifest,
    new_figures,
    score_row,
)
from .statistics import bootstrap_ci, compare_with_first, paired_comparison, summarise
from .tables import format_table

__all__ = [
    "FAITHFULNESS_KEYS",
    "add_case",
    "bootstrap_ci",
    "case_figure",
    "compare_methods",
    "compare_with_first",
    "evaluate_cases",
    "evaluate_manifest",
    "format_table",
    "new_figures",
    "paired_comparison",
    "score_row",
    "summarise",
]
