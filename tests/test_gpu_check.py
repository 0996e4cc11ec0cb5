"""scripts/gpu_check: runs standalone against a fake NVML on CPU and labels every figure.

The real check needs an NVIDIA GPU; these tests run the same code path on CPU
with a tiny random model and the fake `pynvml`, in a subprocess started in
isolated mode (`python -I`, cwd outside the repository) to prove the script needs
neither this package installed nor PYTHONPATH.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
TINY = ["--device", "cpu", "--fake-nvml", "--hidden", "64", "--layers", "2", "--vocab", "1000"]
TINY += ["--new-tokens", "8", "--prompt-tokens", "8", "--batch-sizes", "1,3", "--idle-s", "0.3", "--repeats", "2"]


def _run(args: list[str], cwd: Path, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.slow
def test_gpu_check_runs_standalone_and_labels_measured_and_estimated(tmp_path: Path) -> None:
    proc = _run([sys.executable, "-I", str(SCRIPT), *TINY], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("GPU_CHECK_JSON ")
    result = json.loads(lines[-1].removeprefix("GPU_CHECK_JSON "))
    assert (result["measured_meter"], result["measured_source"]) == ("nvml", "measured")
    assert (result["estimated_meter"], result["estimated_source"]) == ("estimate", "estimated")
    assert result["fake_nvml"] is True
    assert result["idle_power_w"] == pytest.approx(60.0, rel=0.35)  # the fake GPU draws 60 W
    assert [r["batch_size"] for r in result["rows"]] == [1, 3]
    for row in result["rows"]:
        assert row["output_tokens"] == row["batch_size"] * 8 * 2  # every token generated, both repeats
        assert row["measured_j_per_token"] == pytest.approx(row["measured_j"] / row["output_tokens"])
        assert row["estimated_j_per_token"] > 0
        assert row["measured_j_per_token_min"] <= row["measured_j_per_token"] <= row["measured_j_per_token_max"]
    text = proc.stdout
    assert "idle power, measured by NVML" in text and "J/token measured [FAKE]" in text
    assert "J/token estimated" in text and "FAKE NVML: figures are not real" in text


def test_gpu_check_rejects_fake_nvml_on_a_gpu_device(tmp_path: Path) -> None:
    proc = _run([sys.executable, "-I", str(SCRIPT), "--fake-nvml", "--device", "cuda"], cwd=tmp_path, timeout_s=60)
    assert proc.returncode == 2 and "--fake-nvml is for CPU test runs only" in proc.stderr


def test_gpu_check_rejects_bad_batch_sizes(tmp_path: Path) -> None:
    proc = _run([sys.executable, "-I", str(SCRIPT), "--batch-sizes", "1,x"], cwd=tmp_path, timeout_s=60)
    assert proc.returncode == 2 and "--batch-sizes must be comma-separated integers" in proc.stderr


def test_gpu_check_imports_only_torch_transformers_pynvml_and_the_repo() -> None:
    allowed = set(sys.stdlib_module_names) | {"torch", "transformers", "pynvml", "collect", "policy", "__future__"}
    for path in [SCRIPT, REPO / "tests" / "fakes" / "fake_pynvml.py"]:
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert names <= allowed, f"{path.name} imports {sorted(names - allowed)}"


def test_gpu_check_shell_wrapper_passes_arguments_through(tmp_path: Path) -> None:
    # The wrapper imports torch/transformers/pynvml first (fails fast if one is missing), then runs the script.
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--fake-nvml" in proc.stdout and "--batch-sizes" in proc.stdout
