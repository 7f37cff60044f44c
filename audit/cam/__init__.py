"""The explanation engine: makes maps, knows nothing of masks, subgroups or reports."""

from audit.cam.base import CAM, CAMOutput, find_target_layer, upsample
from audit.cam.methods import METHODS, GradCAM
from audit.cam.targets import ClassIndex, PredictedClass, Target

__all__ = [
    "CAM",
    "METHODS",
    "CAMOutput",
    "ClassIndex",
    "GradCAM",
    "PredictedClass",
    "Target",
    "find_target_layer",
    "upsample",
]
