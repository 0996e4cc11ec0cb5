"""Property: any JSON, JSONL or TOML a user or an attacker writes ends in success or a clean `TTCError`.

Hypothesis generates documents with huge integers (10**400 and beyond the 4,300-digit
limit), non-finite and overflowing floats, deep nesting (arrays thousands of levels
deep) and arbitrary text, and feeds them to the three readers of untrusted files:
the bundle loader (policy.json and a tree file, re-hashed so the checks behind the
digest are reached), `ttc allocate`'s query reader, and the collect config reader.
Anything but success or a `UsageError`/`BundleError` fails the test.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_fixtures import rehash_bundle

from policy.bundle import load_bundle
from policy.errors import TTCError

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# as values: up to Python's 4,300-digit limit; the 5,000-digit ones are written as text below
HUGE = st.sampled_from([10**400, -(10**400), 10**308 * 10, 2**1024, 10**4000])
#: integers past the 4,300-digit limit, as JSON text (a Python int of that size cannot even be printed)
HUGE_TEXT = st.sampled_from(["1" * 5000, "-" + "9" * 4301, '{"id": ' + "7" * 5000 + "}", "[1e400, -1e999]"])
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([float("nan"), float("inf"), -float("inf")])
LEAVES = st.none() | st.booleans() | st.integers() | HUGE | FLOATS | st.text(max_size=20)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _deep(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def _nested(depth: int) -> list:
    """A list nested `depth` levels, built without recursion (the writer's json.dumps still copes at 600)."""
    v: list = [1]
    for _ in range(depth - 1):
        v = [v]
    return v


def _dumps(v) -> str:
    """JSON text as an attacker may write it: NaN/Infinity literals allowed."""
    return json.dumps(v, allow_nan=True)


#: a JSON document as text: a generated value, a deep nest, or raw text
DOCUMENTS = (
    VALUES.map(_dumps)
    | HUGE_TEXT
    | st.integers(50, 20_000).map(_deep)
    | st.integers(50, 3_000).map(lambda d: '{"a": ' * d + "1" + "}" * d)
    | st.text(max_size=200)
)


def _nested_keys(d, prefix=()):
    if isinstance(d, dict):
        for k, v in d.items():
            yield (*prefix, k)
            yield from _nested_keys(v, (*prefix, k))


def _set(d, path, value) -> None:
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


@pytest.fixture(scope="module")
def policy_keys(bundle_dir):
    d = json.loads((bundle_dir / "policy.json").read_text())
    return sorted(_nested_keys(d))


def _copy(bundle_dir: Path, work: str) -> Path:
    return Path(shutil.copytree(bundle_dir, Path(work) / "policy"))


@SETTINGS
@given(data=st.data(), value=VALUES | st.integers(65, 600).map(_nested), rehash=st.booleans())
def test_any_value_in_any_policy_json_field_loads_or_is_a_bundle_error(bundle_dir, policy_keys, data, value, rehash):
    path = data.draw(st.sampled_from(policy_keys))
    with tempfile.TemporaryDirectory() as work:
        b = _copy(bundle_dir, work)
        d = json.loads((b / "policy.json").read_text())
        _set(d, path, value)
        (b / "policy.json").write_text(_dumps(d))
        if rehash:
            try:
                rehash_bundle(b)
            except Exception:  # noqa: BLE001 - the attacker's own hashing tool failing, not the loader
                pass  # (a value it cannot take, "files" naming no file); the file stays as written
        try:
            load_bundle(b)
        except TTCError:
            pass


@SETTINGS
@given(text=DOCUMENTS, name=st.sampled_from(["policy.json", "success.trees.json", "parity.json"]))
def test_any_text_as_a_bundle_file_is_a_bundle_error(bundle_dir, text, name):
    with tempfile.TemporaryDirectory() as work:
        b = _copy(bundle_dir, work)
        (b / name).write_text(text, encoding="utf-8", errors="surrogatepass")
        if name != "policy.json":
            rehash_bundle(b)
        try:
            load_bundle(b)
        except TTCError:
            pass


@SETTINGS
@given(
    lines=st.lists(
        DOCUMENTS
        | st.fixed_dictionaries(
            {"question": st.text(min_size=1, max_size=30)}, optional={"id": VALUES, "task": VALUES}
        ).map(_dumps),
        min_size=1,
        max_size=4,
    )
)
def test_any_jsonl_input_to_allocate_decides_or_is_a_usage_error(bundle_dir, lines):
    from ttc.bundle_stages import allocate_stage

    with tempfile.TemporaryDirectory() as work:
        q = Path(work) / "q.jsonl"
        q.write_text(
            "\n".join(line.replace("\n", " ") for line in lines) + "\n", encoding="utf-8", errors="surrogatepass"
        )
        try:
            n = allocate_stage(bundle_dir, q, Path(work) / "out.jsonl", warn=lambda m: None)
            assert n >= 1
        except TTCError:
            pass


def _toml(v) -> str:
    """A TOML value for `v` (inline tables and arrays), with inf/nan as TOML spells them."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + "}"
    return '""'  # None has no TOML spelling


CONFIG_KEYS = ["items_per_task", "n_samples", "levels", "temperatures", "watts_per_core", "seed", "models", "x"]
TOML_TEXT = (
    st.dictionaries(st.sampled_from(CONFIG_KEYS), VALUES, max_size=3).map(
        lambda d: "[collect]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in d.items())
    )
    | st.integers(50, 5000).map(lambda n: "levels = " + _deep(n))
    | st.sampled_from(["levels = [1" + "0" * 400 + "]", "watts_per_core = 1e400", "seed = " + "9" * 5000])
    | st.text(max_size=200)
)


@SETTINGS
@given(text=TOML_TEXT)
def test_any_collect_config_loads_or_is_a_usage_error(text):
    from collect.config import load_config

    with tempfile.TemporaryDirectory() as work:
        p = Path(work) / "c.toml"
        p.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(p, device="cpu").validate()
        except TTCError:
            pass
