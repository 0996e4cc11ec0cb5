"""Hostile bundles and exports: every crafted input ends in a clean error, nothing is lost, nothing is steered.

Crafted models are re-hashed (as an attacker can) so the structural checks of
policy/trees.py, not the digest, are what refuses them; each is loaded in a
subprocess that must exit 2 with a one-line message, never die from a signal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from policy_fixtures import rehash_bundle

from policy.bundle import load_bundle
from policy.errors import BundleError

ROOT = Path(__file__).resolve().parents[1]


def _edit(bundle: Path, change) -> None:
    d = json.loads((bundle / "policy.json").read_text())
    change(d)
    (bundle / "policy.json").write_text(json.dumps(d))


def _tree(n_leaves: int = 2, **over) -> dict:
    n = n_leaves - 1
    tree = {
        "num_leaves": n_leaves,
        "split_feature": [0] * n,
        "threshold": [0.5] * n,
        "decision_type": ["<="] * n,
        "missing_type": ["None"] * n,
        "default_left": [True] * n,
        "left_child": [-1 - i for i in range(n)],
        "right_child": [i + 1 for i in range(n - 1)] + ([-n_leaves] if n else []),
        "leaf_value": [0.1] * n_leaves,
    }
    return {**tree, **over}


def _model(bundle: Path, trees) -> dict:
    d = json.loads((bundle / "success.trees.json").read_text())
    return {**d, "trees": trees}


CRAFTED = {
    "huge_num_leaves": lambda b: _model(b, [_tree(num_leaves=2_000_000_000)]),
    "too_many_trees": lambda b: _model(b, [_tree()] * 20_001),
    "feature_index_out_of_range": lambda b: _model(b, [_tree(split_feature=[10**9])]),
    "negative_feature_index": lambda b: _model(b, [_tree(split_feature=[-1])]),
    "nan_threshold": lambda b: _model(b, [_tree(threshold=[float("nan")])]),
    "infinite_leaf_value": lambda b: _model(b, [_tree(leaf_value=[1e308 * 10, 0.0])]),
    "child_points_back_at_its_parent": lambda b: _model(b, [_tree(3, left_child=[-1, 0], right_child=[1, -2])]),
    "leaf_with_two_parents": lambda b: _model(b, [_tree(3, left_child=[-1, -1], right_child=[1, -2])]),
    "deeper_than_the_bound": lambda b: _model(b, [_tree(400)]),
    "deeply_nested_json": lambda b: '{"trees": ' + "[" * 200_000 + "]" * 200_000 + "}",
    "string_threshold": lambda b: _model(b, [_tree(threshold=["0.5"])]),
    "int_default_left": lambda b: _model(b, [_tree(default_left=[1])]),
    "categorical_split": lambda b: _model(b, [_tree(decision_type=["=="])]),
    "unknown_missing_type": lambda b: _model(b, [_tree(missing_type=["Maybe"])]),
    "wrong_feature_count": lambda b: {**_model(b, [_tree()]), "n_features": 3},
    "not_json": lambda b: "\x00\xff garbage",
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_a_crafted_tree_model_exits_2_cleanly_in_a_subprocess(bundle_copy, name):
    crafted = CRAFTED[name](bundle_copy)
    text = crafted if isinstance(crafted, str) else json.dumps(crafted, allow_nan=True)
    (bundle_copy / "success.trees.json").write_text(text, encoding="utf-8", errors="surrogateescape")
    rehash_bundle(bundle_copy)
    code = (
        "import sys\nfrom policy import load_bundle\nfrom policy.errors import TTCError\n"
        f"try:\n    load_bundle({str(bundle_copy)!r})\nexcept TTCError as e:\n    print(e)\n    sys.exit(2)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-500:])
    assert "tree model" in proc.stdout and len(proc.stdout.strip().splitlines()) == 1


def test_a_crafted_lightgbm_text_is_never_parsed_by_the_default_backend(bundle_copy):
    # the text that crashed LightGBM's native parser (exit 139) once its sha256 was updated
    text = (bundle_copy / "success.txt").read_text()
    (bundle_copy / "success.txt").write_text(text.replace("num_leaves=", "num_leaves=2000000000\nx=", 1))
    rehash_bundle(bundle_copy)
    code = "\n".join(
        [
            "from policy import load_bundle",
            f"p = load_bundle({str(bundle_copy)!r})",
            "print(p.allocate(['What is 2+2?'])[0].arm_id)",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]


# ---------------------------------------------------------------- digest and signature


@pytest.mark.parametrize(
    "field, change",
    [
        ("rule.lam", lambda d: d["rule"].update(lam=0.5)),
        ("rule.p_floor", lambda d: d["rule"].update(p_floor=0.9)),
        ("energy_source", lambda d: d.update(energy_source="measured")),
        ("metrics", lambda d: d["metrics"].update(synthetic=2)),
    ],
)
def test_an_edited_manifest_field_is_refused_by_the_digest(bundle_copy, field, change):
    _edit(bundle_copy, change)
    with pytest.raises(BundleError, match="digest.*changed after export"):
        load_bundle(bundle_copy)


def test_a_signed_bundle_loads_with_its_key_and_is_refused_with_another_or_after_a_rehash(bundle_copy, tmp_path):
    from policy.bundle import load_bundle as load
    from train.export import write_policy

    signed = write_policy(load(bundle_copy), tmp_path / "signed", key=b"secret-1")
    assert load(signed, key=b"secret-1").rule == load(bundle_copy).rule
    with pytest.raises(BundleError, match="signature.*does not match"):
        load(signed, key=b"secret-2")
    with pytest.raises(BundleError, match="not signed but a key was given"):
        load(bundle_copy, key=b"secret-1")
    _edit(signed, lambda d: d["rule"].update(lam=0.5))
    rehash_bundle(signed)  # an attacker without the key can fix the digest, not the signature
    load(signed)
    with pytest.raises(BundleError, match="signature"):
        load(signed, key=b"secret-1")


def test_the_key_is_read_from_the_environment_when_none_is_given(bundle_copy, tmp_path, monkeypatch):
    from train.export import write_policy

    unsigned = load_bundle(bundle_copy)
    monkeypatch.setenv("TTC_BUNDLE_KEY", "from-env")
    signed = write_policy(unsigned, tmp_path / "s")
    assert load_bundle(signed).manifest.signature is not None
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(bundle_copy)


# ---------------------------------------------------------------- links and zips


@pytest.mark.parametrize("name", ["parity.json", "policy.json", "success.trees.json"])
def test_a_symlink_in_a_bundle_folder_is_refused(bundle_copy, tmp_path, name):
    outside = tmp_path / f"outside-{name}"
    shutil.move(bundle_copy / name, outside)
    (bundle_copy / name).symlink_to(outside)
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(bundle_copy)


def _zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _members(bundle: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(bundle.iterdir())]


def test_a_zip_with_a_second_policy_json_in_a_subfolder_is_refused(bundle_copy, tmp_path):
    second = ("sub/policy.json", (bundle_copy / "policy.json").read_bytes())
    z = _zip(tmp_path / "b.zip", [*_members(bundle_copy), second])
    with pytest.raises(BundleError, match="'sub/policy.json'.*not a bundle file"):
        load_bundle(z)


def test_a_zip_with_a_duplicate_member_is_refused(bundle_copy, tmp_path):
    with pytest.warns(UserWarning, match="Duplicate name"):
        z = _zip(tmp_path / "b.zip", _members(bundle_copy) + [("parity.json", b"{}")])
    with pytest.raises(BundleError, match="parity.json twice"):
        load_bundle(z)


@pytest.mark.parametrize("extra", ["evil.sh", "junk.bin", "a/success.txt"])
def test_a_zip_with_any_extra_member_is_refused(bundle_copy, tmp_path, extra):
    z = _zip(tmp_path / "b.zip", _members(bundle_copy) + [(extra, b"#!/bin/sh\n")])
    with pytest.raises(BundleError, match="not a bundle file at the archive root"):
        load_bundle(z)


def test_a_zip_whose_files_are_all_in_a_subfolder_is_refused(bundle_copy, tmp_path):
    z = _zip(tmp_path / "b.zip", [(f"policy/{n}", b) for n, b in _members(bundle_copy)])
    with pytest.raises(BundleError, match="archive root"):
        load_bundle(z)


def test_a_big_zip_member_is_refused_before_it_is_inflated(bundle_copy, tmp_path):
    # 256 MiB of zeros in one member, about 256 KB on disk
    big = tmp_path / "bomb.zip"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in _members(bundle_copy):
            if name != "success.txt":
                zf.writestr(name, data)
        with zf.open("success.txt", "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(256):
                f.write(chunk)
    assert big.stat().st_size < 2 << 20
    code = (
        "import sys\nfrom policy import load_bundle\nfrom policy.errors import TTCError\n"
        f"try:\n    load_bundle({str(big)!r})\nexcept TTCError as e:\n    print(e)\n"
        # VmHWM: this process's own peak (ru_maxrss would carry over pytest's peak across fork and exec)
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    message, rss_kib = proc.stdout.strip().splitlines()
    assert "success.txt" in message and "cap" in message
    assert int(rss_kib) < 200 * 1024, f"peak RSS {int(rss_kib) >> 10} MiB while refusing a 256 MiB member"


def test_a_member_larger_than_its_header_says_is_refused_while_reading(bundle_copy, tmp_path, monkeypatch):
    import policy.bundle_files as bf

    z = _zip(tmp_path / "b.zip", _members(bundle_copy))
    # a lying header passes the header check: the capped chunked read must still stop
    monkeypatch.setattr(bf, "_check_member", lambda info, seen, path: None)
    monkeypatch.setitem(bf.MAX_BYTES, "parity.json", 16)
    with pytest.raises(BundleError, match="parity.json.*larger than"):
        load_bundle(z)


# ---------------------------------------------------------------- manifest types and shapes


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d["rule"].update(lam="0.1"), "lam must be a number"),
        (lambda d: d["rule"].update(p_floor=None), "p_floor must be a number"),
        (lambda d: d.update(calibration={"x": ["0", "1"], "y": ["0", "1"]}), "calibration x and y must be finite"),
        (lambda d: d.update(arms="tiny-135m/n1/L32/greedy"), "'arms' must be a non-empty list"),
        (lambda d: d.update(files=["success.txt"]), "'files' must be a map"),
        (lambda d: d["onnx"].update(success_column="1"), "'onnx' must be"),
        (lambda d: d.update(metrics=[1, 2]), "'metrics' must be a JSON object"),
        (lambda d: d["feature_set"].update(version="1"), "'feature_set' must be"),
        (lambda d: d.update(rule=[0.1]), "'rule' must be a JSON object"),
        (lambda d: d.update(schema_version="2"), "malformed schema_version"),
        (lambda d: d.update(files={**d["files"], "../etc/passwd": "0" * 64}), "not a bundle file"),
    ],
)
def test_a_wrong_typed_manifest_field_is_a_bundle_error(bundle_copy, change, match):
    _edit(bundle_copy, change)
    if "files" not in match and "bundle file" not in match:  # (a bad file map cannot be re-hashed)
        rehash_bundle(bundle_copy)
    with pytest.raises(BundleError, match=match):
        load_bundle(bundle_copy)


def test_an_onnx_output_column_out_of_range_is_a_bundle_error(bundle_copy):
    _edit(bundle_copy, lambda d: d["onnx"].update(success_column=7))
    rehash_bundle(bundle_copy)
    load_bundle(bundle_copy)  # the numpy backend does not read ONNX
    with pytest.raises(BundleError, match="column 7"):
        load_bundle(bundle_copy, backend="onnx")


def test_models_of_another_feature_count_are_a_bundle_error(bundle_copy, tmp_path):
    import lightgbm as lgb

    from train.export import trees_json

    x = np.random.default_rng(0).normal(size=(100, 5))
    small = lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(x, x[:, 0]), 3)
    (bundle_copy / "energy.trees.json").write_text(json.dumps(trees_json(small, "identity")))
    (bundle_copy / "energy.txt").write_text(small.model_to_string())
    rehash_bundle(bundle_copy)
    with pytest.raises(BundleError, match="n_features is 5"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="takes 5 features"):
        load_bundle(bundle_copy, backend="lightgbm")


def test_a_fifo_or_an_oversized_file_in_a_bundle_folder_is_refused_without_reading_it(bundle_copy):
    (bundle_copy / "parity.json").unlink()
    os.mkfifo(bundle_copy / "parity.json")  # reading it would block forever
    with pytest.raises(BundleError, match="parity.json.*not a regular file"):
        load_bundle(bundle_copy)
    (bundle_copy / "parity.json").unlink()
    (bundle_copy / "parity.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(BundleError, match="parity.json.*larger than 1 MiB"):
        load_bundle(bundle_copy)
