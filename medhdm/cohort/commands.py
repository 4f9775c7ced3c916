"""``medhdm explain`` and ``medhdm evaluate`` as cohort runs: the engine, and each command's summary
rebuilt from the per-case records (``explanations.csv``; ``evaluate``'s report and tables)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..study import case_folder, write_explanations_csv
from .local import LocalEngine
from .run import CohortResult, run_cohort
from .tasks import EvaluateRecipe, ExplainRecipe

__all__ = ["evaluate_cohort", "explain_cohort", "make_engine"]


def make_engine(
    recipe: ExplainRecipe | EvaluateRecipe,
    engine: str = "local",
    workers: int = 2,
    gpus_per_worker: float = 0.0,
    address: str | None = None,
    log: Callable[[str], None] | None = None,
    model=None,
):
    """The engine named ``engine`` (``local`` or ``ray``) for ``recipe``, and the configuration hash.

    The local engine builds the runner (model, explainers) here, once; the Ray engine builds it
    here on the CPU for the configuration only (the weights hash does not depend on the device)
    and once in each actor. ``model``: the classifier already loaded from ``recipe.model`` (local engine).
    """
    if engine == "local":
        runner = recipe.build(model=model)
        return LocalEngine(runner), runner.key
    if engine == "ray":
        from .ray_engine import RayEngine, check_address, import_ray

        import_ray()  # clear errors before the model is loaded
        check_address(address)
        key = recipe.build(device="cpu", model=model).key  # the weights hash does not depend on the device
        return RayEngine(recipe, key, workers, gpus_per_worker, address, log), key
    raise ValueError(f"--engine: expected local or ray, got {engine!r}")


def explain_cohort(
    entries: Sequence[dict],
    recipe: ExplainRecipe,
    out: str | os.PathLike,
    engine: str = "local",
    batch_size: int = 1,
    overwrite: bool = False,
    workers: int = 2,
    gpus_per_worker: float = 0.0,
    address: str | None = None,
    log: Callable[[str], None] | None = None,
    on_batch: Callable[[list[dict]], None] | None = None,
    progress: bool = True,
    engine_object=None,
    model=None,
) -> CohortResult:
    """Explain ``entries`` (``{"id", "image", "class_idx"?}``) into ``out/<id>/``, with ``out/explanations.csv``.

    ``engine_object``: an engine built by :func:`make_engine` (tests hold it to kill a worker);
    ``model``: the classifier already loaded from ``recipe.model`` (the local engine uses it).
    """
    if engine_object is None:
        engine_object, key = make_engine(recipe, engine, workers, gpus_per_worker, address, log, model)
    else:
        key = engine_object.key

    def summarise(out: Path, complete: list[dict], records: dict[str, dict]) -> None:
        write_explanations_csv(out / "explanations.csv", [records[e["id"]]["result"]["row"] for e in complete])

    return run_cohort(entries, key, engine_object, out, summarise, batch_size, overwrite, None, on_batch, log, progress)


def evaluate_cohort(
    entries: Sequence[dict],
    recipe: EvaluateRecipe,
    out: str | os.PathLike,
    title: str = "medhdm evaluation",
    engine: str = "local",
    batch_size: int = 1,
    overwrite: bool = False,
    workers: int = 2,
    gpus_per_worker: float = 0.0,
    address: str | None = None,
    log: Callable[[str], None] | None = None,
    on_batch: Callable[[list[dict]], None] | None = None,
    progress: bool = True,
    engine_object=None,
    model=None,
) -> tuple[CohortResult, list[dict]]:
    """Evaluate ``entries`` (manifest entries with lesions) per case into ``out/<id>/``, then the report
    (``report.html``, ``per_case.csv``, ``summary.csv/json``) over the complete cases; returns the rows too."""
    from ..evaluation import add_case, case_figure, new_figures
    from ..metrics.curves import curve_fractions
    from ..report import write_report

    if engine_object is None:
        engine_object, key = make_engine(recipe, engine, workers, gpus_per_worker, address, log, model)
    else:
        key = engine_object.key
    rows: list[dict] = []

    def refuse(out: Path, states: dict[str, str]) -> None:
        report = out / "report.html"
        if report.exists() and all(s == "missing" for s in states.values()) and not overwrite:
            raise FileExistsError(
                f"--out: {report} exists; pass --overwrite to replace the report, or choose another folder"
            )

    def summarise(out: Path, complete: list[dict], records: dict[str, dict]) -> None:
        names = [*recipe.methods, *(name for name, _ in recipe.maps)]
        figures = new_figures(names, curve_fractions(recipe.curve_steps))
        for entry in complete:
            record = records[entry["id"]]["result"]
            with np.load(case_folder(out, entry["id"]) / "maps.npz") as saved:
                maps = {name: saved[name] for name in names}
            add_case(rows, figures, record, case_figure(entry, maps))
        write_report(rows, figures, out, title=title)

    result = run_cohort(
        entries, key, engine_object, out, summarise, batch_size, overwrite, refuse, on_batch, log, progress
    )
    return result, rows
