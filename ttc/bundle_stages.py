"""`ttc export` and `ttc allocate`: a bundle copied safely, and a query file decided in a stream.

Export never deletes what is not ours: the new bundle and its zip are built in
a temporary sibling, proved to load, and renamed into place at the end; an
existing destination is replaced only when it is a bundle of ours and `force`
is given, and an output equal to, inside, or holding the source is refused.
Every argument is checked before anything is written, so a refused export
leaves nothing behind.

Allocate reads the JSONL input line by line and decides in chunks
(policy/stream.py), writing decisions to a temporary file renamed at the end.
Duplicate query ids are refused (a decision file keyed by id would be
ambiguous); an unknown task name is warned about once and its queries use the
feature set's unknown-task columns. mlflow, lightgbm and onnx load only inside
the functions that need them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from policy.errors import UsageError

_MLFLOW_PREFIXES = ("runs:/", "models:/", "mlflow-artifacts:")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _resolve_bundle_source(source: str, tracking_uri: str | None = None) -> Path:
    """A local bundle folder/zip, a training output folder holding bundle/, or an MLflow artifact URI."""
    if source.startswith(_MLFLOW_PREFIXES):
        return _download(source, tracking_uri)
    p = Path(source)
    if (p / "bundle" / "policy.json").is_file():
        return p / "bundle"
    if (p / "policy.json").is_file() or (p.is_file() and p.suffix == ".zip"):
        return p
    raise UsageError(
        f"no policy bundle at {source!r}: give a `ttc train` output folder, a bundle folder or .zip, "
        "or an MLflow artifact URI (runs:/<run_id>/bundle)"
    )


def _download(source: str, tracking_uri: str | None) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    from store.tracking import DEFAULT_TRACKING_URI, resolve_tracking_uri

    uri = tracking_uri or DEFAULT_TRACKING_URI
    db = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else Path(uri) if "://" not in uri else None
    if db is not None and not db.exists():  # reading creates nothing: no fresh database, lock or marker file
        raise UsageError(f"cannot fetch {source!r}: there is no MLflow store at {str(db)!r}; check --tracking-uri")
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    try:
        local = Path(mlflow.artifacts.download_artifacts(source))
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"cannot fetch {source!r} from MLflow ({first[:200]}); check the run id / model name and alias, "
            "or --tracking-uri"
        ) from exc
    # a registered pyfunc keeps the bundle among its artifacts: find its policy.json
    found = sorted(local.rglob("policy.json")) if local.is_dir() else []
    if (local / "policy.json").is_file() or not found:
        return local
    return found[0].parent


def _rule_overrides(mode: str | None, lam: float | None, budget_j: float | None) -> dict[str, Any]:
    """The rule fields to change, checked before anything is read or written."""
    from policy.allocate import RULES
    from policy.errors import unknown_name

    if mode is not None and mode not in RULES:
        raise unknown_name("--mode", mode, RULES)
    if lam is not None and budget_j is not None:  # a price and a budget each decide the rule: never drop one
        raise UsageError("give --lam or --budget-j, not both")
    if lam is not None and not (math.isfinite(lam) and lam >= 0):
        raise UsageError(f"--lam must be a finite price >= 0 (accuracy per joule), got {lam}")
    if budget_j is not None and not (math.isfinite(budget_j) and budget_j > 0):
        raise UsageError(f"--budget-j must be a finite number of joules per query > 0, got {budget_j}")
    changes: dict[str, Any] = {"mode": mode, "lam": lam, "budget_j": budget_j}
    if mode is None and budget_j is not None and lam is None:
        changes["mode"] = "budget"  # a budget alone means budget mode
    elif mode is None and lam is not None and budget_j is None:
        changes["mode"] = "price"
    return {k: v for k, v in changes.items() if v is not None}


def _check_places(out: Path) -> Path:
    """Refuse an --out folder (or its .zip) that is no place to write (store/paths.py); the zip path.

    Needs no source, so export runs it before any download or load.
    """
    from store.paths import check_output_file, check_output_folder

    check_output_folder(out, "--out")
    zip_path = out.with_name(out.name + ".zip")
    check_output_file(zip_path, "--out (its .zip)")
    return zip_path


def _check_destinations(out: Path, force: bool) -> Path:
    """`_check_places`, and refuse an --out (or its .zip) that holds something not ours; the zip path."""
    from policy.bundle_files import is_bundle_zip
    from train.export import check_destination

    zip_path = _check_places(out)
    check_destination(out, force)
    if zip_path.is_symlink() or zip_path.exists():
        if not is_bundle_zip(zip_path):
            raise UsageError(f"{zip_path} exists and is not a bundle zip of ours; it is kept, choose another --out")
        if not force:
            raise UsageError(f"{zip_path} already holds a policy bundle; pass --force to replace it")
    return zip_path


def _check_paths(src: Path, out: Path, force: bool) -> Path:
    """Refuse an output that is, holds or lies in the source, or that holds something not ours; returns the zip path."""
    src_r, out_r = src.resolve(), out.resolve()
    zip_path = out.with_name(out.name + ".zip")
    if out_r == src_r or src_r.is_relative_to(out_r) or out_r.is_relative_to(src_r):
        raise UsageError(f"--out {out} is, holds or lies inside the source bundle {src}; choose another folder")
    if zip_path.resolve() == src_r:
        raise UsageError(f"--out {out} would overwrite the source {src} with {zip_path.name}; choose another folder")
    return _check_destinations(out, force)


def _publish_aside(
    policy: Any, src: Path, out: Path, zip_path: Path, force: bool, secret: bytes | None, suffix: str
) -> Any:
    """Build `policy` as `out` and `zip_path` in a temporary sibling, load it once (returned), check the
    destinations again and rename both into place. A failure leaves nothing behind: the sibling, and the
    parent folders made for `out` (store/paths.py `parents_made_for`), are removed."""
    from store.paths import parents_made_for
    from train.export import publish_bundle, swap_in

    with parents_made_for(out):
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent))
        try:
            new = publish_bundle(policy, staging, out, zip_path, secret)  # the one load of the new bundle
            _check_paths(src, out, force)  # again: something may have appeared meanwhile
            swap_in(staging / out.name, out)
            os.replace(staging / zip_path.name, zip_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return new


def export_stage(
    source: str,
    out: str | Path,
    mode: str | None = None,
    lam: float | None = None,
    budget_j: float | None = None,
    register_name: str | None = None,
    alias: str | None = "champion",
    tracking_uri: str | None = None,
    force: bool = False,
    key: bytes | str | None = None,
) -> dict[str, Any]:
    """Copy a verified bundle to `out` (folder and `out`.zip), optionally with a new decision rule, and register it."""
    from policy.allocate import DecisionRule
    from policy.bundle import load_bundle
    from policy.manifest import resolve_key

    changes = _rule_overrides(mode, lam, budget_j)
    secret = resolve_key(key)
    out = Path(out)
    _check_places(out)  # before any download, load or write
    if register_name:
        from store.tracking import check_tracking_uri

        check_tracking_uri(tracking_uri, registry=True)  # registration is refused before anything is written
    src = _resolve_bundle_source(source, tracking_uri)
    # verifies files, digest and features before anything is written; an unsigned source may be
    # exported with a key (this is where a bundle gets signed), a signed one must match it
    policy = load_bundle(src, key=secret, require_signature=False)
    rule = DecisionRule.from_dict({**policy.rule.to_dict(), **changes})
    zip_path = _check_paths(src, out, force)
    new = _publish_aside(policy.with_rule(rule), src, out, zip_path, force, secret, ".export")
    result: dict[str, Any] = {"bundle": str(out), "zip": str(zip_path), "energy_source": policy.energy_source}
    result["rule"] = rule.to_dict()
    # the default price and what it buys on the training frontier (frontier.json), for the console
    result["price"] = policy.frontier.describe() if policy.frontier is not None else None
    if register_name:
        result["model_uri"] = _register(out, new, register_name, alias, tracking_uri)
    return result


def _register(out: Path, policy: Any, register_name: str, alias: str | None, tracking_uri: str | None) -> str:
    import mlflow

    from serve.mlflow_log import log_policy_model
    from store.tracking import setup_tracking

    setup_tracking(tracking_uri, "ttc-export")
    with mlflow.start_run(run_name="export"):
        mlflow.set_tags({"stage": "export", "energy_source": policy.energy_source})
        return log_policy_model(out, registered_name=register_name, alias=alias, policy=policy)


# ---------------------------------------------------------------- allocate


def iter_queries(path: str | Path) -> Iterator[tuple[str, str, str | None]]:
    """(id, question, task) per line of a JSONL query file, checked line by line; never holds the file."""
    from store.jsonl import read_jsonl

    p = Path(path)
    seen: dict[str, int] = {}
    lines = read_jsonl(p, '{"question", "task"?, "id"?}')
    while True:
        try:
            item = next(lines, None)
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"{p} is not UTF-8 text (bad byte at offset {exc.start} of a line); save it as UTF-8"
            ) from exc
        if item is None:
            return
        i, row = item
        question, task, qid = row.get("question"), row.get("task"), row.get("id", i)
        if not isinstance(question, str) or not question.strip():
            raise UsageError(f'{p} line {i} has no "question" string; each line needs {{"question": "..."}}')
        if task is not None and not isinstance(task, str):
            raise UsageError(f'{p} line {i}: "task" must be a task name string or absent, got {task!r}')
        if isinstance(qid, bool) or not isinstance(qid, str | int):
            raise UsageError(f'{p} line {i}: "id" must be a string or an integer, got {qid!r}')
        qid = str(qid)
        if qid in seen:
            raise UsageError(f"{p} line {i} repeats id {qid!r} of line {seen[qid]}; give every query its own id")
        seen[qid] = i
        yield qid, question, task


def read_queries_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every query of a JSONL file as {"id", "question", "task"} (the streaming reader is `iter_queries`)."""
    rows = [{"id": q, "question": text, "task": t} for q, text, t in iter_queries(path)]
    if not rows:
        raise UsageError(f"{path} holds no queries")
    return rows


