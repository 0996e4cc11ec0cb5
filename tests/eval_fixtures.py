"""The eval tests' shared fixtures, loaded with `pytest_plugins = ["eval_fixtures"]` (helpers: eval_helpers.py).

Module-scoped: each test module trains its own fixture bundle once (a few seconds).
"""

from __future__ import annotations

import pandas as pd
import pytest
from eval_helpers import _bundle, _context, _dataset, _stage

from eval.allocators import EvalContext, run_allocators

# ---------------------------------------------------------------- fixtures: the reference collection


@pytest.fixture(scope="module")
def samples(reference_samples: pd.DataFrame) -> pd.DataFrame:
    return reference_samples


@pytest.fixture(scope="module")
def dataset(samples):
    return _dataset(samples)


@pytest.fixture(scope="module")
def bundle(dataset, tmp_path_factory):
    return _bundle(dataset, tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def ctx(samples, dataset, bundle) -> EvalContext:
    return _context(samples, dataset, bundle)


@pytest.fixture(scope="module")
def curves(ctx):
    curves, skipped = run_allocators(ctx)
    assert skipped == {}
    return curves


@pytest.fixture(scope="module")
def staged(reference_store, dataset, bundle, tmp_path_factory):
    """One eval_stage run on the reference store folder (small bootstrap)."""
    return _stage(reference_store, dataset, bundle, tmp_path_factory.mktemp("eval"), n_boot=60)


# ---------------------------------------------------------------- fixtures: synthetic, for known structure


@pytest.fixture(scope="module")
def synthetic():
    """(samples, (dataset, split)) of tests/synthetic.py's table: 150 queries, 45 held out."""
    from synthetic import synthetic_samples

    samples = synthetic_samples(n_queries=150, seed=0)
    return samples, _dataset(samples)


@pytest.fixture(scope="module")
def synthetic_bundle(synthetic, tmp_path_factory):
    return _bundle(synthetic[1], tmp_path_factory.mktemp("synthetic_bundle"))
