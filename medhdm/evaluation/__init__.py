"""Evaluating explanation methods against lesion annotations and the model.

- :mod:`~medhdm.evaluation.run`: the evaluation run (a manifest of files, or tensors in memory);
- :mod:`~medhdm.evaluation.statistics`: the summary over cases and paired comparisons;
- :mod:`~medhdm.evaluation.tables`: the table formatter.
"""

from .run import FAITHFULNESS_KEYS, compare_methods, evaluate_manifest, score_row
from .statistics import bootstrap_ci, compare_with_first, paired_comparison, summarise
from .tables import format_table

__all__ = [
    "FAITHFULNESS_KEYS",
    "bootstrap_ci",
    "compare_methods",
    "compare_with_first",
    "evaluate_manifest",
    "format_table",
    "paired_comparison",
    "score_row",
    "summarise",
]
