"""Bad input, one test per class of issue 21: every case ends in a one-line `TTCError`, nothing else.

Bundles are crafted and re-hashed (as an attacker can), so the checks behind the
digest are what refuses them; numbers and nesting go through policy/jsonsafe.py.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from policy_fixtures import rehash_bundle

from policy.bundle import load_bundle
from policy.errors import BundleError, UsageError
from policy.jsonsafe import MAX_DEPTH, loads, loads_toml


def _edit(bundle: Path, change) -> None:
    d = json.loads((bundle / "policy.json").read_text())
    change(d)
    (bundle / "policy.json").write_text(json.dumps(d))


# ---------------------------------------------------------------- numbers and nesting


@pytest.mark.parametrize(
    "text, match",
    [
        ("1" * 5000, "out of range"),
        ("[1e400]", "not finite"),
        ('{"x": ' + "9" * 400 + "}", "out of range"),
        ('{"x": -' + "9" * 320 + ".5}", "not finite"),
        ("[NaN]", "not a finite number"),
        ('{"a": -Infinity}', "not a finite number"),
        ("[" * 100_000 + "]" * 100_000, "nested 100000 levels"),
        ("[" * 100_000, "nested"),
    ],
)
def test_the_one_json_parser_refuses_huge_numbers_and_deep_nesting_with_the_callers_error(text, match):
    with pytest.raises(BundleError, match=match) as err:
        loads(text, "f.json", BundleError)
    assert "\n" not in str(err.value)


def test_nesting_up_to_the_bound_and_brackets_inside_strings_are_accepted():
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH, "x") is not None
    assert loads(json.dumps({"s": "[" * 10_000}), "x") == {"s": "[" * 10_000}
    assert loads('{"n": 12345678901234567890, "f": 1.5e300}', "x") == {"n": 12345678901234567890, "f": 1.5e300}


@pytest.mark.parametrize(
    "text, match",
    [
        ("a = 1" + "0" * 400, "out of range"),
        ("a = 1" + "0" * 5000, "malformed TOML"),
        ("a = 1e400", "not finite"),
        ("a = inf", "not finite"),
        ("a = " + "[" * 5000 + "]" * 5000, "nested"),
    ],
)
def test_the_toml_reader_refuses_the_same_numbers_and_nesting(text, match):
    with pytest.raises(UsageError, match=match):
        loads_toml(text, "c.toml")


def test_a_huge_number_in_any_bundle_field_is_a_bundle_error_not_an_overflow(bundle_copy):
    _edit(bundle_copy, lambda d: d["rule"].update(lam=10**400))
    text = (bundle_copy / "policy.json").read_text()
    assert "0" * 400 in text
    with pytest.raises(BundleError, match="out of range"):
        load_bundle(bundle_copy)


def test_a_policy_json_nested_past_the_bound_is_refused_before_its_digest(bundle_copy):
    # 600 levels: deep enough to overflow the digest's encoder before this fix
    deep: list = []
    for _ in range(600):
        deep = [deep]
    _edit(bundle_copy, lambda d: d["metrics"].update(deep=deep))  # no rehash needed: refused while parsing
    with pytest.raises(BundleError, match="nested 60[0-9] levels deep"):
        load_bundle(bundle_copy)


# ---------------------------------------------------------------- arms and signatures


@pytest.mark.parametrize(
    "arm",
    ["m/n1/L8/t1.2.3", "m/n1/L8/t.", "m/n" + "7" * 5000 + "/L8/t1", "m/n1/L8/t" + "9" * 400, "m/n1/L8/t1e5"],
)
def test_a_malformed_or_overflowing_arm_id_with_a_valid_digest_is_a_bundle_error(bundle_copy, arm):
    _edit(bundle_copy, lambda d: d["arms"].__setitem__(0, d["models"][0] + arm[1:]))
    rehash_bundle(bundle_copy)
    with pytest.raises(BundleError, match="arm") as err:
        load_bundle(bundle_copy)
    assert len(str(err.value)) < 400


@pytest.mark.parametrize(
    "signature", [{"alg": "hmac-sha256"}, {"value": "ab"}, {"alg": "hmac-sha256", "value": "é" * 64}, {"x": "y"}]
)
def test_a_malformed_signature_object_with_a_key_is_a_bundle_error(bundle_copy, signature):
    _edit(bundle_copy, lambda d: d.update(signature=signature))
    rehash_bundle(bundle_copy)
    with pytest.raises(BundleError, match="signature"):
        load_bundle(bundle_copy, key=b"secret")


# ---------------------------------------------------------------- zips and folders


def _zip_of(bundle: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(bundle.iterdir()):
            zf.writestr(p.name, p.read_bytes())
    return path


@pytest.mark.parametrize("cut", [1, 4, 100])
def test_a_zip_missing_its_leading_bytes_is_a_bundle_error(bundle_copy, tmp_path, cut):
    whole = _zip_of(bundle_copy, tmp_path / "b.zip").read_bytes()
    cut_zip = tmp_path / "cut.zip"
    cut_zip.write_bytes(whole[cut:])
    with pytest.raises(BundleError):
        load_bundle(cut_zip)


def test_the_total_size_of_a_zip_is_capped_not_only_each_member(bundle_copy, tmp_path, monkeypatch):
    import policy.bundle_files as bf

    z = _zip_of(bundle_copy, tmp_path / "b.zip")
    total = sum(p.stat().st_size for p in bundle_copy.iterdir())
    biggest = max(p.stat().st_size for p in bundle_copy.iterdir())
    monkeypatch.setattr(bf, "MAX_TOTAL_BYTES", total - 1)  # every member fits its own cap, the sum does not
    assert biggest < total - 1
    with pytest.raises(BundleError, match="in all"):
        load_bundle(z)
    with pytest.raises(BundleError, match="in all"):  # a folder: no header sum, so the counted read stops it
        load_bundle(bundle_copy)
    monkeypatch.setattr(bf, "MAX_TOTAL_BYTES", total)
    load_bundle(z)
