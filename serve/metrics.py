"""Prometheus metrics of the proxy, in a registry of its own (one per app, so tests can build many).

Counted: requests by endpoint, mode and outcome; decisions and predicted
joules per arm; upstream latency per model; errors by kind; and the online
budget controller's state (target, λ, window mean, slope range). Per engine:
requests by outcome, samples, prompt and completion tokens, readiness, and the
latency cost of asking for n samples (their wall time over one request's).
Per task: end-to-end latency and vote agreement (the winner's share of the
samples). A task label is a registered task name, "none" or "other", so a
client cannot grow the label set. Joules here are the policy's *predictions*,
never a measurement of the upstream. This module never touches the network or
the policy.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serve.budget import BudgetState

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_JOULE_BUCKETS = (0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000, 3000)
_SHARE_BUCKETS = (0.2, 0.34, 0.5, 0.67, 0.8, 0.99, 1.0)
_RATIO_BUCKETS = (1.1, 1.5, 2, 3, 4, 6, 8, 12, 16)


def task_label(task: str | None) -> str:
    """A bounded metric label for a client-given task name."""
    if task is None:
        return "none"
    from collect.tasks import TASKS  # lazy: the registry is a name list here

    return task if task in TASKS else "other"


class ProxyMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ttc_requests", "Requests served", ["endpoint", "mode", "status"], registry=r)
        self.decisions = Counter("ttc_decisions", "Policy decisions per arm", ["arm"], registry=r)
        self.predicted_j = Counter(
            "ttc_predicted_joules", "Sum of the policy's predicted joules of the arms chosen", ["arm"], registry=r
        )
        self.predicted_j_hist = Histogram(
            "ttc_predicted_joules_per_request", "Predicted joules of one decision", buckets=_JOULE_BUCKETS, registry=r
        )
        self.upstream_latency = Histogram(
            "ttc_upstream_latency_seconds",
            "Wall time waiting on the upstream for all n samples of a request",
            ["model"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.errors = Counter("ttc_errors", "Errors by kind", ["kind"], registry=r)
        self.look_actions = Counter(
            "ttc_look_actions", "Look-then-decide: what the stage-2 rule did after the first sample", ["action"],
            registry=r,
        )  # fmt: skip
        self.task_rule = Counter(
            "ttc_task_rule",
            "Policy decisions by what the bundle knows of the request's task: known, adapted (ttc adapt) or "
            "unknown (no hint or a name it never saw: the k = 0 rule, policy/tasks.py)",
            ["status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "ttc_request_duration_seconds",
            "End-to-end wall time of a request in the proxy (body read to response built; streams to their end)",
            ["endpoint", "mode", "task"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.upstream_requests = Counter(
            "ttc_upstream_requests", "HTTP requests sent to engines, by outcome", ["model", "outcome"], registry=r
        )
        self.samples = Counter("ttc_samples", "Samples drawn from engines", ["model", "task"], registry=r)
        self.tokens = Counter("ttc_tokens", "Tokens engines reported (usage)", ["model", "kind"], registry=r)
        self.vote_agreement = Histogram(
            "ttc_vote_agreement",
            "Share of a request's samples that gave the voted answer",
            ["task"],
            buckets=_SHARE_BUCKETS,
            registry=r,
        )
        self.latency_ratio = Histogram(
            "ttc_sampling_latency_ratio",
            "Wall time of a request's n samples over its fastest single sample request (1: parallel, n: queued)",
            ["model"],
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.upstream_ready = Gauge(
            "ttc_upstream_ready", "1 if the engine answered the last readiness check, else 0", ["model"], registry=r
        )
        self.budget_target = Gauge("ttc_budget_target_joules", "Online budget: target mean joules", registry=r)
        self.budget_lam = Gauge("ttc_budget_lambda", "Online budget: current price (accuracy per joule)", registry=r)
        self.budget_mean = Gauge("ttc_budget_window_mean_joules", "Online budget: window mean joules", registry=r)
        self.budget_window = Gauge("ttc_budget_window_requests", "Online budget: decisions in the window", registry=r)
        self.budget_slope_min = Gauge("ttc_budget_slope_min", "Online budget: smallest hull slope seen", registry=r)
        self.budget_slope_max = Gauge("ttc_budget_slope_max", "Online budget: largest hull slope seen", registry=r)

    def budget(self, s: BudgetState) -> None:
        self.budget_target.set(s.target_j)
        self.budget_lam.set(s.lam)
        self.budget_mean.set(s.window_mean_j)
        self.budget_window.set(s.window_size)
        self.budget_slope_min.set(s.slope_min)
        self.budget_slope_max.set(s.slope_max)

    def render(self) -> bytes:
        return generate_latest(self.registry)
