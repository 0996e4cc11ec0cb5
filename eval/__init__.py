"""The evaluation stage: allocators scored on held-out queries, with bootstrap intervals and a report.

eval/allocators.py holds the allocators (one registry, `ALLOCATORS`),
eval/metrics.py the frontier, interpolation and bootstrap arithmetic,
eval/report.py the JSON/Markdown/plot outputs and `EvalReport`, and
eval/stage.py the `eval_stage` entry point. Importing this package never
imports mlflow or matplotlib; the stage does, when it runs.
"""

from eval.allocators import ALLOCATORS, make_allocator
from eval.report import EvalReport
from eval.stage import eval_stage

__all__ = ["ALLOCATORS", "EvalReport", "eval_stage", "make_allocator"]
