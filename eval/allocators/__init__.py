"""Allocators under evaluation: each turns held-out queries into a curve of operating points.

An allocator assigns every held-out query an arm (or, for early stopping, a
number of samples) at each of its settings; one setting is one operating point,
scored on the *realised* outcomes of the held-out queries (the ArmOutcome rows
from `store.views.arm_outcomes`), never on predictions. They are looked up by
name in `ALLOCATORS`, which the CLI's choices come from:

- learned: the policy's predictions, `allocate` swept over prices λ and over
  target budgets; charged the joules of computing its features and predictions
  (measured with the estimate meter) and of the probe, if it uses one.
- fixed: every grid arm for every query, one point per arm.
- model_scaling: the bigger model's arms for every query (its n=1 greedy arm at
  the longest cap is the reference "just use the bigger model").
- random: at each learned point's mean joules, query-blind random arms with the
  same mean joules (the maximum-entropy arm distribution with that mean),
  averaged over seeds.
- difficulty_bins: queries binned by predicted difficulty (the policy's p of
  the cheapest arm, quantile bins fitted on training queries), the best arm
  per bin chosen on training queries at each λ (Snell et al.'s recipe).
- early_stopping: draw samples one at a time in their collected order at one
  (model, L, temperature) and stop when the first k agree or the majority of
  n_max is settled; simulated from the raw samples.
- adaptive_consistency, esc: the published stopping rules (Aggarwal et al.
  2023's Beta criterion; Li et al. 2024's unanimous windows), replayed the same
  way and charged the samples they drew (eval/allocators/peers.py).
- two_stage: one look (a sample of the cheapest one-sample arm), then the arm
  of best predicted accuracy per marginal joule given that sample's confidence
  signals; simulated exactly, stage 1 always charged and its sample reused
  (eval/allocators/two_stage.py).
- oracle: in hindsight, each query's cheapest correct arm (its cheapest arm if
  none is correct): the top point of the hindsight price sweep, whose points
  bound every one-arm-per-query assignment from above.
- per_task: the per-task table (train.task_table), built per fold from its
  training queries: per task the arm of best accuracy - λ x joules, swept over
  every price where a table changes; an unseen task gets the global arm
  (eval/allocators/per_task.py). The yardstick the learned policy must beat.
- soft_oracle: in hindsight on *expected* accuracy: per query the arm of best
  `correct_soft` - λ x joules, swept over λ and scored on the realised outcomes
  like the rest (eval/allocators/soft_oracle.py): the headroom above the table.

Every allocator chooses among the same grid: the policy's arms. One module per
family: base (containers, helpers), learned (learned,
difficulty_bins), grid (fixed, model_scaling, oracle), random_arms (random),
stopping (the sequential base, early_stopping), peers
(adaptive_consistency, esc), context (EvalContext, folds, the Allocator base class). Nothing here reads files or logs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from eval.allocators.base import (
    Curve,
    OperatingPoint,
    Outcomes,
    hull_slopes,
    lambda_grid,
    scaling_reference_arm,
)
from eval.allocators.context import Allocator, EvalContext, Fold, PolicyOverhead, Predictions
from eval.allocators.grid import FixedAllocator, ModelScalingAllocator, OracleAllocator
from eval.allocators.learned import DifficultyBinsAllocator, LearnedAllocator
from eval.allocators.peers import AdaptiveConsistencyAllocator, ESCAllocator, ac_samples, beta_confidence, esc_window
from eval.allocators.per_task import PerTaskAllocator
from eval.allocators.random_arms import RandomAllocator, max_entropy_mix
from eval.allocators.soft_oracle import SoftOracleAllocator
from eval.allocators.stopping import EarlyStoppingAllocator, stop_after
from eval.allocators.two_stage import TwoStageAllocator
from policy.errors import UsageError, unknown_name

__all__ = [
    "ALLOCATORS",
    "ac_samples",
    "beta_confidence",
    "esc_window",
    "Allocator",
    "Curve",
    "EvalContext",
    "Fold",
    "OperatingPoint",
    "Outcomes",
    "PolicyOverhead",
    "Predictions",
    "hull_slopes",
    "lambda_grid",
    "make_allocator",
    "max_entropy_mix",
    "run_allocators",
    "scaling_reference_arm",
    "stop_after",
]

#: Allocators by name; the CLI's choices and the report's curves come from here.
ALLOCATORS: dict[str, Callable[[], Allocator]] = {
    LearnedAllocator.name: LearnedAllocator,
    FixedAllocator.name: FixedAllocator,
    ModelScalingAllocator.name: ModelScalingAllocator,
    RandomAllocator.name: RandomAllocator,
    DifficultyBinsAllocator.name: DifficultyBinsAllocator,
    EarlyStoppingAllocator.name: EarlyStoppingAllocator,
    AdaptiveConsistencyAllocator.name: AdaptiveConsistencyAllocator,
    ESCAllocator.name: ESCAllocator,
    TwoStageAllocator.name: TwoStageAllocator,
    PerTaskAllocator.name: PerTaskAllocator,
    OracleAllocator.name: OracleAllocator,
    SoftOracleAllocator.name: SoftOracleAllocator,
}


def make_allocator(name: str) -> Allocator:
    if name not in ALLOCATORS:
        raise unknown_name("allocator", name, ALLOCATORS)
    return ALLOCATORS[name]()


def run_allocators(
    ctx: EvalContext, names: Sequence[str] | None = None, on_done: Callable[[str, int, int], None] | None = None
) -> tuple[dict[str, Curve], dict[str, str]]:
    """Curves of the named allocators (default: every one that can run), and why the others were skipped.

    A named allocator that cannot run in this context is a `UsageError`; with
    the default list it is skipped and its reason returned. `on_done(name, done, total)`
    hears of each allocator as it finishes (the progress line).
    """
    explicit = names is not None
    names = list(ALLOCATORS) if names is None else list(names)
    for nm in names:
        if nm not in ALLOCATORS:
            raise unknown_name("allocator", nm, ALLOCATORS)
    curves, skipped = {}, {}
    for i, nm in enumerate(names):
        why = make_allocator(nm).unavailable(ctx)
        if why is not None:
            if explicit:
                raise UsageError(f"allocator {nm!r} {why}; drop it from the list or supply what it needs")
            skipped[nm] = why
        else:
            curves[nm] = ctx.curve(make_allocator(nm))
        if on_done is not None:
            on_done(nm, i + 1, len(names))
    return curves, skipped
