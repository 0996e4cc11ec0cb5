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
        ("a = 1" + "0" * 5000, "malformed c.toml"),
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


# ---------------------------------------------------------------- output paths


def _cli(*args: str):
    from typer.testing import CliRunner

    from ttc.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _queries(tmp_path: Path) -> Path:
    q = tmp_path / "q.jsonl"
    q.write_text('{"question": "What is 2 + 3?", "task": "rg.chain_sum"}\n', encoding="utf-8")
    return q


def test_allocate_never_replaces_a_fifo_or_a_symlink_with_a_file(bundle_dir, tmp_path):
    import os
    import stat

    fifo, target, link = tmp_path / "fifo", tmp_path / "target.txt", tmp_path / "link"
    os.mkfifo(fifo)
    target.write_text("keep me\n")
    link.symlink_to(target)
    for output, kind in ((fifo, "a FIFO"), (link, "a symbolic link")):
        r = _cli("allocate", "--bundle", bundle_dir, "--input", _queries(tmp_path), "--output", output)
        assert r.exit_code == 2 and kind in r.output and r.output.count("\n") == 1, r.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink() and target.read_text() == "keep me\n"


@pytest.mark.parametrize("bad", ["", ".", "/", "..", "{file}/sub", "{file}/a/b", "/proc/ttc-x/out"])
def test_every_writing_command_refuses_a_path_that_is_no_place_to_write_before_any_work(tmp_path, bad, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    path = bad.format(file=tmp_path / "notes.txt")
    missing = tmp_path / "no-such-store"  # were the output checked after the store, this would be the error
    commands = [
        ("allocate", "--bundle", missing, "--input", _queries(tmp_path), "--output", path),
        ("train", "--store", missing, "--out", path),
        ("eval", "--store", missing, "--out", path),
        ("export", "--from", missing, "--out", path),
        ("adapt", "--bundle", missing, "--store", missing, "--out", path),
        ("run", "--out", path),
    ]
    for args in commands:
        r = _cli(*args)
        assert r.exit_code == 2, (args, r.output)
        assert ("--out" in r.output or "--output" in r.output) and r.output.count("\n") == 1, (args, r.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "q.jsonl"]


def test_eval_refuses_a_non_empty_user_folder_and_replaces_only_its_own_report_with_force(tmp_path):
    from eval.outputs import JSON_NAME, MARKDOWN_NAME, is_report_folder
    from store.paths import check_replaceable_folder

    user = tmp_path / "mine"
    user.mkdir()
    (user / MARKDOWN_NAME).write_text("my own notes")
    r = _cli("eval", "--store", tmp_path / "no-store", "--out", user, "--force")
    assert r.exit_code == 2 and "not an eval report of ours" in r.output
    assert (user / MARKDOWN_NAME).read_text() == "my own notes"
    ours = tmp_path / "report"
    ours.mkdir()
    (ours / JSON_NAME).write_text("{}")
    (ours / MARKDOWN_NAME).write_text("# report")
    assert is_report_folder(ours) and not is_report_folder(user)
    with pytest.raises(UsageError, match="--force"):
        check_replaceable_folder(ours, is_report_folder, False, "--out", "an eval report of ours")
    assert check_replaceable_folder(ours, is_report_folder, True, "--out", "an eval report of ours") == ours


def test_a_staged_folder_replaces_the_old_output_only_on_success(tmp_path):
    from store.paths import staged_folder

    out = tmp_path / "deep" / "out"
    with pytest.raises(RuntimeError), staged_folder(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert not (tmp_path / "deep").exists()  # folders made for it are removed again
    with staged_folder(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), staged_folder(out) as tmp:
        raise RuntimeError
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no temporary sibling left


# ---------------------------------------------------------------- options checked before work


@pytest.mark.parametrize(
    "args, match",
    [
        (("train", "--seed", "-1"), "--seed"),
        (("eval", "--seed", "-1"), "--seed"),
        (("train", "--storage", "foo://bar"), "--storage"),
        (("train", "--storage", "journal:/proc/ttc-x/j.log"), "--storage"),
        (("train", "--tracking-uri", "bogus://x"), "--tracking-uri"),
        (("eval", "--tracking-uri", "sqlite:////proc/ttc-x/m.db"), "--tracking-uri"),
        (("collect", "--ray-actors", "-1"), "--ray-actors"),
        (("collect", "--tracking-uri", "bogus://x", "--device", "cpu"), "--tracking-uri"),
        (("collect", "--ray-actors", "2"), "--ray"),
        (("export", "--lam", "0.1", "--budget-j", "5"), "not both"),
        (("allocate", "--bundle", "{bundle}", "--input", "{q}", "--device", "bogus"), "unknown device 'bogus'"),
    ],
)
def test_a_bad_option_is_refused_before_any_work_and_changes_nothing(bundle_dir, tmp_path, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    q = _queries(tmp_path)
    args = [a.format(bundle=bundle_dir, q=q) for a in args]
    r = _cli(*args, *(["--store", tmp_path / "no-store"] if args[0] in ("train", "eval") else []))
    assert r.exit_code == 2 and match in r.output and r.output.count("\n") == 1, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl"]  # no tracking DB, store, output or lock


def test_register_name_with_an_unresolvable_tracking_uri_is_refused_before_any_write(bundle_dir, tmp_path):
    for uri in ("bogus://x", "http://ttc-no-such-host.invalid:5000"):
        r = _cli("export", "--from", bundle_dir, "--out", tmp_path / "P", "--register-name", "m", "--tracking-uri", uri)
        assert r.exit_code == 2 and "--tracking-uri" in r.output, r.output
        assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_export_from_a_missing_model_leaves_no_fresh_tracking_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = _cli("export", "--from", "models:/missing@champion", "--out", "P", "--tracking-uri", "sqlite:///new.db")
    assert r.exit_code == 2 and "cannot fetch" in r.output
    assert list(tmp_path.iterdir()) == []  # no new.db, .new.db.lock or .new.db.ready


@pytest.mark.parametrize(
    "args, match",
    [
        (("--port", "70000"), "--port"),
        (("--port", "0"), "--port"),
        (("--timeout-s", "nan"), "--timeout-s"),
        (("--timeout-s", "inf"), "--timeout-s"),
        (("--timeout-s", "0"), "--timeout-s"),
        (("--timeout-s", "-1"), "--timeout-s"),
        (("--budget-window", "0"), "--budget-window"),
        (("--budget-window", "-1"), "--budget-window"),
        (("--max-body-bytes", "0"), "--max-body-bytes"),
        (("--max-body-bytes", "-1"), "--max-body-bytes"),
        (("--lam", "nan"), "--lam"),
        (("--lam", "-1"), "--lam"),
        (("--budget-j", "inf"), "--budget-j"),
        (("--host", "ttc-no-such-host.invalid"), "--host"),
    ],
)
def test_serve_refuses_every_bad_option_before_loading_the_bundle_or_binding(tmp_path, args, match):
    r = _cli("serve", "--bundle", tmp_path / "no-bundle", "--upstream", "m=http://127.0.0.1:9/v1", *args)
    assert r.exit_code == 2 and match in r.output and r.output.count("\n") == 1, r.output


def test_a_second_collector_on_a_brand_new_store_is_refused_before_loading_a_model(tmp_path):
    import subprocess
    import sys

    from store.locks import WRITER_LOCK_NAME
    from store.shards import SampleStore

    new = tmp_path / "store"
    with SampleStore(new) as first:
        first.clean_partial()  # what a collector does before it loads a model: it now takes the lock
        assert (new / WRITER_LOCK_NAME).is_file()
        code = "import sys\nfrom store.shards import SampleStore\nSampleStore(sys.argv[1]).clean_partial()\n"
        root = Path(__file__).resolve().parents[1]
        proc = subprocess.run([sys.executable, "-c", code, str(new)], cwd=root, capture_output=True, text=True)
    assert proc.returncode != 0 and "is being written by" in proc.stderr


# ---------------------------------------------------------------- the proxy


DEEP = "[" * 6000 + "]" * 6000
MSG = '[{"role": "user", "content": "What is 2 + 3?"}]'


@pytest.mark.parametrize(
    "body, header",
    [
        ('{"model": "ttc", "messages": ' + DEEP + "}", None),
        ('{"model": "ttc", "messages": ' + MSG + ', "ttc": {"lam": 1' + "0" * 400 + "}}", None),
        ('{"model": "ttc", "messages": ' + MSG + ', "n": 1e400}', None),
        ('{"model": "ttc", "messages": ' + MSG + ', "max_tokens": ' + "9" * 5000 + "}", None),
        ('{"model": "ttc", "messages": ' + MSG + ', "temperature": NaN}', None),
        ('{"model": "ttc", "messages": ' + MSG + "}", '{"lam": ' + DEEP + "}"),
        ('{"model": "ttc", "messages": ' + MSG + "}", '{"lam": 1e999}'),
        ('{"model": "ttc", "prompt": ' + DEEP + "}", None),
    ],
)
def test_the_proxy_answers_deep_or_huge_json_with_a_400_in_the_openai_format(bundle_dir, body, header):
    from fastapi.testclient import TestClient
    from policy_fixtures import MODELS

    from serve.proxy import create_app
    from serve.upstream import parse_upstreams

    app = create_app(load_bundle(bundle_dir), parse_upstreams([f"{m}=http://127.0.0.1:9/v1" for m in MODELS]))
    endpoint = "/v1/completions" if '"prompt"' in body else "/v1/chat/completions"
    headers = {"content-type": "application/json"} | ({"x-ttc": header} if header else {})
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post(endpoint, content=body.encode(), headers=headers)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"] and "\n" not in err["message"]


def test_no_module_parses_json_or_toml_outside_the_one_parser():
    import ast

    root = Path(__file__).resolve().parents[1]
    # round trips of this package's own output, never untrusted text
    own_output = {"train/export.py", "ttc/console.py", "ttc/stages.py", "train/price.py"}
    found = []
    for pkg in ("policy", "store", "collect", "serve", "train", "eval", "ttc"):
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel == "policy/jsonsafe.py" or rel in own_output:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                f = node.func if isinstance(node, ast.Call) else None
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                    if (f.value.id, f.attr) in {("json", "loads"), ("json", "load"), ("tomllib", "loads")}:
                        found.append(f"{rel}:{node.lineno}")
    assert found == [], f"parse untrusted JSON/TOML with policy.jsonsafe, not: {found}"
