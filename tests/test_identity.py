"""The model identity and run fingerprint: equal for equal configurations, different when a map would change."""

import json

import torch

from medhdm.explain.registry import METHODS, make_explainer
from medhdm.models import configuration_hash, load_default_classifier, model_identity, run_configuration, weights_hash


def test_weights_hash_is_stable_across_loads_and_changes_with_any_weight():
    model = load_default_classifier()
    first = weights_hash(model)
    assert len(first) == 64
    assert weights_hash(load_default_classifier()) == first
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6
    assert weights_hash(model) != first


def test_every_method_has_json_settings_and_the_fingerprint_follows_them():
    model = load_default_classifier()
    hashes = {}
    for name in METHODS:
        config = run_configuration(model, make_explainer(name, model))
        json.dumps(config)  # plain JSON, no repr fallbacks needed
        hashes[name] = configuration_hash(config)
    assert configuration_hash(run_configuration(model, make_explainer("hdm", model))) == hashes["hdm"]
    assert len({hashes[n] for n in ("hdm", "mdm", "neuromask", "gradcam", "occlusion", "rise")}) == 6
    fewer_steps = run_configuration(model, make_explainer("hdm", model, steps=3))
    assert fewer_steps["settings"]["benchmark_objective"]["steps"] == 3
    assert configuration_hash(fewer_steps) != hashes["hdm"]
    other_seed = run_configuration(model, make_explainer("rise", model, seed=1))
    assert configuration_hash(other_seed) != hashes["rise"]
    extra = run_configuration(model, make_explainer("hdm", model), extra={"slices": "top-1"})
    assert configuration_hash(extra) != hashes["hdm"]


def test_model_identity_names_the_class():
    model = load_default_classifier()
    identity = model_identity(model, "lesion-2d")
    assert identity["name"] == "lesion-2d"
    assert identity["class"].endswith("DenseNet")
