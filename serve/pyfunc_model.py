"""MLflow models-from-code entry: the exported policy as a pyfunc model.

MLflow executes this file when it loads the model (`mlflow.pyfunc.load_model`,
`mlflow models serve`); `serve/mlflow_log.py` logs it with the bundle folder
as the artifact "bundle" and the `policy` package as code. It imports mlflow
at module level; `import policy` never imports it.

Input: a DataFrame with column `question`, optional `task` and `query_id`;
a "text+probe" policy also needs `probe`: each question's raw probe vector
(policy/probe.py: probe_last then probe_mean of the bundle's probe model) as a
JSON list of numbers (or a list).
Output: one row per input row with the chosen `arm_id`, its predicted
`p_success` and `energy_j`, the `rule` that chose it, the price `lam`, and
`energy_source` (whether the joules the policy learnt from were measured or
estimated). Optional params `lam` (a price) or `budget_j` (a mean budget per
row; in budget mode the request's rows form one batch) replace the stored rule.
The numpy backend (plain-data trees) serves by default; the model config
`backend` may name "onnx" or "lightgbm" for a bundle you trust.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd

OUTPUT_COLUMNS = ["query_id", "arm_id", "p_success", "energy_j", "next_arm_id", "rule", "lam", "energy_source"]


class PolicyModel(mlflow.pyfunc.PythonModel):
    """Wraps `policy.bundle.Policy`; the bundle is data, loaded from the model's artifacts."""

    def load_context(self, context: Any) -> None:
        from policy.bundle import load_bundle

        backend = (context.model_config or {}).get("backend", "numpy")
        self.policy_ = load_bundle(context.artifacts["bundle"], backend=backend)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from policy.errors import UsageError

        if not hasattr(self, "policy_"):
            raise UsageError("the policy model was not loaded; load it with mlflow.pyfunc.load_model")
        df = pd.DataFrame(model_input)
        if "question" not in df.columns:
            raise UsageError(f"input needs a 'question' column, got columns {list(df.columns)}")
        questions = [str(q) for q in df["question"]]
        tasks = _optional(df, "task")
        ids = _optional(df, "query_id")
        query_ids = [q if q is not None else str(i) for i, q in enumerate(ids)] if ids else None
        params = params or {}
        lam, budget_j = params.get("lam"), params.get("budget_j")
        decisions = self.policy_.allocate(
            questions,
            tasks,
            query_ids,
            probe=_probes(df) if self.policy_.needs_probe else None,
            lam=None if lam is None else float(lam),
            budget_j=None if budget_j is None else float(budget_j),
        )
        return pd.DataFrame(
            [
                (
                    d.query_id,
                    d.arm_id,
                    d.p_success,
                    d.energy_j,
                    d.next_arm_id or "",
                    d.rule,
                    d.lam,
                    self.policy_.energy_source,
                )
                for d in decisions
            ],
            columns=OUTPUT_COLUMNS,
        )


def _probes(df: pd.DataFrame) -> Any:
    """The `probe` column as an (n, width) float array; `UsageError` naming the column when absent or malformed."""
    import json

    import numpy as np

    from policy.errors import UsageError

    if "probe" not in df.columns:
        raise UsageError("this policy reads a prefill probe: add a 'probe' column (a JSON list of numbers per row)")
    try:
        rows = [json.loads(v) if isinstance(v, str) else list(v) for v in df["probe"]]
        return np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"the 'probe' column must hold one list of numbers per row of equal length: {exc}") from exc


def _optional(df: pd.DataFrame, column: str) -> list[str | None] | None:
    if column not in df.columns:
        return None
    return [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in df[column]]


mlflow.models.set_model(PolicyModel())
