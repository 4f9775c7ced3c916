"""``medhdm explain`` and ``medhdm evaluate`` as cohort runs: the engine, and each command's summary
rebuilt from the per-case records (``explanations.csv``; ``evaluate``'s report and tables)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..study import case_folder, write_explanations_csv
from .engine import CohortOptions, Engine
from .local import LocalEngine
from .run import CohortResult, run_cohort
from .tasks import EvaluateRecipe, ExplainRecipe

__all__ = ["evaluate_cohort", "explain_cohort", "make_engine"]


def make_engine(recipe: ExplainRecipe | EvaluateRecipe, options: CohortOptions | None = None, *, model=None) -> Engine:
    """The engine ``options.engine`` names (``local`` or ``ray``) for ``recipe``, or the one it holds.

    The local engine builds the runner (model, explainers) here, once; the Ray engine builds it
    here on the CPU for the configuration hash only (the weights hash does not depend on the device)
    and once in each actor. ``model``: the classifier already loaded from ``recipe.model``.
    """
    options = options if options is not None else CohortOptions()
    if not isinstance(options.engine, str):
        return options.engine
    if options.engine == "local":
        return LocalEngine(recipe.build(model=model))
    from .ray_engine import RayEngine, check_address, import_ray

    import_ray()  # clear errors before the model is loaded
    check_address(options.address)
    key = recipe.build(device="cpu", model=model).key  # the weights hash does not depend on the device
    return RayEngine(
        recipe,
        key,
        workers=options.workers,
        gpus_per_worker=options.gpus_per_worker,
        address=options.address,
        log=options.log,
    )


def _options(options: CohortOptions | None, settings: dict) -> CohortOptions:
    """``options`` (default: :class:`CohortOptions`'s defaults) with the fields named in ``settings`` replaced."""
    if options is None:
        options = CohortOptions()
    elif not isinstance(options, CohortOptions):
        raise TypeError(f"options: expected a CohortOptions, got {type(options).__name__}")
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(CohortOptions)})
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}: not fields of CohortOptions")
    return dataclasses.replace(options, **settings) if settings else options


def explain_cohort(
    entries: Sequence[dict],
    recipe: ExplainRecipe,
    out: str | os.PathLike,
    *,
    options: CohortOptions | None = None,
    model=None,
    **settings,
) -> CohortResult:
    """Explain ``entries`` (``{"id", "image", "class_idx"?}``) into ``out/<id>/``, with ``out/explanations.csv``.

    Args:
        options: how the run goes (:class:`~medhdm.cohort.engine.CohortOptions`: the engine, the batch
            size, ``overwrite``, ...); by default the local engine, one case per batch.
        model: the classifier already loaded from ``recipe.model`` (to skip loading it again).
        **settings: fields of :class:`~medhdm.cohort.engine.CohortOptions` replacing those of
            ``options``, e.g. ``engine="ray", workers=4, batch_size=8``.

    Raises:
        CohortFailed: after the run, when some cases failed (:func:`~medhdm.cohort.run.run_cohort`).
    """
    options = _options(options, settings)

    def summarise(out: Path, complete: list[dict], records: dict[str, dict]) -> None:
        write_explanations_csv(out / "explanations.csv", [records[e["id"]]["result"]["row"] for e in complete])

    engine = make_engine(recipe, options, model=model)
    return run_cohort(entries, engine=engine, out=out, summarise=summarise, options=options)


def evaluate_cohort(
    entries: Sequence[dict],
    recipe: EvaluateRecipe,
    out: str | os.PathLike,
    *,
    title: str = "medhdm evaluation",
    options: CohortOptions | None = None,
    model=None,
    **settings,
) -> tuple[CohortResult, list[dict]]:
    """Evaluate ``entries`` (manifest entries with lesions) per case into ``out/<id>/``, then the report
    (``report.html``, ``per_case.csv``, ``summary.csv/json``) titled ``title`` over the complete cases;
    returns the rows too. ``options``, ``model`` and ``**settings`` as for :func:`explain_cohort`."""
    from ..evaluation import add_case, case_figure, new_figures
    from ..metrics.curves import curve_fractions
    from ..report import write_report

    options = _options(options, settings)
    rows: list[dict] = []

    def refuse(out: Path, states: dict[str, str]) -> None:
        report = out / "report.html"
        if report.exists() and all(s == "missing" for s in states.values()) and not options.overwrite:
            raise FileExistsError(
                f"out: {report} exists; pass overwrite=True to replace the report, or choose another folder"
            )

    def summarise(out: Path, complete: list[dict], records: dict[str, dict]) -> None:
        names = [*recipe.methods, *(name for name, _ in recipe.maps)]
        figures = new_figures(names, curve_fractions(recipe.curve_steps))
        for entry in complete:
            record = records[entry["id"]]["result"]
            with np.load(case_folder(out, entry["id"]) / "maps.npz") as saved:
                maps = {name: saved[name] for name in names}
            add_case(rows, figures, record, case_figure(entry, maps, record.get("findings")))
        write_report(rows, figures, out, title=title)

    engine = make_engine(recipe, options, model=model)
    result = run_cohort(entries, engine=engine, out=out, summarise=summarise, options=options, refuse=refuse)
    return result, rows
