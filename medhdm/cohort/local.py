"""The local engine: one process, the model and explainer(s) loaded once, batches one after another."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from .engine import CaseOutcome
from .tasks import CaseRunner, process_batch

__all__ = ["LocalEngine"]


class LocalEngine:
    """Runs batches in this process with ``runner`` (torch threads as the caller set them); an
    :class:`~medhdm.cohort.engine.Engine`."""

    name = "local"

    def __init__(self, runner: CaseRunner) -> None:
        self.runner = runner

    @property
    def key(self) -> str:
        """The configuration hash of the runner (a Ray engine has one too)."""
        return self.runner.key

    def start(self) -> None:
        """Nothing to start."""

    def map(self, batches: Iterable[list[dict]], out: Path) -> Iterator[list[CaseOutcome]]:
        """The outcomes of each batch (:func:`~medhdm.cohort.tasks.process_batch`), in order."""
        for batch in batches:
            yield process_batch(self.runner, batch, out)

    def close(self) -> None:
        """Nothing to stop."""
