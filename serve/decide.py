"""What the proxy does between a request and the upstream: read options, pick an arm, vote.

- `parse_options`: the request's `ttc` body field and `x-ttc` header (the same
  JSON object; the body wins per key): `task`, `lam` (a price in accuracy per
  joule for this request), `mode` ("policy" or "passthrough"), `answer` (how
  to extract answers: "number", "name" or "text"), `arm` (run this arm id of
  the bundle instead of the policy's pick: A/B tests and baselines).
- `resolve_price`, `resolve_template`: `ttc serve`'s price (`--lam`, or
  `--max-accuracy-loss` on the bundle's frontier) and prompt template.
- `Decider.choose`: the query's features, the bundle's predictions over the
  arms whose model has an upstream (only the requested model's arms when the
  request's `model` names one of them), and the price rule at λ. A client's own
  `max_tokens` is an upper bound and its `n` (the choices it wants back) a
  lower bound on the arm's samples: arms outside them are not considered;
  when no arm fits, the policy's pick is clipped to them and marked `clipped`
  (its predicted joules then describe the unclipped arm).
- `Decider.first_look` / `after_look`: look-then-decide (serve/plan.py runs
  it): the bundle's first arm, then `Policy.decide_after_look` on the first
  sample's signals; the predicted joules are the first sample's plus the
  decision's marginal joules.
- `vote_texts`: the grader's extraction on each sample and the arm view's
  majority vote (store/views.py), so serving votes exactly as training scored.

Never touches the network. Bad input raises `UsageError` (the proxy answers 400).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from policy import jsonsafe
from policy.allocate import allocate_price
from policy.answers import extract_answer, extract_name, extract_text
from policy.arms import Arm
from policy.bundle import Policy
from policy.errors import UsageError, unknown_name
from policy.hulls import upper_hull
from policy.prompts import TEMPLATES
from policy.two_stage import StageTwoDecision
from store.views import vote

POLICY = "policy"
PASSTHROUGH = "passthrough"
MODES = (POLICY, PASSTHROUGH)
EXTRACTORS: dict[str, Callable[[str], tuple[str | None, str]]] = {
    "number": extract_answer,
    "name": extract_name,
    "text": extract_text,
}
_OPTION_KEYS = ("task", "lam", "mode", "answer", "arm")


@dataclass(frozen=True)
class TTCOptions:
    mode: str = POLICY
    task: str | None = None
    lam: float | None = None
    answer: str | None = None
    arm: str | None = None  # run this arm id, not the policy's pick (A/B tests, baselines); checked by the Decider


def parse_options(body_value: Any, header_value: str | None) -> TTCOptions:
    """Merge the `x-ttc` header (JSON) and the body's `ttc` object into checked options."""
    merged: dict[str, Any] = {}
    if header_value:
        h = jsonsafe.loads(header_value, 'the x-ttc header (a JSON object like {"mode": "passthrough"})')
        if not isinstance(h, dict):
            raise UsageError("the x-ttc header must be a JSON object")
        merged.update(h)
    if body_value is not None:
        if not isinstance(body_value, dict):
            raise UsageError('the "ttc" field must be an object like {"task": "gsm8k", "lam": 0.01}')
        merged.update(body_value)
    extra = sorted(set(merged) - set(_OPTION_KEYS))
    if extra:
        raise UsageError(f"unknown ttc options {extra}, known: {', '.join(_OPTION_KEYS)}")
    mode = merged.get("mode", POLICY)
    if mode not in MODES:
        raise unknown_name("ttc mode", str(mode), MODES)
    task = merged.get("task")
    if task is not None and not isinstance(task, str):
        raise UsageError("ttc task must be a string (a task name such as gsm8k)")
    lam = merged.get("lam")
    if lam is not None:
        if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
            raise UsageError(f"ttc lam (accuracy per joule) must be a finite number >= 0, got {lam!r}")
        lam = float(lam)
    answer = merged.get("answer")
    if answer is not None and answer not in EXTRACTORS:
        raise unknown_name("ttc answer extraction", str(answer), EXTRACTORS)
    arm = merged.get("arm")
    if arm is not None and not isinstance(arm, str):
        raise UsageError("ttc arm must be an arm id string like 'smollm2-135m/n4/L64/t1'")
    return TTCOptions(mode, task, lam, answer, arm)


def answer_kind(options: TTCOptions) -> str:
    """How to extract answers: the option, else the task's own answer type, else numbers."""
    if options.answer:
        return options.answer
    if options.task:
        from collect.tasks import RG_SPECS  # lazy: the task registry is only needed for a named task

        spec = RG_SPECS.get(options.task)
        if spec is not None:
            return spec.answer
    return "number"


