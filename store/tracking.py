"""MLflow set-up shared by every stage: a SQLite store under mlruns/ by default.

MLflow's file store is deprecated; a relative `sqlite:///mlruns/mlflow.db` is
resolved against the current folder and its folder created, and experiments
keep their artifacts beside the database (not in whatever folder the process
runs from). mlflow is imported inside the functions only, so importing this
module costs nothing and `policy/` never pulls MLflow in.
"""

from __future__ import annotations

from pathlib import Path

from policy.errors import UsageError

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def resolve_tracking_uri(uri: str | None) -> str:
    """Absolute SQLite URIs (relative paths resolve against the working directory); others pass through."""
    uri = uri or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        path = path if path.is_absolute() else Path.cwd() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path.resolve()}"
    if "://" not in uri:  # a bare folder: MLflow's (deprecated) file store
        path = Path(uri).resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path.as_uri()
    return uri


def experiment_id(client, name: str, tracking_uri: str) -> str:  # noqa: ANN001 (an MlflowClient)
    """The id of experiment `name`, created with its artifacts beside a SQLite database."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise UsageError(f"MLflow experiment {name!r} is deleted; restore it or pass another --experiment")
        return exp.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):
        artifact_location = (Path(tracking_uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


def setup_tracking(uri: str | None, experiment: str) -> str:
    """Point mlflow at `uri` and make `experiment` the active one; returns the resolved URI."""
    import mlflow
    from mlflow import MlflowClient

    resolved = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_experiment(experiment_id=experiment_id(MlflowClient(resolved), experiment, resolved))
    return resolved
