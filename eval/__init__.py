"""The evaluation stage: allocators scored on held-out (or cross-fitted) queries, with bootstrap intervals and a report.

eval/allocators/ holds the allocators (one registry, `ALLOCATORS`; one module
per family), eval/metrics.py the exact scoring, convex frontiers,
interpolation and bootstrap arithmetic, eval/headline.py the `Headline`
dataclass and its paired intervals, eval/findings.py the paper's findings,
eval/crossfit.py the folds and the per-fold policies, eval/inputs.py what
eval reads and checks, eval/report.py the report dict and `EvalReport`,
eval/outputs.py and eval/plots.py the files, and eval/stage.py the
`eval_stage` entry point. Importing this package never imports mlflow or
matplotlib; the stage does, when it runs.
"""

from eval.allocators import ALLOCATORS, make_allocator
from eval.report import EvalReport
from eval.stage import eval_stage

__all__ = ["ALLOCATORS", "EvalReport", "eval_stage", "make_allocator"]
