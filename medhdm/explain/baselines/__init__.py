"""Baseline saliency methods in medhdm's interface: Grad-CAM, Grad-CAM++, occlusion,
Gradient x Input (SmoothGrad) and RISE."""

from .cam import GradCAM, GradCAMpp, find_target_layer
from .gradient import GradientInput
from .occlusion import Occlusion
from .rise import RISE

__all__ = ["GradCAM", "GradCAMpp", "find_target_layer", "GradientInput", "Occlusion", "RISE"]
