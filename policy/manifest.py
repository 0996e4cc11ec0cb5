"""policy.json: the bundle's sidecar, its schema, its type checks, and the digest over the whole bundle.

A manifest is parsed from untrusted bytes, so every field's type and shape is
checked here and any mismatch is a `BundleError` with the field's name, never
a traceback further on. Old schemas: `UPGRADES[v]` would turn schema v into
v + 1; schema 2 stores the trees as plain data, which an older bundle does not
hold and which cannot be made without parsing its LightGBM text natively, so
schemas 0 and 1 are refused with a message to re-export.

The digest is sha256 over the manifest's canonical JSON without the `digest`
and `signature` fields, then every other file as (name, length, bytes) in name
order. It stops accidents and careless edits (a changed `rule.lam` or
`energy_source`), not an attacker, who can recompute it; with a key the
bundle also carries an HMAC-SHA256 of the digest, which only a key holder can
make. Standard library only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from policy import jsonsafe
from policy.errors import BundleError, TTCError, UsageError

SCHEMA_VERSION = 2
ENERGY_TARGET = "log_joules"
SIGNATURE_ALG = "hmac-sha256"
KEY_ENV = "TTC_BUNDLE_KEY"


@dataclass(frozen=True)
class Manifest:
    """The parsed policy.json of the current schema."""

    arms: list[str]
    models: list[str]
    feature_set: dict[str, Any]
    row_features: list[str]
    rule: dict[str, Any]
    energy_meter: str
    energy_source: str
    metrics: dict[str, Any]
    files: dict[str, str]
    onnx: dict[str, Any]
    success_objective: str
    energy_target: str = ENERGY_TARGET
    calibration: dict[str, list[float]] | None = None
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION
    digest: str = ""
    signature: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"


#: UPGRADES[v] turns a policy.json of schema v into schema v + 1 (none yet: see the module docstring).
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def upgrade_manifest(d: dict[str, Any]) -> dict[str, Any]:
    """Bring a raw policy.json dict to `SCHEMA_VERSION`, one explicit step at a time."""
    version = d.get("schema_version", 0)
    if type(version) is not int or version < 0:
        raise BundleError(f"policy.json has a malformed schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"bundle schema_version {version} is newer than this package reads ({SCHEMA_VERSION}); "
            "upgrade ttc-allocator to load it"
        )
    while version < SCHEMA_VERSION:
        if version not in UPGRADES:
            raise BundleError(
                f"bundle schema_version {version} predates schema {SCHEMA_VERSION} (trees stored as plain data, "
                "one digest over the bundle); re-export it from its training output with `ttc train` or "
                "`train.export.write_bundle`"
            )
        d = UPGRADES[version](d)
        version = d["schema_version"]
    return d


# ---------------------------------------------------------------- type checks


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _str_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


_ONNX_KEYS = {"input": str, "success_output": str, "success_column": int, "energy_output": str, "energy_column": int}

#: field -> (check, what it must be)
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "arms": (lambda v: _str_list(v) and len(v) > 0, "a non-empty list of arm id strings"),
    "models": (lambda v: _str_list(v) and len(v) > 0, "a non-empty list of model name strings"),
    "feature_set": (
        lambda v: (
            isinstance(v, dict)
            and isinstance(v.get("name"), str)
            and type(v.get("version")) is int
            and type(v.get("probe", False)) is bool
        ),
        '{"name": str, "version": int, "probe": bool}',
    ),
    "row_features": (_str_list, "a list of strings"),
    "rule": (lambda v: isinstance(v, dict), "a JSON object"),
    "energy_meter": (lambda v: isinstance(v, str), "a string"),
    "energy_source": (lambda v: isinstance(v, str), "a string"),
    "metrics": (lambda v: isinstance(v, dict), "a JSON object"),
    "files": (_str_map, "a map of file name to sha256 hex string"),
    "onnx": (
        lambda v: isinstance(v, dict) and all(type(v.get(k)) is t for k, t in _ONNX_KEYS.items()),
        "{" + ", ".join(f'"{k}": {t.__name__}' for k, t in _ONNX_KEYS.items()) + "}",
    ),
    "success_objective": (lambda v: isinstance(v, str), "a string"),
    "energy_target": (lambda v: isinstance(v, str), "a string"),
    "calibration": (lambda v: v is None or isinstance(v, dict), "null or {'x': [...], 'y': [...]}"),
    "created_utc": (lambda v: isinstance(v, str), "a string"),
    "schema_version": (lambda v: type(v) is int, "an integer"),
    "digest": (lambda v: isinstance(v, str), "a sha256 hex string"),
    "signature": (
        lambda v: v is None or (_str_map(v) and set(v) == {"alg", "value"} and all(x.isascii() for x in v.values())),
        'null or {"alg": str, "value": hex str}',
    ),
}


def parse_manifest(raw: bytes) -> Manifest:
    """A `Manifest` from policy.json bytes, every field's type checked; `BundleError` otherwise."""
    d = jsonsafe.loads(raw, "policy.json", BundleError, "; re-export the bundle")
    if not isinstance(d, dict):
        raise BundleError("policy.json must hold a JSON object")
    d = upgrade_manifest(d)
    names = {f.name for f in dataclasses.fields(Manifest)}
    unknown = set(d) - names
    if unknown:
        raise BundleError(f"policy.json has unknown keys {sorted(unknown)} for schema_version {SCHEMA_VERSION}")
    required = {f.name for f in dataclasses.fields(Manifest) if f.default is dataclasses.MISSING}
    missing = sorted(required - set(d))
    if missing:
        raise BundleError(f"policy.json lacks {missing}; the bundle is incomplete, re-export it")
    for key, value in d.items():
        ok, what = _CHECKS[key]
        if not ok(value):
            raise BundleError(f"policy.json field {key!r} must be {what}, got {_short(value)}")
    if d.get("calibration") is not None:
        check_calibration(d["calibration"], BundleError)
    return Manifest(**d)


