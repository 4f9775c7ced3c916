"""What a worker does with a batch of cases: the recipes (picklable, so a Ray actor can build
them) and the runners they build, which load the model and the explainer(s) once and then
explain (``medhdm explain``) or evaluate (``medhdm evaluate``) batch after batch.

A runner's :attr:`~CaseRunner.configuration` is :func:`medhdm.models.identity.run_configuration`
plus what else changes the outputs; its hash decides which cases are complete (:mod:`.records`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io.atomic import atomic_write, remove_stale_temporaries
from ..io.errors import BAD_INPUT
from ..models.identity import configuration_hash, run_configuration
from ..pipeline import InputSpec, SliceSelection, input_record
from ..study import StudyCase, StudyReport, case_folder, explain_study_batch
from .batching import run_split
from .engine import CaseOutcome
from .records import case_state, remove_record, write_record

if TYPE_CHECKING:
    from ..export import Deidentification

__all__ = ["BAD_INPUT", "CaseRunner", "EvaluateRecipe", "ExplainRecipe", "ModelRecipe", "process_batch"]


@dataclass(frozen=True)
class ModelRecipe:
    """How to load the classifier (:func:`medhdm.models.load_model`'s arguments)."""

    model: str = "default"
    weights: str | None = None
    model_args: dict = field(default_factory=dict)
    device: str = "cpu"

    def load(self, device: str | None = None):
        from ..models import load_model

        return load_model(self.model, weights=self.weights, model_args=self.model_args, device=device or self.device)


class CaseRunner:
    """A worker's model and explainer(s), loaded once; :meth:`run_cases` writes each case's outputs and record.

    ``model``: the classifier already loaded from ``recipe.model`` (otherwise loaded here, on ``device``).
    """

    configuration: dict
    key: str

    def __init__(self, recipe: ExplainRecipe | EvaluateRecipe, device: str | None = None, model=None) -> None:
        self.recipe = recipe
        self.model = model if model is not None else recipe.model.load(device)

    def run_cases(self, entries: list[dict], out: Path) -> list[dict]:  # pragma: no cover (interface)
        raise NotImplementedError

    def _record(self, entry: dict, files: list[str], seconds: float, result: dict) -> dict:
        return {
            "case": entry["id"],
            "image": str(entry["image"]),
            "configuration_hash": self.key,
            "configuration": self.configuration,
            "files": files,
            "seconds": round(seconds, 3),
            "result": result,
        }


@dataclass(frozen=True)
class ExplainRecipe:
    """``medhdm explain``: one method over the cases (exports optional); the fields after ``method`` are keywords."""

    model: ModelRecipe
    spec: InputSpec
    method: str = "hdm"
    _: KW_ONLY
    steps: int | None = None
    method_args: dict = field(default_factory=dict)
    export: tuple[str, ...] = ()
    slices: SliceSelection | None = None
    deidentify: Deidentification | None = None  # de-identify the exports (the secret stays out of the records)
    region: str | None = None  # a segmenter's target: "predicted", "component:k" or a mask file (NIfTI)
    seg_threshold: float = 0.5  # the thresholded map's SEG holds the map >= this (recorded when "seg" is exported)

    def build(self, device: str | None = None, model=None) -> ExplainRunner:
        """The runner (``model``: the classifier already loaded by this recipe, to skip loading it again)."""
        return ExplainRunner(self, device, model)


class ExplainRunner(CaseRunner):
    """Explains cases with :func:`medhdm.study.explain_study_batch` (the one explain path)."""

    def __init__(self, recipe: ExplainRecipe, device: str | None = None, model=None) -> None:
        from ..explain.registry import make_explainer

        super().__init__(recipe, device, model)
        self.explainer = make_explainer(recipe.method, self.model, steps=recipe.steps, **recipe.method_args)
        extra = {"task": "explain", "input": input_record(recipe.spec, recipe.slices), "export": list(recipe.export)}
        if recipe.deidentify is not None:
            extra["deidentify"] = recipe.deidentify.record()
        if recipe.region is not None:
            extra["region"] = _region_record(recipe.region)
        if "seg" in recipe.export:
            extra["seg_threshold"] = float(recipe.seg_threshold)
        self.configuration = run_configuration(self.model, self.explainer, recipe.model.model, extra)
        self.key = configuration_hash(self.configuration)

    def run_cases(self, entries: list[dict], out: Path) -> list[dict]:
        r = self.recipe
        mask = None if r.region is None or _named_region(r.region) else Path(r.region)
        cases = [StudyCase(Path(e["image"]), e["id"], e.get("class_idx"), mask) for e in entries]
        start = time.perf_counter()
        rows = explain_study_batch(
            cases,
            self.explainer,
            r.spec,
            out,
            export_formats=r.export,
            method=r.method,
            overwrite=True,
            slices=r.slices,
            deidentify=r.deidentify,
            report=StudyReport(config=self.configuration),
            region=r.region if mask is None else None,
            seg_threshold=r.seg_threshold,
        )
        seconds = (time.perf_counter() - start) / len(entries)
        records = []
        for entry, row in zip(entries, rows):
            row.pop("scores", None)  # the SR's scores against annotations: explain has none
            folder = case_folder(out, entry["id"])
            files = [Path(row[k]).name for k in ("map", "export", "slice_scores") if row[k]]
            region = folder / f"{entry['id']}_region.nii.gz"
            files += [region.name] if region.is_file() else []
            records.append(self._record(entry, files, seconds, {"row": row}))
            write_record(folder, records[-1])
        return records


def _named_region(region: str) -> bool:
    """Whether ``region`` names a target on the model's mask (``"predicted"``, ``"component:k"``), not a file."""
    return region == "predicted" or region.startswith("component:")


def _region_record(region: str) -> dict:
    """A target region for the run configuration: its text, and a mask file's SHA-256 (its content decides the maps)."""
    if _named_region(region):
        return {"region": region}
    return {"mask": Path(region).name, "sha256": hashlib.sha256(Path(region).read_bytes()).hexdigest()}


@dataclass(frozen=True)
class EvaluateRecipe:
    """``medhdm evaluate``: several methods (and maps made elsewhere) scored per case; the fields after
    ``methods`` are keywords."""

    model: ModelRecipe
    spec: InputSpec
    methods: tuple[str, ...] = ("hdm", "gxi", "gradcam", "occlusion")
    _: KW_ONLY
    steps: int | None = None
    maps: tuple[tuple[str, str], ...] = ()
    faithfulness: bool = True
    curve_steps: int | None = None  # None: log-spaced deletion/insertion curves; n: n equal shares
    slices: SliceSelection | None = None

    def build(self, device: str | None = None, model=None) -> EvaluateRunner:
        """The runner (``model``: the classifier already loaded by this recipe, to skip loading it again)."""
        return EvaluateRunner(self, device, model)


class EvaluateRunner(CaseRunner):
    """Evaluates cases with :func:`medhdm.evaluation.evaluate_cases`; each case keeps its rows, curves, maps and
    findings (their records, without the regions)."""

    def __init__(self, recipe: EvaluateRecipe, device: str | None = None, model=None) -> None:
        from ..explain.registry import is_mask_method, make_explainer

        super().__init__(recipe, device, model)
        self.methods = {
            name: make_explainer(name, self.model, steps=recipe.steps if is_mask_method(name) else None)
            for name in recipe.methods
        }
        first = next(iter(self.methods.values()), None)
        extra = {
            "task": "evaluate",
            "input": input_record(recipe.spec, recipe.slices),
            "methods": {n: {"method": e.name, "settings": e.settings()} for n, e in self.methods.items()},
            "maps": {name: str(Path(folder).resolve()) for name, folder in recipe.maps},
            "faithfulness": recipe.faithfulness,
            "curve_steps": "log" if recipe.curve_steps is None else recipe.curve_steps,
        }
        if first is None:
            from .. import __version__
            from ..models.identity import model_identity

            self.configuration = {"medhdm_version": __version__, "model": model_identity(self.model), "extra": extra}
        else:
            self.configuration = run_configuration(self.model, first, recipe.model.model, extra)
        self.key = configuration_hash(self.configuration)

    def run_cases(self, entries: list[dict], out: Path) -> list[dict]:
        from ..evaluation import evaluate_cases

        r = self.recipe
        start = time.perf_counter()
        cases = evaluate_cases(
            entries,
            self.methods,
            r.spec,
            faithfulness=r.faithfulness,
            curve_steps=r.curve_steps,
            slices=r.slices,
            maps=dict(r.maps),
            model=self.model,
        )
        seconds = (time.perf_counter() - start) / len(entries)
        records = []
        for entry, case in zip(entries, cases):
            folder = case_folder(out, entry["id"])
            folder.mkdir(exist_ok=True)

            def write_maps(tmp: str, maps=case["maps"]) -> None:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, **{name: np.asarray(m, dtype=np.float32) for name, m in maps.items()})

            atomic_write(folder / "maps.npz", write_maps)
            curves = {n: {m: np.asarray(c).tolist() for m, c in by.items()} for n, by in case["curves"].items()}
            findings = {n: [f.record() for f in listed] for n, listed in case.get("findings", {}).items()}
            result = {"rows": case["rows"], "curves": curves, "findings": findings}
            records.append(self._record(entry, ["maps.npz"], seconds, result))
            write_record(folder, records[-1])
        return records


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def process_batch(runner: CaseRunner, entries: list[dict], out: str | Path) -> list[CaseOutcome]:
    """Run a batch on a worker: skip the cases already complete, redo the others (failing batches split).

    Returns one :class:`~medhdm.cohort.engine.CaseOutcome` per case: done, skipped or failed (with its error).
    """
    out = Path(out)
    outcomes, todo = [], []
    for entry in entries:
        folder = case_folder(out, entry["id"])
        if case_state(folder, entry["image"], runner.key) == "complete":  # e.g. done by a worker that died
            outcomes.append(CaseOutcome(case=entry["id"], image=str(entry["image"]), status="skipped"))
            continue
        if folder.is_dir():
            remove_record(folder)  # redone: incomplete until its new record is written
            remove_stale_temporaries(folder)
        todo.append(entry)
    for entry, record, err in run_split(lambda batch: runner.run_cases(batch, out), todo):
        if err is None:
            outcomes.append(
                CaseOutcome(case=entry["id"], image=str(entry["image"]), status="done", seconds=record["seconds"])
            )
        else:
            outcomes.append(
                CaseOutcome(
                    case=entry["id"],
                    image=str(entry["image"]),
                    status="failed",
                    error=_one_line(err),
                    error_type=type(err).__name__,
                    bad_input=isinstance(err, BAD_INPUT),
                )
            )
    return outcomes
