"""ttc-allocator's light bottom layer: arms, query features, the allocation rule, the bundle.

Everything here runs with numpy plus lightgbm or onnxruntime; importing this
package must never import torch, transformers or mlflow, so that an exported
policy runs inside other systems without this repository's heavy stack.
(lightgbm and onnxruntime are imported by the backend a bundle is loaded with;
policy/pyfunc_model.py and policy/mlflow_log.py import mlflow and are never
imported from here.)
"""

from policy.allocate import DecisionRule, allocate, allocate_budget, allocate_price, upper_hull
from policy.arms import Arm
from policy.bundle import Policy, load_bundle, write_bundle, zip_bundle
from policy.errors import BundleError, TTCError, UsageError
from policy.records import ArmOutcome, Decision, EnergyMeasurement, Prediction, Sample

__all__ = [
    "Arm",
    "ArmOutcome",
    "BundleError",
    "Decision",
    "DecisionRule",
    "EnergyMeasurement",
    "Policy",
    "Prediction",
    "Sample",
    "TTCError",
    "UsageError",
    "allocate",
    "allocate_budget",
    "allocate_price",
    "load_bundle",
    "upper_hull",
    "write_bundle",
    "zip_bundle",
]
