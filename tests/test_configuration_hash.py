"""One input record behind every configuration hash: each field of the classifier's input and of the
slice selection changes the hash of the cohort runs (``medhdm explain``/``evaluate`` records) and of
the archive runs (``pacs``: the derived UIDs), so a changed input is never taken for a finished result."""

from __future__ import annotations

import dataclasses

import pytest

from medhdm.cohort.tasks import EvaluateRecipe, ExplainRecipe, ModelRecipe
from medhdm.explain.registry import make_explainer
from medhdm.models import load_default_classifier
from medhdm.models.identity import configuration_hash
from medhdm.pacs import PacsOptions, pacs_configuration
from medhdm.pipeline import InputSpec, SliceSelection

BASE_SPEC = InputSpec((96, 96))
SPEC_VARIANTS = {
    "spatial_size": {"spatial_size": (64, 64)},
    "layout": {"layout": "monai"},
    "axcodes": {"axcodes": "LPS"},
    "percentiles": {"percentiles": (0.5, 99.0)},
    "intensity_range": {"intensity_range": (-1000.0, 0.0)},
    # a bundle's preprocessing stands in its digest (its folder is not recorded: the same files elsewhere match)
    "bundle": {"bundle": "bundle", "bundle_sha256": "0" * 64},
    "bundle_sha256": ({"bundle": "bundle", "bundle_sha256": "0" * 64}, {"bundle": "bundle", "bundle_sha256": "1" * 64}),
}
BASE_SLICES = SliceSelection("top", k=2)
SLICE_VARIANTS = {
    "mode": SliceSelection("all"),
    "k": SliceSelection("top", k=3),
    "indices": (SliceSelection("list", indices=(1, 2)), SliceSelection("list", indices=(1, 3))),
    "reduce": SliceSelection("top", k=2, reduce="mean"),
}


@pytest.fixture(scope="module")
def model():
    return load_default_classifier()


def test_every_field_has_a_variant():
    assert set(SPEC_VARIANTS) == {f.name for f in dataclasses.fields(InputSpec)}
    assert set(SLICE_VARIANTS) == {f.name for f in dataclasses.fields(SliceSelection)}


def _hashes(model, spec: InputSpec, slices: SliceSelection | None) -> dict[str, str]:
    recipe = ModelRecipe("default")
    explain = ExplainRecipe(recipe, spec, "gradientinput", slices=slices).build(model=model)
    evaluate = EvaluateRecipe(recipe, spec, ("gradientinput",), slices=slices).build(model=model)
    pacs = pacs_configuration(make_explainer("gradientinput", model), spec, PacsOptions("default", slices=slices))
    return {"explain": explain.key, "evaluate": evaluate.key, "pacs": configuration_hash(pacs)}


def _pairs():
    for field, change in SPEC_VARIANTS.items():
        first, second = change if isinstance(change, tuple) else ({}, change)
        specs = [dataclasses.replace(BASE_SPEC, **c) for c in (first, second)]
        yield f"spec.{field}", (specs[0], BASE_SLICES), (specs[1], BASE_SLICES)
    for field, variant in SLICE_VARIANTS.items():
        first, second = variant if isinstance(variant, tuple) else (BASE_SLICES, variant)
        yield f"slices.{field}", (BASE_SPEC, first), (BASE_SPEC, second)
    yield "slices.none", (BASE_SPEC, None), (BASE_SPEC, SliceSelection("all"))


@pytest.mark.parametrize(("name", "first", "second"), list(_pairs()), ids=[p[0] for p in _pairs()])
def test_each_input_field_changes_the_hash_of_every_path(model, name, first, second):
    before, after = _hashes(model, *first), _hashes(model, *second)
    changed = [path for path in before if before[path] != after[path]]
    assert changed == ["explain", "evaluate", "pacs"], (name, changed)


def test_the_same_input_gives_the_same_hash(model):
    assert _hashes(model, BASE_SPEC, BASE_SLICES) == _hashes(model, InputSpec((96, 96)), SliceSelection.parse("top:2"))