def check_calibration(table: Mapping[str, Any], exc: type[TTCError]) -> None:
    x, y = table.get("x"), table.get("y")
    if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y) or len(x) < 2:
        raise exc("calibration must be {'x': [...], 'y': [...]} of equal length >= 2")
    if not all(_is_num(v) for v in x + y):
        raise exc("calibration x and y must be finite numbers")
    if any(b < a for a, b in zip(x, x[1:], strict=False)):
        raise exc("calibration x must be non-decreasing")
    if any(not 0.0 <= v <= 1.0 for v in y):
        raise exc("calibration y must lie in [0, 1]")


def _short(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}..." if len(text) > 60 else text


# ---------------------------------------------------------------- digest and signature


def bundle_digest(manifest: Manifest, blobs: Mapping[str, bytes]) -> str:
    """sha256 over the manifest (canonical JSON, no digest/signature) and every other file, by name."""
    d = manifest.to_dict()
    d.pop("digest", None)
    d.pop("signature", None)
    h = hashlib.sha256()
    h.update(json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode())
    for name in sorted(blobs):
        data = blobs[name]
        # length-prefixed, so no two different file sets hash the same stream
        h.update(f"\n{name}\n{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def sign(digest: str, key: bytes) -> dict[str, str]:
    return {"alg": SIGNATURE_ALG, "value": hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()}


def verify(
    manifest: Manifest, blobs: Mapping[str, bytes], key: bytes | None, where: str, require_signature: bool = True
) -> None:
    """Refuse a bundle whose digest does not match its files, or whose signature does not match `key`.

    With a key, an unsigned bundle is refused unless `require_signature` is false (export signs an
    unsigned training bundle); a signature that is there is always checked.
    """
    if not hmac.compare_digest(bundle_digest(manifest, blobs), manifest.digest):
        raise BundleError(
            f"the digest in {where}/policy.json does not match the bundle: a file or a field of policy.json "
            "(rule, energy_source, ...) was changed after export; re-export the bundle"
        )
    if key is None:
        return
    sig = manifest.signature
    if sig is None and not require_signature:
        return
    if sig is None:
        raise BundleError(f"{where} is not signed but a key was given ({KEY_ENV} or --key-file); export with the key")
    given = str(sig.get("value", "")).encode("utf-8")  # bytes: compare_digest refuses non-ASCII str
    if sig.get("alg") != SIGNATURE_ALG or not hmac.compare_digest(sign(manifest.digest, key)["value"].encode(), given):
        raise BundleError(f"the signature of {where} does not match the given key; the bundle was not signed with it")


def resolve_key(key: bytes | str | None) -> bytes | None:
    """The signing key: the one given, else the environment's `TTC_BUNDLE_KEY`, else None."""
    import os

    if key is None:
        key = os.environ.get(KEY_ENV) or None
    if key is None:
        return None
    key = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if not key.strip():
        raise UsageError(f"the bundle key is empty; set {KEY_ENV} or --key-file to a non-empty secret")
    return key
