"""The explanation engine: makes maps, knows nothing of masks, subgroups or reports."""

from audit.cam.base import CAM, CAMOutput, find_target_layer, upsample
from audit.cam.methods import METHODS, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM
from audit.cam.targets import ClassIndex, PredictedClass, Target
from audit.cam.wrappers import FusedLayers, GuidedBackprop, GuidedGradCAM, NoiseAveraged

__all__ = [
    "CAM",
    "METHODS",
    "CAMOutput",
    "ClassIndex",
    "FusedLayers",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "NoiseAveraged",
    "PredictedClass",
    "ScoreCAM",
    "Target",
    "find_target_layer",
    "upsample",
]