def _known_tasks() -> set[str]:
    from collect.tasks import TASKS

    return set(TASKS)


def _with_known_tasks(
    queries: Iterator[tuple[str, str, str | None]],
    known: set[str],
    warn: Callable[[str], None],
    policy_tasks: bool = False,
) -> Iterator[tuple[str, str, str | None]]:
    """Unknown task names become None (the unknown-task rule), with one warning for the first.

    `policy_tasks`: `known` are the bundle's own tasks (tasks.json), whose unknown tasks get its
    k = 0 rule; else they are the registered tasks, and jsonl: names pass as given.
    """
    from collect.tasks import JSONL_PREFIX

    warned = False
    for qid, question, task in queries:
        if task is not None and task not in known and (policy_tasks or not task.startswith(JSONL_PREFIX)):
            if not warned:
                rule = (
                    "get the policy's rule for unknown tasks (its global table; `ttc adapt` learns a new task "
                    "from a few labelled queries)"
                    if policy_tasks
                    else "use the unknown-task features"
                )
                warn(
                    f"unknown task {task!r} (query {qid!r}); known: {', '.join(sorted(known))}. Its queries and "
                    f"those of any other unknown task {rule}"
                )
                warned = True
            task = None
        yield qid, question, task


def allocate_stage(
    bundle: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    lam: float | None = None,
    budget_j: float | None = None,
    backend: str = "numpy",
    key: bytes | str | None = None,
    warn: Callable[[str], None] = _warn,
    probe_model: str | None = None,
    device: str = "auto",
) -> int:
    """Decide an arm for every query of a JSONL file; writes one Decision per line. Returns the count.

    A policy that reads a probe needs `probe_model` (its bundle's probe model): that model is loaded
    and prefills every question's prompt (`prefill_probes`), chunk by chunk.
    """
    from collect.config import check_device
    from policy.bundle import load_bundle
    from policy.records import Decision
    from policy.stream import allocate_stream
    from store.paths import check_output_file

    _rule_overrides(None, lam, budget_j)  # names the value given when it is bad, refuses both
    out = check_output_file(output_path, "--output")  # a regular file or a new path: never a FIFO, device or link
    if not Path(input_path).is_file():
        raise UsageError(f"--input {input_path} is not a file; give a JSONL file of queries")
    check_device(device)
    policy = load_bundle(bundle, backend=backend, key=key)
    probe_fn = _probe_fn(policy, probe_model, device)
    table = policy.task_table
    if table is None:
        queries = _with_known_tasks(iter_queries(input_path), _known_tasks(), warn)
    else:
        queries = _with_known_tasks(iter_queries(input_path), set(table.columns) | set(table.adapted), warn, True)
    fields = [f for f in Decision.__dataclass_fields__]
    extra = {"energy_source": policy.energy_source, "energy_meter": policy.energy_meter}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for d in allocate_stream(policy, queries, lam=lam, budget_j=budget_j, probe_fn=probe_fn):
                f.write(json.dumps({**{k: getattr(d, k) for k in fields}, **extra}) + "\n")
                n += 1
        if n == 0:
            raise UsageError(f"{input_path} holds no queries")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def _probe_fn(policy: Any, probe_model: str | None, device: str) -> Callable | None:
    """The chunk -> raw probes function a probe policy needs; refuses a missing or mismatched --probe-model."""
    if not policy.needs_probe:
        if probe_model is not None:
            raise UsageError(
                f"this policy reads no probe (feature set {policy.feature_set.name!r}); drop --probe-model"
            )
        return None
    if probe_model != policy.probe_model:
        raise UsageError(
            f"this policy reads the prefill probe of {policy.probe_model!r} (layer "
            f"{policy.probe_reduction.layer}); pass --probe-model {policy.probe_model}"
        )
    return prefill_probes(probe_model, device, policy.probe_reduction.layer)