def resolve_price(
    policy: Policy, lam: float | None, budget_j: float | None, max_accuracy_loss: float | None
) -> float | None:
    """The fixed price `ttc serve` decides at: `lam`, or the one meeting `max_accuracy_loss` on the
    bundle's training frontier (policy/frontier.py); None for budget mode or the bundle's own rule."""
    given = [k for k, v in (("--lam", lam), ("--budget-j", budget_j), ("--max-accuracy-loss", max_accuracy_loss))
             if v is not None]  # fmt: skip
    if len(given) > 1:
        raise UsageError(f"give one of --lam, --budget-j or --max-accuracy-loss, not {' and '.join(given)}")
    if lam is not None:
        if isinstance(lam, bool) or not math.isfinite(lam) or lam < 0:
            raise UsageError(f"--lam (accuracy per joule) must be a finite number >= 0, got {lam}")
        return float(lam)
    if max_accuracy_loss is not None:
        if policy.frontier is None:
            raise UsageError(
                "--max-accuracy-loss needs the bundle's price frontier (frontier.json), which this bundle lacks; "
                "re-export it with this version of ttc-allocator, or give --lam"
            )
        return policy.frontier.lam_for_loss(max_accuracy_loss)
    return None


def resolve_template(policy: Policy, template: str | None) -> str:
    """The prompt template to serve with: the one asked for, else "trained" when the bundle records prompts."""
    if template is None:
        return "trained" if policy.prompts is not None else "client"
    if template not in TEMPLATES:
        raise unknown_name("--prompt-template", template, TEMPLATES)
    if template == "trained" and policy.prompts is None:
        raise UsageError(
            "--prompt-template trained needs the bundle's prompts.json, which this bundle lacks; re-export it with "
            "this version of ttc-allocator, or serve with --prompt-template client"
        )
    return template


@dataclass(frozen=True)
class Choice:
    """The arm to run for one request and why: the policy's arm, the settings sent, the prediction."""

    arm: Arm  # the settings sent upstream (== the decided arm unless clipped)
    decided_arm_id: str
    p_success: float
    predicted_j: float
    lam: float
    rule: str
    clipped: bool
    slopes: list[float] = field(default_factory=list)


