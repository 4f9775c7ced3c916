"""Models: loading any model from a specification, the shipped lesion classifiers and segmenters, and how
they are trained.

- :mod:`medhdm.models.loading`: :func:`load_model` (``default``, TorchScript, MONAI bundles, class paths).
- :mod:`medhdm.models.bundle`: :func:`load_bundle`, a MONAI bundle's network, class names and preprocessing.
- :mod:`medhdm.models.shipped`: the shipped 2D/3D DenseNets (:func:`load_default_classifier`), their
  recipes, and ``python -m medhdm.models`` to re-create them.
- :mod:`medhdm.models.training`: the small MONAI DenseNet and its training loop.
- :mod:`medhdm.models.segmentation`: the tiny MONAI UNet segmenter and its training loop (the cue task).
- :mod:`medhdm.models.identity`: the weights hash and a run's configuration fingerprint.
"""

from .bundle import EXPLAIN_CONFIG, Bundle, bundle_digest, bundle_preprocessing, load_bundle, write_explain_config
from .identity import configuration_hash, model_identity, run_configuration, weights_hash
from .loading import load_model
from .segmentation import lesion_segmenter, segmentation_scores, train_segmenter
from .shipped import (
    DEFAULT_2D,
    DEFAULT_3D,
    RECIPES,
    SEGMENTER_2D,
    SEGMENTER_3D,
    WEIGHTS_DIR,
    load_default_classifier,
    train_default_classifier,
)
from .training import accuracy_and_auc, lesion_classifier, train_classifier

__all__ = [
    "Bundle",
    "bundle_digest",
    "bundle_preprocessing",
    "load_bundle",
    "write_explain_config",
    "EXPLAIN_CONFIG",
    "DEFAULT_2D",
    "DEFAULT_3D",
    "RECIPES",
    "SEGMENTER_2D",
    "SEGMENTER_3D",
    "WEIGHTS_DIR",
    "accuracy_and_auc",
    "configuration_hash",
    "lesion_classifier",
    "lesion_segmenter",
    "load_default_classifier",
    "load_model",
    "model_identity",
    "run_configuration",
    "segmentation_scores",
    "train_classifier",
    "train_default_classifier",
    "train_segmenter",
    "weights_hash",
]