def prefill_probes(model: str, device: str = "auto", layer: int | None = None) -> Callable:
    """A function (questions, tasks) -> raw probe vectors (n, 2 x hidden), float32: probe_last then probe_mean.

    Runs `model`'s prefill on each question's collection prompt (the task's few-shot demos, or the
    JSONL demos for an unknown task) through collect.models.LoadedModel.generate with one greedy token,
    the collection's own code path, so the vectors are the ones collection stores (store/probes.py).
    """
    import numpy as np

    from collect.models import LoadedModel, resolve_model
    from collect.tasks import JSONL_DEMOS, TASKS, make_task

    lm = LoadedModel(resolve_model(model), device=device)
    if layer is not None and lm.probe_layer != layer:
        raise UsageError(f"{model} gives its probe at layer {lm.probe_layer}, the policy was trained on layer {layer}")
    demos: dict[str | None, list] = {}

    def probe(questions: list[str], tasks: list[str | None]) -> np.ndarray:
        rows = []
        for i in range(0, len(questions), PROBE_BATCH):
            prompts = []
            for q, t in zip(questions[i : i + PROBE_BATCH], tasks[i : i + PROBE_BATCH], strict=True):
                if t not in demos:
                    demos[t] = make_task(t).demos if t in TASKS else JSONL_DEMOS
                prompts.append(lm.build_prompt(q, demos[t]))
            gen = lm.generate(prompts, 1, 1, 0.0, seed=0)
            rows.append(np.hstack([gen.probe_last, gen.probe_mean]).astype(np.float32))
        return np.vstack(rows)

    return probe


