"""MLflow set-up shared by every stage: a SQLite store under mlruns/ by default.

MLflow's file store is deprecated; a relative `sqlite:///mlruns/mlflow.db` is
resolved against the current folder and its folder created. Imported only by
stages that track, so `policy/` never pulls MLflow in.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def resolve_tracking_uri(uri: str | None) -> str:
    uri = uri or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///") :]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{path}"
    return uri


def setup_tracking(uri: str | None, experiment: str) -> str:
    import mlflow

    resolved = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    artifacts = Path("mlruns/artifacts").resolve()
    if mlflow.get_experiment_by_name(experiment) is None:
        location = artifacts.as_uri() if resolved.startswith("sqlite:") else None
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return resolved
