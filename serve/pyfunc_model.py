"""MLflow models-from-code entry: the exported policy as a pyfunc model.

MLflow executes this file when it loads the model (`mlflow.pyfunc.load_model`,
`mlflow models serve`); `serve/mlflow_log.py` logs it with the bundle folder
as the artifact "bundle" and the `policy` package as code. It imports mlflow
at module level; `import policy` never imports it.

Input: a DataFrame with column `question`, optional `task` and `query_id`;
a "text+probe" policy also needs `probe`: each question's raw probe vector
(policy/probe.py: probe_last then probe_mean of the bundle's probe model) as a
JSON list of numbers (or a list). A bundle with a look-then-decide rule
(stage2.json) also reads, when all are present, the first sample's signals as
columns `first_mean_logprob`, `first_min_logprob`, `first_mean_entropy`,
`first_answered`, `first_tokens` (policy.features.FIRST_SAMPLE_NAMES, of a
sample of `first_arm_id`), for a rule that reads the answer checks also
`first_text` (the sample's text; or the check columns `first_equations`,
`first_wrong_equations`), and optional `first_energy_j`; the output then adds
`stage2_arm_id` and `stage2_action` ("stop", "continue" or "switch").
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

#: added by a bundle with a look-then-decide rule (the stage-2 pair only when the signals are given)
STAGE2_COLUMNS = ["first_arm_id", "stage2_arm_id", "stage2_action"]
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
        out = pd.DataFrame(
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
        return self._after_look(out, df, questions, tasks, query_ids, lam)

    def _after_look(self, out: pd.DataFrame, df: pd.DataFrame, questions, tasks, query_ids, lam) -> pd.DataFrame:
        """Stage-2 columns when the bundle has the rule and the input has every first-sample signal column."""
        from policy.features import FIRST_SAMPLE_NAMES

        policy = self.policy_
        if policy.stage_two is None:
            return out
        out["first_arm_id"] = [policy.first_arm_for(t) for t in (tasks if tasks is not None else [None] * len(out))]
        # every column the rule reads, or the five confidence columns plus the first sample's text
        given = list(policy.stage_two_signals) if all(c in df.columns for c in policy.stage_two_signals) else None
        if given is None and all(c in df.columns for c in FIRST_SAMPLE_NAMES):
            given = list(FIRST_SAMPLE_NAMES)
        text = df["first_text"].astype("string").fillna("").tolist() if "first_text" in df.columns else None
        if given is None or (len(given) < len(policy.stage_two_signals) and text is None):
            return out
        sig = df[given].astype("float64").to_numpy()
        e1 = df["first_energy_j"].astype("float64").to_numpy() if "first_energy_j" in df.columns else None
        probe = _probes(df) if policy.needs_probe else None
        after = policy.decide_after_look(
            questions, sig, tasks, query_ids, probe, e1, None if lam is None else float(lam), text
        )
        out["stage2_arm_id"] = [d.arm_id for d in after]
        out["stage2_action"] = [d.action for d in after]
        return out


def _probes(df: pd.DataFrame) -> Any:
    """The `probe` column as an (n, width) float array; `UsageError` naming the column when absent or malformed."""
    import numpy as np

    from policy import jsonsafe
    from policy.errors import UsageError

    if "probe" not in df.columns:
        raise UsageError("this policy reads a prefill probe: add a 'probe' column (a JSON list of numbers per row)")
    try:
        rows = [jsonsafe.loads(v, "a 'probe' value") if isinstance(v, str) else list(v) for v in df["probe"]]
        return np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"the 'probe' column must hold one list of numbers per row of equal length: {exc}") from exc


def _optional(df: pd.DataFrame, column: str) -> list[str | None] | None:
    if column not in df.columns:
        return None
    return [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in df[column]]


mlflow.models.set_model(PolicyModel())
