"""The cohort driver: lock ``--out``, find the cases already complete, run the rest on an engine,
record failures, and rebuild the run's summary from the per-case records.

Rules (the same for every engine):

- ``--out`` is locked for the run (:class:`~medhdm.io.atomic.LockedFolder`) and the temporaries
  a killed run left are removed first;
- a case complete for this configuration (:mod:`.records`) is skipped; the others are done;
- cases complete for *another* configuration refuse the run before any work, unless
  ``overwrite`` (then they are redone);
- a case that fails is listed in ``failures.csv`` (case, image, error type, error) and the
  run goes on; :class:`CohortFailed` is raised at the end (after the summary is written);
- the summary (``explanations.csv``, or ``evaluate``'s report) lists the complete cases in
  manifest order, rebuilt from their records, so it is the same whatever the engine, the
  batch size or the order in which the cases finished.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..io.atomic import LockedFolder, atomic_write, remove_stale_temporaries
from ..study import case_folder
from .batching import chunks
from .engine import CaseOutcome, CohortOptions, Engine
from .progress import Progress
from .records import RECORD_NAME, case_state, read_record

__all__ = ["CohortFailed", "CohortResult", "run_cohort"]

FAILURE_COLUMNS = ("case", "image", "error_type", "error")


@dataclass
class CohortResult:
    """What a run did: per case id its record (complete cases), the cases done and skipped by this run,
    and its failures (in manifest order)."""

    records: dict[str, dict] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[CaseOutcome] = field(default_factory=list)


class CohortFailed(RuntimeError):
    """Some cases failed (listed in ``failures.csv``); the others are complete. ``bad_input``: every
    failure was bad input (a file that cannot be read, a case that does not fit the classifier)."""

    def __init__(self, failures: list[CaseOutcome], total: int, out: Path) -> None:
        self.failures, self.total, self.out = failures, total, out
        self.bad_input = all(f.bad_input for f in failures)
        first = failures[0]
        kind = "" if first.bad_input else f"{first.error_type}: "
        super().__init__(
            f"{len(failures)} of {total} cases failed (listed in {out / 'failures.csv'}), the others are complete; "
            f"case {first.index} ({first.case}, {first.image}) failed: {kind}{first.error}"
        )


def _check_ids(entries: Sequence[dict]) -> None:
    ids = [e["id"] for e in entries]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"two cases have the same id: {', '.join(twice)}")


def run_cohort(
    entries: Sequence[dict],
    *,
    engine: Engine,
    out: str | os.PathLike,
    summarise: Callable[[Path, list[dict], dict[str, dict]], None],
    options: CohortOptions | None = None,
    refuse: Callable[[Path, dict[str, str]], None] | None = None,
) -> CohortResult:
    """Run ``entries`` (``{"id", "image", ...}``) on ``engine`` into ``out`` (see the module docstring).

    Args:
        engine: the :class:`~medhdm.cohort.engine.Engine` that does the cases; its ``key`` (the
            configuration hash) decides which cases are complete.
        summarise: writes the run's summary from the complete cases' entries and records (inside the lock).
        options: the batch size, ``overwrite`` (redo the cases complete for another configuration,
            otherwise the run is refused), ``on_batch``, ``log`` and ``progress``
            (:class:`~medhdm.cohort.engine.CohortOptions`; its engine fields are not read here).
        refuse: an extra check before any work, given ``out`` and each case's state.

    Raises:
        FileExistsError: cases complete for another configuration, without ``overwrite``.
        CohortFailed: after the run, when some cases failed.
    """
    options = options if options is not None else CohortOptions()
    if not entries:
        raise ValueError("cases: nothing to run")
    _check_ids(entries)
    out = Path(out)
    # absolute paths: a Ray worker does not share the driver's working folder
    entries = [{**e, **{k: os.path.abspath(e[k]) for k in ("image", "lesion") if k in e}} for e in entries]
    result = CohortResult()
    with LockedFolder(out):
        remove_stale_temporaries(out)
        states = _case_states(out, entries, engine.key, options.overwrite)
        if refuse:
            refuse(out, states)
        todo = [e for e in entries if states[e["id"]] != "complete"]
        result.skipped = [e["id"] for e in entries if states[e["id"]] == "complete"]
        if options.log and result.skipped:
            options.log(f"{len(result.skipped)} of {len(entries)} cases are complete for this configuration; skipped")
        _run_cases(entries, todo, engine, Path(os.path.abspath(out)), options, result)
        result.failures.sort(key=lambda f: f.index)
        _write_failures(out, result.failures)
        result.records = _complete_records(out, entries, engine.key)
        complete = [e for e in entries if e["id"] in result.records]
        if complete:
            summarise(out, complete, result.records)
    if result.failures:
        raise CohortFailed(result.failures, len(entries), out)
    return result


def _run_cases(
    entries: list[dict], todo: list[dict], engine: Engine, where: Path, options: CohortOptions, result: CohortResult
) -> None:
    """Run ``todo`` (of ``entries``) on ``engine`` into ``where``, adding each outcome to ``result``;
    the engine is closed in the end, whatever happens (also when there is nothing to do)."""
    index = {e["id"]: k for k, e in enumerate(entries, start=1)}
    bar = Progress(len(entries), len(result.skipped)) if options.progress else None
    try:
        if todo:
            engine.start()
            for outcomes in engine.map(chunks(todo, options.batch_size), where):
                _add_outcomes(result, outcomes, index, len(entries), bar, options)
    finally:
        engine.close()
        if bar:
            bar.close()


def _add_outcomes(
    result: CohortResult,
    outcomes: list[CaseOutcome],
    index: dict[str, int],
    total: int,
    bar: Progress | None,
    options: CohortOptions,
) -> None:
    """Add a batch's ``outcomes`` to ``result`` (failures with their position ``index``), show them
    (the bar, or one line per case in ``options.log`` when the bar is not shown), then ``options.on_batch``."""
    for o in outcomes:
        if o.failed:
            result.failures.append(dataclasses.replace(o, index=index[o.case]))
        else:
            result.done.append(o.case)
    if bar:
        bar.update(len(outcomes), sum(o.failed for o in outcomes))
    if options.log and (bar is None or bar.bar.disable):  # not a terminal: one line per case
        finished = len(result.skipped) + len(result.done) + len(result.failures)
        for k, o in enumerate(outcomes, start=finished - len(outcomes) + 1):
            what = f"failed: {o.error}" if o.failed else f"{o.seconds:.1f} s"
            options.log(f"[{k}/{total}] {o.case}: {o.status}, {what}")
    if options.on_batch:
        options.on_batch(outcomes)


def _case_states(out: Path, entries: Sequence[dict], key: str, overwrite: bool) -> dict[str, str]:
    """Each case's state in ``out`` (:func:`case_state`), after removing its folder's stale temporaries.

    Raises:
        FileExistsError: cases complete for another configuration, without ``overwrite``.
    """
    states = {}
    for entry in entries:
        folder = case_folder(out, entry["id"])
        if folder.is_dir():
            remove_stale_temporaries(folder)
        states[entry["id"]] = case_state(folder, entry["image"], key)
    other = [i for i, s in states.items() if s == "other"]
    if other and not overwrite:
        raise FileExistsError(
            f"out: {out / other[0] / RECORD_NAME} was written with another configuration ({len(other)} of the "
            "cases were); pass overwrite=True to redo them, or choose another folder"
        )
    return states


def _complete_records(out: Path, entries: Sequence[dict], key: str) -> dict[str, dict]:
    """The records of the cases that are complete for configuration ``key``, by case id."""
    records = {}
    for entry in entries:
        folder = case_folder(out, entry["id"])
        record = read_record(folder)
        if record is not None and case_state(folder, entry["image"], key) == "complete":
            records[entry["id"]] = record
    return records


def _write_failures(out: Path, failures: list[CaseOutcome]) -> None:
    """``failures.csv`` of this run's failures, or no such file when none failed."""
    path = out / "failures.csv"
    if not failures:
        path.unlink(missing_ok=True)
        return

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(FAILURE_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(dataclasses.asdict(f) for f in failures)

    atomic_write(path, write)
