"""Running a cohort: ``medhdm explain --manifest`` and ``medhdm evaluate`` over many cases, on
this machine (``--engine local``, the default) or on Ray (``--engine ray``), resumable.

- :mod:`.engine`: the options of a run, the :class:`Engine` protocol and a case's outcome;
- :mod:`.run`: the driver (lock, which cases are complete, failures, the summary);
- :mod:`.records`: the per-case record that makes a case complete for a configuration;
- :mod:`.tasks`: what a worker does (recipes -> runners that load the model once);
- :mod:`.batching`: batches of cases, split and retried when they fail or run out of memory;
- :mod:`.local`, :mod:`.ray_engine`: the engines (``ray`` is imported only by the latter);
- :mod:`.progress`: the progress bar;
- :mod:`.commands`: ``explain`` and ``evaluate`` as cohort runs (their summaries).
"""

from .batching import chunks, is_out_of_memory, run_split
from .commands import evaluate_cohort, explain_cohort, make_engine
from .engine import CaseOutcome, CohortOptions, Engine
from .local import LocalEngine
from .records import case_state, read_record
from .run import CohortFailed, CohortResult, run_cohort
from .tasks import BAD_INPUT, EvaluateRecipe, ExplainRecipe, ModelRecipe, process_batch

__all__ = [
    "BAD_INPUT",
    "CaseOutcome",
    "CohortOptions",
    "CohortFailed",
    "CohortResult",
    "Engine",
    "EvaluateRecipe",
    "ExplainRecipe",
    "LocalEngine",
    "ModelRecipe",
    "case_state",
    "chunks",
    "evaluate_cohort",
    "explain_cohort",
    "is_out_of_memory",
    "make_engine",
    "process_batch",
    "read_record",
    "run_cohort",
    "run_split",
]
