"""Prometheus metrics of the proxy, in a registry of its own (one per app, so tests can build many).

Counted: requests by endpoint, mode and outcome; decisions and predicted
joules per arm; upstream latency per model; errors by kind; and the online
budget controller's state (target, λ, window mean, slope range). Joules here
are the policy's *predictions*, never a measurement of the upstream.
This module never touches the network or the policy.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serve.budget import BudgetState

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_JOULE_BUCKETS = (0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000, 3000)


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