#: prompts prefilled at once by `prefill_probes`
PROBE_BATCH = 16


# ---------------------------------------------------------------- adapt


def adapt_stage(
    bundle: str | Path,
    store: str | Path,
    out: str | Path,
    tasks: list[str] | None = None,
    force: bool = False,
    key: bytes | str | None = None,
) -> dict[str, Any]:
    """Add the new tasks of `store` (k labelled queries each) to the bundle's task table; write it to `out`.

    No tree is refitted (train/adapt.py): the new bundle is the old one with a new tasks.json,
    written like `ttc export` writes (checked paths, built aside, proved to load, then renamed),
    with `out`.zip beside it.
    """
    from policy.bundle import load_bundle
    from policy.manifest import resolve_key
    from store.loader import load_samples
    from train.adapt import adapt_policy

    secret = resolve_key(key)
    out = Path(out)
    _check_places(out)  # before the bundle or the store is read
    src = _resolve_bundle_source(str(bundle))
    policy = load_bundle(src, key=secret, require_signature=False)
    zip_path = _check_paths(src, out, force)
    if not Path(store).is_dir():
        raise UsageError(f"--store {store} is not a folder; give the store `ttc collect` wrote for the new task")
    adaptation = adapt_policy(policy, load_samples(store), tasks)
    _publish_aside(policy.with_task_table(adaptation.table), src, out, zip_path, force, secret, ".adapt")
    return {
        "bundle": str(out),
        "zip": str(zip_path),
        "adapted": adaptation.n_queries,
        "known": list(policy.known_tasks or ()),
        "prior_queries": adaptation.table.prior_queries,
        "energy_source": adaptation.energy_source,
    }