class Decider:
    """The bundle's rule over the arms whose model has an upstream."""

    def __init__(self, policy: Policy, served_models: Sequence[str]) -> None:
        if policy.needs_probe:
            raise UsageError(
                f"bundle feature set {policy.feature_set.name!r} needs probe values from the model itself; "
                "serve a bundle trained on the 'text' feature set"
            )
        self.policy = policy
        self.cols = [i for i, a in enumerate(policy.arms) if a.model in set(served_models)]
        if not self.cols:
            raise UsageError(f"no --upstream serves a model of the bundle; its models are {', '.join(policy.models)}")

    def choose(
        self,
        question: str,
        task: str | None,
        lam: float,
        n_min: int | None,
        tokens_max: int | None,
        model: str | None = None,
        arm_id: str | None = None,
    ) -> Choice:
        p, e = self.policy.predict([question], [task])
        arms = self.policy.arms
        if arm_id is not None:
            return self._forced(arm_id, p[0], e[0], lam, n_min, tokens_max)
        served = [i for i in self.cols if model is None or arms[i].model == model] or self.cols
        fits = [i for i in served if _fits(arms[i], n_min, tokens_max)]
        cols = fits or served
        ids = [self.policy.arm_ids[i] for i in cols]
        p_row, e_row = p[:, cols], e[:, cols]
        d = allocate_price(p_row, e_row, ids, ["request"], lam, self.policy.rule.p_floor)[0]
        arm = Arm.parse(d.arm_id)
        if not fits:
            n = max(arm.n, n_min or arm.n)
            arm = Arm(arm.model, n, min(arm.max_new_tokens, tokens_max or arm.max_new_tokens), arm.temperature)
        er, pr = e_row[0].tolist(), p_row[0].tolist()
        hull = upper_hull(er, pr)
        slopes = [(pr[b] - pr[a]) / (er[b] - er[a]) for a, b in zip(hull, hull[1:], strict=False)]
        return Choice(arm, d.arm_id, d.p_success, d.energy_j, lam, d.rule, not fits, slopes)

    def _forced(self, arm_id: str, p: Any, e: Any, lam: float, n_min: int | None, tokens_max: int | None) -> Choice:
        ids = [self.policy.arm_ids[i] for i in self.cols]
        if arm_id not in ids:
            raise unknown_name("ttc arm (an arm of the bundle whose model has an --upstream)", arm_id, ids)
        j = self.policy.arm_ids.index(arm_id)
        return _clip(Arm.parse(arm_id), float(p[j]), float(e[j]), lam, "forced", n_min, tokens_max)

    def can_look(self, task: str | None = None) -> bool:
        """The bundle has a stage-2 rule and the first arm of `task` (`Policy.first_arm_for`) has its model served."""
        first = self.policy.first_arm_for(task)
        return first is not None and self.can_look_arm(first)

    def can_look_arm(self, arm_id: str) -> bool:
        """Arm `arm_id`'s model is served."""
        return self.policy.arm_ids.index(arm_id) in self.cols

    def first_look(self, question: str, task: str | None, lam: float) -> Choice:
        """Stage 1 of look-then-decide: the task's first arm, its predictions, and the query's hull slopes."""
        p, e = self.policy.predict([question], [task])
        first = self.policy.first_arm_for(task)
        if first is None:
            raise UsageError("this bundle carries no stage-2 rule")
        j = self.policy.arm_ids.index(first)
        pr, er = p[0, self.cols].tolist(), e[0, self.cols].tolist()
        hull = upper_hull(er, pr)
        slopes = [(pr[b] - pr[a]) / (er[b] - er[a]) for a, b in zip(hull, hull[1:], strict=False)]
        return Choice(Arm.parse(first), first, float(p[0, j]), float(e[0, j]), lam, "look", False, slopes)

    def after_look(
        self,
        question: str,
        task: str | None,
        signals: Any,
        lam: float,
        first: Choice,
        n_min: int | None,
        tokens_max: int | None,
        first_text: str | None = None,
    ) -> tuple[Choice, StageTwoDecision]:
        """Stage 2: stop, continue or switch, by the bundle's rule on the first sample's signals.

        The predicted joules are the first sample's plus the decision's marginal joules. An arm whose
        model has no upstream is not run: the first sample stands (the decision says so).
        """
        d = self.policy.decide_after_look([question], [signals], [task], lam=lam, first_text=[first_text])[0]
        j = self.policy.arm_ids.index(d.arm_id)
        if j not in self.cols:
            return dataclasses.replace(first, rule="look:unserved"), d
        c = _clip(Arm.parse(d.arm_id), d.p_success, first.predicted_j + d.marginal_j, lam, f"look:{d.action}",
                  n_min, tokens_max)  # fmt: skip
        return dataclasses.replace(c, slopes=first.slopes), d


def _clip(arm: Arm, p: float, e: float, lam: float, rule: str, n_min: int | None, tokens_max: int | None) -> Choice:
    """A Choice of `arm`, its settings clipped to the client's bounds when it does not fit them."""
    fits = _fits(arm, n_min, tokens_max)
    sent = arm
    if not fits:
        sent = Arm(arm.model, max(arm.n, n_min or arm.n), min(arm.max_new_tokens, tokens_max or arm.max_new_tokens),
                   arm.temperature)  # fmt: skip
    return Choice(sent, arm.arm_id, p, e, lam, rule, not fits)


def _fits(arm: Arm, n_min: int | None, tokens_max: int | None) -> bool:
    # the client's n is the number of choices it gets back, so an arm needs at least that many samples
    return (n_min is None or arm.n >= n_min) and (tokens_max is None or arm.max_new_tokens <= tokens_max)


@dataclass(frozen=True)
class Vote:
    answer: str | None
    winner_index: int  # the sample whose text the response carries
    counts: dict[str, int]
    no_answer: int
    answers: tuple[str | None, ...] = ()  # each sample's extracted answer, in sample order

    def ranked(self) -> list[int]:
        """Sample indices, best first: one sample per answer by votes (ties: first seen), then the rest."""
        first = {a: self.answers.index(a) for a in self.counts}
        order = sorted(self.counts, key=lambda a: (a != self.answer, -self.counts[a], first[a]))
        head = [first[a] for a in order]
        rank, taken = {a: r for r, a in enumerate(order)}, set(head)
        rest = sorted(
            (i for i in range(len(self.answers)) if i not in taken),
            key=lambda i: (rank.get(self.answers[i], len(rank)), i),
        )
        return head + rest if head else list(range(len(self.answers)))


def vote_texts(texts: Sequence[str], kind: str) -> Vote:
    """Extract each sample's answer and majority-vote them as the arm view does."""
    extract = EXTRACTORS[kind]
    answers = [extract(t)[0] for t in texts]
    winner, _ = vote(answers, [False] * len(answers))
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    index = answers.index(winner) if winner is not None else 0
    return Vote(winner, index, counts, sum(a is None for a in answers), tuple(answers))
