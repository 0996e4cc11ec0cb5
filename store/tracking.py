"""MLflow set-up shared by every stage: a SQLite store under mlruns/ by default.

MLflow's file store is deprecated; a relative `sqlite:///mlruns/mlflow.db` is
resolved against the current folder and its folder created, and experiments
keep their artifacts beside the database (not in whatever folder the process
runs from). mlflow is imported inside the functions only, so importing this
module costs nothing and `policy/` never pulls MLflow in.

A fresh SQLite database is created under a lock beside it (`.mlflow.db.lock`),
once, by whichever process resolves its URI first: MLflow's schema migrations
are not safe to run twice at once (two `ttc train` on a fresh mlruns/ failed
with "duplicate column name: step"). A marker (`.mlflow.db.ready`) lets later
processes skip the lock. This module never logs runs itself.
"""

from __future__ import annotations

from pathlib import Path

from policy.errors import UsageError
from store.locks import waiting_lock

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
#: URI schemes MLflow's tracking stores take (a SQLAlchemy dialect may add "+driver": postgresql+psycopg2)
TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def check_tracking_uri(uri: str | None, registry: bool = False) -> None:
    """Refuse a tracking URI MLflow cannot use, before any work and without creating or changing anything.

    A SQLite database or a bare folder must be a place that can be written; another URI needs a
    scheme MLflow knows and, for http(s), a host name that resolves. `registry`: the URI will also
    register models (the same checks; MLflow's registry follows the tracking URI).
    """
    import urllib.parse

    from store.paths import check_output_file, check_output_folder

    uri = uri or DEFAULT_TRACKING_URI
    option = "--tracking-uri" + (" (for --register-name)" if registry else "")
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file():  # an existing database (or a link to one) is used as it is
            check_output_file(path if path.is_absolute() else Path.cwd() / path, option)
        return
    if "://" not in uri:
        check_output_folder(uri, option)
        return
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.split("+")[0] not in TRACKING_SCHEMES:
        raise UsageError(
            f"{option} {uri!r} has a scheme MLflow cannot track to; use sqlite:///path.db, a folder, "
            f"or one of {', '.join(s + '://' for s in TRACKING_SCHEMES[1:])}"
        )
    if parts.scheme in ("http", "https"):
        import socket

        try:
            socket.getaddrinfo(parts.hostname or "", parts.port or 80)
        except (OSError, ValueError) as exc:
            raise UsageError(f"{option} {uri!r}: the host {parts.hostname!r} does not resolve ({exc})") from exc


def resolve_tracking_uri(uri: str | None) -> str:
    """Absolute SQLite URIs (relative paths resolve against the working directory); others pass through."""
    uri = uri or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        path = path if path.is_absolute() else Path.cwd() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        resolved = f"sqlite:///{path.resolve()}"
        init_sqlite_db(path.resolve(), resolved)
        return resolved
    if "://" not in uri:  # a bare folder: MLflow's (deprecated) file store
        path = Path(uri).resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path.as_uri()
    return uri


def init_sqlite_db(db: Path, uri: str) -> None:
    """Create MLflow's tables in the SQLite file `db` unless done before, one process at a time."""
    ready = db.with_name(f".{db.name}.ready")

    def done() -> bool:
        return ready.is_file() and db.is_file() and db.stat().st_size > 0

    if done():
        return
    with waiting_lock(db.with_name(f".{db.name}.lock")):
        if done():  # another process created it while this one waited
            return
        import logging

        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        # Constructing the store runs the migrations and creates the default experiment; its INFO
        # lines ("Creating initial MLflow database tables...") are not news to a `ttc` user.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        SqlAlchemyStore(uri, (db.parent / "artifacts").as_uri()).engine.dispose()
        ready.touch()


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
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as e:  # another process created it between the lookup and here
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def setup_tracking(uri: str | None, experiment: str) -> str:
    """Point mlflow at `uri` and make `experiment` the active one; returns the resolved URI."""
    import mlflow
    from mlflow import MlflowClient

    resolved = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_experiment(experiment_id=experiment_id(MlflowClient(resolved), experiment, resolved))
    return resolved
