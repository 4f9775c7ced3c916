"""What the cohort driver works with: the options of a run (:class:`CohortOptions`), what an engine
is (:class:`Engine`, which :class:`~medhdm.cohort.local.LocalEngine` and
:class:`~medhdm.cohort.ray_engine.RayEngine` satisfy) and what it reports per case (:class:`CaseOutcome`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["ENGINES", "CaseOutcome", "CohortOptions", "Engine"]

#: the engines a :class:`CohortOptions` may name
ENGINES = ("local", "ray")


@dataclass(frozen=True, kw_only=True)
class CaseOutcome:
    """What a worker did with one case of a batch (:func:`~medhdm.cohort.tasks.process_batch`).

    Attributes:
        case: the case id.
        image: the case's image (the absolute path the worker was given).
        status: ``"done"``, ``"skipped"`` (complete for this configuration already, e.g. done by a
            worker that died) or ``"failed"``.
        seconds: the case's share of its batch's time (0 when skipped or failed).
        error: why it failed, on one line (``""`` unless failed).
        error_type: the error's class name (``""`` unless failed).
        bad_input: the error means the input is bad (:data:`medhdm.io.errors.BAD_INPUT`).
        index: the case's 1-based position among the run's cases, set by the driver (0 until then).
    """

    case: str
    image: str
    status: str
    seconds: float = 0.0
    error: str = ""
    error_type: str = ""
    bad_input: bool = False
    index: int = 0

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@runtime_checkable
class Engine(Protocol):
    """Runs batches of cases; :func:`~medhdm.cohort.run.run_cohort` drives it as
    ``start()``, then ``map(batches, out)``, then ``close()`` (always)."""

    name: str

    @property
    def key(self) -> str:
        """The configuration hash of the runner(s) that do the cases."""
        ...

    def start(self) -> None:
        """Get ready to run batches (workers started); nothing when already started."""
        ...

    def map(self, batches: Iterable[list[dict]], out: Path) -> Iterator[list[CaseOutcome]]:
        """The outcomes of each batch of manifest entries, written into ``out``, as the batches finish."""
        ...

    def close(self) -> None:
        """Stop what :meth:`start` started."""
        ...


@dataclass(frozen=True)
class CohortOptions:
    """How a cohort runs, the same for :func:`~medhdm.cohort.explain_cohort` and
    :func:`~medhdm.cohort.evaluate_cohort`.

    Attributes:
        engine: ``"local"`` (this process), ``"ray"`` (a pool of Ray actors) or an :class:`Engine`
            already built (:func:`~medhdm.cohort.commands.make_engine`; tests hold one to kill a worker).
        batch_size: cases per batch sent to a worker.
        overwrite: redo the cases complete for another configuration (otherwise the run is refused).
        workers: Ray actors (``engine="ray"``).
        gpus_per_worker: GPUs reserved per Ray actor (0: CPU only; 0.5: two actors per GPU).
        address: the Ray cluster to join (None: a local cluster; ``"auto"``; ``"ray://host:port"``).
        log: where progress lines go (one per case when stderr is not a terminal) and restarted actors are reported.
        on_batch: called with each batch's outcomes as it finishes.
        progress: show a progress bar (on a terminal).

    Raises:
        ValueError: an unknown engine name, a batch size or a worker count below 1, negative GPUs.
        TypeError: an engine that is neither a name nor an :class:`Engine`.
    """

    engine: str | Engine = "local"
    batch_size: int = 1
    overwrite: bool = False
    workers: int = 2
    gpus_per_worker: float = 0.0
    address: str | None = None
    log: Callable[[str], None] | None = None
    on_batch: Callable[[list[CaseOutcome]], None] | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.engine, str):
            if self.engine not in ENGINES:
                raise ValueError(f"engine: expected local or ray, got {self.engine!r}")
        elif not isinstance(self.engine, Engine):
            raise TypeError(f"engine: expected 'local', 'ray' or an Engine, got {type(self.engine).__name__}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected at least 1, got {self.batch_size}")
        if self.workers < 1:
            raise ValueError(f"workers: expected at least 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker: expected 0 or more, got {self.gpus_per_worker}")
