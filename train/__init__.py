"""The train stage: from a sample store to a success predictor and an energy predictor.

- `train.dataset`: samples -> (query, arm) rows, features, labels and splits by query or task;
- `train.predictors`: the sklearn-contract LightGBM predictors, per-arm baselines and metrics;
- `train.registry`: `PREDICTORS`, one entry per predictor kind (target, scale, loss, refit, evaluation);
- `train.tune`: Optuna tuning (in memory, SQLite/RDB or a shared journal file);
- `train.fit`: the work, with no MLflow, files or printing: `TrainConfig`, `fit`, `evaluate`,
  and `fit_policy(samples, train_query_ids, cfg, out_dir) -> Path` (a bundle folder);
- `train.stage`: `train_stage`, the function behind `ttc train`: the work plus MLflow, files, printing.

Importing this package imports nothing heavy (mlflow and optuna load inside the stage), so
the CLI reads its choice lists here. It also sets one process-wide default, below, because it
must precede the first OpenMP load.
"""

import os

# OpenMP threads (LightGBM's, and torch's in `ttc collect`) spin while they wait for
# work. On a machine whose cores are busy with something else (a model run beside
# training), spinning threads starve each other: 200 trees took 234 s with 2 threads
# against 0.45 s with 1 on this project's 2-core box; passive waiting fixes it (0.8 s).
# It must be set before libgomp first loads, hence at import; a value the user set wins.
# This is its one definition: `ttc.cli` imports this package for it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: calibrations of the success predictor ("none": the booster's own probabilities;
#: "isotonic": an isotonic map fitted on held-out training queries)
CALIBRATIONS = ("none", "isotonic")
