"""Allocating a long stream of queries in chunks, with the same decisions as one big call.

The price rule decides each query alone, so a chunk's decisions are final as
soon as its predictions are made and nothing but the chunk is held. The budget
rule needs the whole batch: its chunks keep only the predictions (two
(n_queries, n_arms) float64 matrices), never the question text or features,
and allocate once at the end. Either way the result equals
`Policy.allocate` on the whole list. numpy and the standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from policy.allocate import BUDGET
from policy.errors import UsageError
from policy.records import Decision

if TYPE_CHECKING:
    from policy.bundle import Policy

#: queries featurised and predicted at once: large enough for numpy to pay off, small in memory
CHUNK = 4096


def allocate_stream(
    policy: Policy,
    queries: Iterable[tuple[str, str, str | None]],
    lam: float | None = None,
    budget_j: float | None = None,
    chunk: int = CHUNK,
    probe_fn: Callable[[list[str], list[str | None]], np.ndarray] | None = None,
) -> Iterator[Decision]:
    """Decisions, in input order, for (query_id, question, task) triples under the stored rule or `lam`/`budget_j`.

    `probe_fn(questions, tasks)`: the raw probe vectors of a chunk, for a policy that reads a probe
    (ttc.bundle_stages.prefill_probes runs the probe model's prefill).
    """
    if lam is not None and budget_j is not None:
        raise UsageError("give a price (lam) or a budget (budget_j), not both")
    if chunk < 1:
        raise UsageError(f"chunk must be >= 1 queries, got {chunk}")
    whole_batch = budget_j is not None or (lam is None and policy.rule.mode == BUDGET)
    batches = _batches(iter(queries), chunk)
    if not whole_batch:
        for ids, questions, tasks in batches:
            p, e = policy.predict(questions, tasks, probe_fn(questions, tasks) if probe_fn else None)
            yield from policy.allocate_predictions(p, e, ids, lam=lam)
        return
    all_ids: list[str] = []
    ps, es = [], []
    for ids, questions, tasks in batches:
        p, e = policy.predict(questions, tasks, probe_fn(questions, tasks) if probe_fn else None)
        all_ids.extend(ids)
        ps.append(p)
        es.append(e)
    if not all_ids:
        return
    yield from policy.allocate_predictions(np.vstack(ps), np.vstack(es), all_ids, budget_j=budget_j)


def _batches(it: Iterator[tuple[str, str, str | None]], chunk: int) -> Iterator[tuple[list, list, list]]:
    while batch := list(islice(it, chunk)):
        ids, questions, tasks = (list(col) for col in zip(*batch, strict=True))
        yield ids, questions, tasks
