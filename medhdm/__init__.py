"""medhdm: Hierarchical Dynamic Masks and baseline saliency methods for MONAI classifiers."""

from .baselines import RISE, GradCAM, GradCAMpp, GradientInput, Occlusion
from .explain import HDM, MDM, Explainer, Explanation, MaskObjective, NeuroMask, StageRecord

__version__ = "0.1.0"

__all__ = ["HDM", "MDM", "NeuroMask", "Explainer", "Explanation", "MaskObjective", "StageRecord",
    "GradCAM", "GradCAMpp", "GradientInput", "Occlusion", "RISE", "__version__"]
