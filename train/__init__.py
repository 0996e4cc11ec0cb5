"""The train stage: from a sample store to a success predictor and an energy predictor.

- `train.dataset`: samples -> (query, arm) rows, features, labels and splits by query or task;
- `train.predictors`: the sklearn-contract LightGBM predictors, per-arm baselines and metrics;
- `train.tune`: Optuna tuning with one nested MLflow run per trial;
- `train.stage`: `train_stage`, the function behind `ttc train`.

Importing this package imports nothing heavy: mlflow and optuna load inside the stage.
"""
