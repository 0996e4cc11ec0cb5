"""ttc-allocator's light bottom layer: arms, query features, the allocation rule, the bundle reader.

Importing this package, loading a bundle and allocating need numpy and the
standard library only: the default backend evaluates the bundle's plain-data
trees with numpy (policy/trees.py). The optional "lightgbm" and "onnx"
backends import their library when a bundle is loaded with them. This package
must never import torch, transformers or mlflow; writing a bundle (LightGBM,
ONNX) lives in train/export.py and the MLflow pyfunc in serve/.
"""

from policy.allocate import DecisionRule, allocate, allocate_budget, allocate_price
from policy.arms import Arm
from policy.bundle import Policy, load_bundle
from policy.errors import BundleError, TTCError, UsageError
from policy.hulls import upper_hull
from policy.records import ArmOutcome, Decision, EnergyMeasurement, Sample

__all__ = [
    "Arm",
    "ArmOutcome",
    "BundleError",
    "Decision",
    "DecisionRule",
    "EnergyMeasurement",
    "Policy",
    "Sample",
    "TTCError",
    "UsageError",
    "allocate",
    "allocate_budget",
    "allocate_price",
    "load_bundle",
    "upper_hull",
]
