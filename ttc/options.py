"""The `ttc` command's option logic: checks and small derivations, so ttc/cli.py holds options and calls only.

Every function here runs before any work (no model, store or bundle is read)
and raises `UsageError` with the option's name; the stages check their own
arguments again, so the Python API refuses what the command refuses.
"""

from __future__ import annotations

from pathlib import Path

from policy.errors import UsageError


def read_key(key_file: Path | None) -> bytes | None:
    """The bundle signing key from --key-file (else None: TTC_BUNDLE_KEY is read by the loader)."""
    if key_file is None:
        return None
    try:
        key = key_file.read_bytes().strip()
    except OSError as e:
        raise UsageError(f"cannot read --key-file {key_file}: {e.strerror}") from e
    if not key:
        raise UsageError(f"--key-file {key_file} is empty; put a secret in it")
    return key


def check_ray(ray: str | None, ray_actors: int) -> None:
    """--ray-actors is a count >= 0 and means something only with --ray."""
    if isinstance(ray_actors, bool) or not isinstance(ray_actors, int) or ray_actors < 0:
        raise UsageError(f"--ray-actors must be >= 0 (an integer; 0 = one per slot), got {ray_actors!r}")
    if ray is None and ray_actors:
        raise UsageError("--ray-actors applies to a Ray collection; add --ray local (or auto, or HOST:PORT)")


def eval_inputs(bundle: str, train_dir: str, folds: int, holdout_task: list[str] | None) -> dict[str, object]:
    """eval_stage's bundle and split_file from the options: with --folds the bundle is optional, and the
    train folder's split.json is read only for one split without --holdout-task."""
    cross = folds > 1
    return {
        "bundle": bundle if not cross or Path(bundle).exists() else None,
        "split_file": train_dir if not cross and not holdout_task else None,
    }
