"""Log a policy bundle to MLflow as a pyfunc model, and optionally register it.

mlflow is imported inside `log_policy_model` only. The model is logged from
code (`serve/pyfunc_model.py`) with the bundle folder as its artifact and the
`policy` package as its code, so a served model needs neither this repository
nor pickles; with the default numpy backend it needs no lightgbm or
onnxruntime either.
"""

from __future__ import annotations

from pathlib import Path

import policy as policy_package
from policy.bundle import Policy
from policy.errors import UsageError

#: the question/task columns a served policy accepts, with one example row
INPUT_EXAMPLE = {
    "question": ["Tom has 3 apples and buys 12 more. How many apples does he have?"],
    "task": ["gsm8k"],
}


def log_policy_model(
    bundle_dir: str | Path,
    registered_name: str | None = None,
    alias: str | None = None,
    backend: str = "numpy",
    policy: Policy | None = None,
) -> str:
    """Log the bundle as an MLflow pyfunc model in the current (or a new) run; returns a model URI.

    `policy`: the bundle already loaded from `bundle_dir`'s bytes (export loads it once); None loads it here.

    With `registered_name` the model is registered; with `alias` too (e.g.
    "champion") that alias points at the new version and the returned URI is
    `models:/<name>@<alias>`. Uses the tracking URI MLflow is configured with.
    """
    import mlflow
    import pandas as pd

    from policy.bundle import load_bundle

    if alias and not registered_name:
        raise UsageError(f"alias {alias!r} needs a registered_name to point into")
    bundle_dir = Path(bundle_dir).resolve()
    if not bundle_dir.is_dir():
        raise UsageError(f"{bundle_dir} is not a bundle folder; log the folder that write_bundle wrote, not the .zip")
    if policy is None:
        policy = load_bundle(bundle_dir, backend=backend)  # refuse a broken bundle before logging it

    policy_dir = Path(policy_package.__file__).resolve().parent  # shipped as code: the pyfunc imports it
    signature = _signature()
    active = mlflow.active_run()
    if active is None:
        mlflow.start_run(run_name="policy-bundle")
    try:
        _log_params(mlflow, policy)
        numeric = {k: float(v) for k, v in policy.metrics.items() if isinstance(v, int | float)}
        if numeric:
            mlflow.log_metrics(numeric)
        info = _quietly(
            mlflow.pyfunc.log_model,
            name="policy",
            python_model=str(Path(__file__).resolve().parent / "pyfunc_model.py"),
            artifacts={"bundle": str(bundle_dir)},
            code_paths=[str(policy_dir)],
            model_config={"backend": backend},
            signature=signature,
            input_example=pd.DataFrame(_input_example(policy)),
            pip_requirements=_requirements(mlflow.__version__, backend),
            registered_model_name=registered_name,
        )
    finally:
        if active is None:
            mlflow.end_run()
    if not registered_name:
        return info.model_uri
    if alias:
        mlflow.MlflowClient().set_registered_model_alias(registered_name, alias, str(info.registered_model_version))
        return f"models:/{registered_name}@{alias}"
    return f"models:/{registered_name}/{info.registered_model_version}"


def _quietly(fn, *args, **kwargs):
    """`fn` with MLflow's own stderr lines ("Successfully registered model ...") held back; shown if it fails.

    The caller prints the returned model URI itself: a quiet console.
    """
    import contextlib
    import io
    import sys

    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            return fn(*args, **kwargs)
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise


def _input_example(policy) -> dict[str, list]:
    """The example row; a probe policy's carries a probe vector of its width (zeros, for the shape only)."""
    if policy.probe_reduction is None:
        return INPUT_EXAMPLE
    import json

    return {**INPUT_EXAMPLE, "probe": [json.dumps([0.0] * policy.probe_reduction.width)]}


def _requirements(mlflow_version: str, backend: str) -> list[str]:
    """What the served model installs: the numpy backend needs no model library."""
    import importlib.metadata

    reqs = [f"mlflow=={mlflow_version}", "numpy", "pandas"]
    library = {"lightgbm": "lightgbm", "onnx": "onnxruntime"}.get(backend)
    if library:
        reqs.append(f"{library}=={importlib.metadata.version(library)}")
    return reqs


def _signature():
    """Inputs question/task/query_id, the decision columns out, and the optional lam / budget_j params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from policy.features import STAGE2_SIGNAL_NAMES
    from serve.pyfunc_model import OUTPUT_COLUMNS, STAGE2_COLUMNS

    return ModelSignature(
        inputs=Schema(
            [
                ColSpec("string", "question"),
                ColSpec("string", "task", required=False),
                ColSpec("string", "query_id", required=False),
                # a text+probe policy: the question's raw probe vector as a JSON list of numbers
                ColSpec("string", "probe", required=False),
                # a bundle with a look-then-decide rule: the first sample's signals, and its metered joules
                *[ColSpec("double", c, required=False) for c in (*STAGE2_SIGNAL_NAMES, "first_energy_j")],
                ColSpec("string", "first_text", required=False),
            ]
        ),
        outputs=Schema(
            [
                ColSpec("double" if c in ("p_success", "energy_j", "lam") else "string", c, required=c != "next_arm_id")
                for c in OUTPUT_COLUMNS
            ]
            + [ColSpec("string", c, required=False) for c in STAGE2_COLUMNS]
        ),
        params=ParamSchema([ParamSpec("lam", "double", None), ParamSpec("budget_j", "double", None)]),
    )


def _log_params(mlflow, policy) -> None:
    """The rule, feature set and energy provenance of the logged policy, as run parameters."""
    mlflow.log_params(
        {
            "rule_mode": policy.rule.mode,
            "rule_lam": policy.rule.lam,
            "rule_budget_j": policy.rule.budget_j,
            "p_floor": policy.rule.p_floor,
            "feature_set": f"{policy.feature_set.name}@v{policy.feature_set.version}",
            "energy_meter": policy.energy_meter,
            "energy_source": policy.energy_source,
            "n_arms": len(policy.arms),
        }
    )
