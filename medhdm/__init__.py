"""medhdm: Hierarchical Dynamic Masks and baseline saliency methods for MONAI classifiers.

The package follows the flow of a study, each layer importing only the ones below it
(``tests/test_layers.py`` checks it): ``io`` (reading, manifests, annotations, file
primitives) -> ``data`` (synthetic studies) and ``explain`` (the methods) -> ``metrics``
-> ``models`` -> ``transforms`` and ``pipeline`` (a study onto the classifier's grid and
back) -> ``evaluation`` -> ``report`` and ``export`` -> ``study`` (one study end to end)
-> ``cli`` and ``demo``.
"""

from .explain import (
    HDM,
    MDM,
    RISE,
    Explainer,
    Explanation,
    Finding,
    GradCAM,
    GradCAMpp,
    GradientInput,
    MaskExplainer,
    MaskObjective,
    NeuroMask,
    Occlusion,
    StageRecord,
)

__version__ = "0.1.0"

__all__ = [
    "HDM",
    "MDM",
    "NeuroMask",
    "Explainer",
    "Explanation",
    "Finding",
    "MaskExplainer",
    "MaskObjective",
    "StageRecord",
    "GradCAM",
    "GradCAMpp",
    "GradientInput",
    "Occlusion",
    "RISE",
    "__version__",
]
