"""ttc-allocator's light bottom layer: arms, query features, the allocation rule, the bundle.

Everything here runs with numpy plus lightgbm or onnxruntime; importing this
package must never import torch, transformers or mlflow, so that an exported
policy runs inside other systems without this repository's heavy stack.
"""

from policy.arms import Arm
from policy.errors import BundleError, TTCError, UsageError
from policy.records import ArmOutcome, Decision, EnergyMeasurement, Prediction, Sample

__all__ = [
    "Arm",
    "ArmOutcome",
    "BundleError",
    "Decision",
    "EnergyMeasurement",
    "Prediction",
    "Sample",
    "TTCError",
    "UsageError",
]
