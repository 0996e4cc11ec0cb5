"""`ttc export` never loses data: what is not ours is refused and kept, a failed export leaves nothing.

Also the export/allocate command line on bad arguments (exit 2, one line) and
signing with a key file. Hostile bundles themselves: tests/test_bundle_hostile.py.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from policy.bundle import load_bundle
from policy.errors import BundleError, UsageError
from train.export import zip_bundle
from ttc.bundle_stages import export_stage


def _members(bundle: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(bundle.iterdir())]


def _zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _tree_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_refuses_a_non_empty_folder_that_is_not_a_bundle_and_keeps_it(bundle_dir, tmp_path):
    out = tmp_path / "P"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("x")
    (out / "sub" / "data.csv").write_text("1,2")
    before = _tree_of(out)
    for force in (False, True):
        with pytest.raises(UsageError, match="not a policy bundle; it is kept"):
            export_stage(str(bundle_dir), out, force=force)
        assert _tree_of(out) == before


def test_export_replaces_an_earlier_bundle_only_with_force(bundle_dir, tmp_path):
    out = tmp_path / "P"
    export_stage(str(bundle_dir), out)
    with pytest.raises(UsageError, match="--force"):
        export_stage(str(bundle_dir), out, lam=0.01)
    assert load_bundle(out).rule.lam == load_bundle(bundle_dir).rule.lam
    r = export_stage(str(bundle_dir), out, lam=0.01, force=True)
    assert load_bundle(out).rule.lam == load_bundle(r["zip"]).rule.lam == 0.01
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P", "P.zip"]


@pytest.mark.parametrize("where", ["same", "inside", "holds"])
def test_export_never_writes_over_or_around_its_source(bundle_dir, tmp_path, where):
    src = tmp_path / "root" / "src"
    shutil.copytree(bundle_dir, src)
    before = _tree_of(tmp_path / "root")
    out = {"same": src, "inside": src / "new", "holds": src.parent}[where]
    with pytest.raises(UsageError, match="source"):
        export_stage(str(src), out, force=True)
    assert _tree_of(tmp_path / "root") == before


def test_export_from_a_zip_does_not_overwrite_that_zip(bundle_dir, tmp_path):
    src = zip_bundle(shutil.copytree(bundle_dir, tmp_path / "P"), tmp_path / "P.zip")
    shutil.rmtree(tmp_path / "P")
    data = src.read_bytes()
    with pytest.raises(UsageError, match="overwrite the source"):
        export_stage(str(src), tmp_path / "P", force=True)
    assert src.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["P.zip"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lam": float("nan")}, "--lam must be a finite"),
        ({"budget_j": -1.0}, "--budget-j must be .* got -1.0"),
        ({"mode": "bogus"}, "unknown --mode 'bogus'"),
        ({"mode": "budget"}, "budget mode needs budget_j"),
    ],
)
def test_a_refused_export_leaves_nothing_behind(bundle_dir, tmp_path, kwargs, match):
    out = tmp_path / "new" / "deeper" / "P"
    with pytest.raises(UsageError, match=match):
        export_stage(str(bundle_dir), out, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_an_export_from_a_zip_of_members_outside_the_root_leaves_nothing(bundle_dir, tmp_path):
    z = _zip(tmp_path / "src.zip", [(f"x/{n}", b) for n, b in _members(bundle_dir)])
    with pytest.raises(BundleError, match="archive root"):
        export_stage(str(z), tmp_path / "P")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.zip"]


def test_export_writes_exactly_the_listed_bundle_files(bundle_copy, tmp_path):
    r = export_stage(str(bundle_copy), tmp_path / "P")
    listed = sorted([*json.loads((bundle_copy / "policy.json").read_text())["files"], "policy.json"])
    assert sorted(p.name for p in Path(r["bundle"]).iterdir()) == listed
    with zipfile.ZipFile(r["zip"]) as zf:
        assert sorted(zf.namelist()) == listed


@pytest.mark.parametrize("extra", ["script", "link"])
def test_a_bundle_folder_with_extra_entries_is_refused_like_a_zip(bundle_copy, tmp_path, extra):
    if extra == "script":
        (bundle_copy / "evil.sh").write_text("#!/bin/sh\n")
    else:
        (bundle_copy / "evil").symlink_to("/etc")
    with pytest.raises(BundleError, match="not bundle files"):
        export_stage(str(bundle_copy), tmp_path / "P")
    with pytest.raises(BundleError, match="not bundle files"):
        load_bundle(bundle_copy)
    assert not (tmp_path / "P").exists()


@pytest.mark.parametrize("uri", ["runs:/0123456789abcdef/bundle", "models:/missing@champion"])
def test_an_mlflow_source_that_does_not_exist_is_a_one_line_usage_error(bundle_dir, tmp_path, uri):
    with pytest.raises(UsageError, match="cannot fetch") as err:
        export_stage(uri, tmp_path / "P", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "P").exists()


@pytest.mark.parametrize(
    "extra", [["--lam", "nan"], ["--budget-j", "-1"], ["--mode", "bogus"], ["--key-file", "{tmp}"]]
)
def test_the_cli_turns_a_bad_export_into_exit_2_one_line_and_nothing_written(bundle_dir, tmp_path, extra):
    from typer.testing import CliRunner

    from ttc.cli import app

    out = tmp_path / "P"
    args = ["export", "--from", str(bundle_dir), "--out", str(out), *[a.format(tmp=tmp_path) for a in extra]]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "Traceback" not in r.output, r.output
    assert not out.exists() and not out.with_name("P.zip").exists()


def test_the_cli_signs_with_a_key_file_and_allocate_requires_it(bundle_dir, tmp_path):
    from typer.testing import CliRunner

    from ttc.cli import app

    (tmp_path / "key").write_text("s3cret\n")
    (tmp_path / "other").write_text("another\n")
    (tmp_path / "q.jsonl").write_text('{"question": "What is 2 + 2?", "task": "gsm8k"}\n')
    run = CliRunner().invoke
    assert (
        run(
            app,
            ["export", "--from", str(bundle_dir), "--out", str(tmp_path / "P"), "--key-file", str(tmp_path / "key")],
        ).exit_code
        == 0
    )
    alloc = ["allocate", "--bundle", str(tmp_path / "P.zip"), "--input", str(tmp_path / "q.jsonl")]
    alloc += ["--output", str(tmp_path / "d.jsonl")]
    assert run(app, [*alloc, "--key-file", str(tmp_path / "key")]).exit_code == 0
    r = run(app, [*alloc, "--key-file", str(tmp_path / "other")])
    assert r.exit_code == 2 and "signature" in r.output


def test_an_export_failing_while_writing_leaves_nothing_and_keeps_the_old_bundle(bundle_dir, tmp_path, monkeypatch):
    import train.export

    out = tmp_path / "new" / "P"
    monkeypatch.setattr(train.export, "zip_bundle", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        export_stage(str(bundle_dir), out)
    assert list(tmp_path.iterdir()) == []  # the folders made for it are gone too
    monkeypatch.undo()
    export_stage(str(bundle_dir), out)
    before = _tree_of(out.parent)
    monkeypatch.setattr(train.export, "zip_bundle", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        export_stage(str(bundle_dir), out, lam=0.5, force=True)
    assert _tree_of(out.parent) == before


def test_export_loads_the_new_bundle_once_and_the_source_once(bundle_dir, tmp_path, monkeypatch):
    """Publish, zip and the final check share one load of the new bundle (the zip: the folder's bytes)."""
    import policy.bundle
    import train.export

    loaded: list[str] = []
    real = policy.bundle.load_bundle

    def counting(path, *a, **kw):
        loaded.append(Path(path).name)
        return real(path, *a, **kw)

    monkeypatch.setattr(policy.bundle, "load_bundle", counting)
    monkeypatch.setattr(train.export, "load_bundle", counting)
    r = export_stage(str(bundle_dir), tmp_path / "P", lam=0.01)
    assert loaded == [bundle_dir.name, "P.zip"]
    assert load_bundle(r["bundle"]).rule.lam == load_bundle(r["zip"]).rule.lam == 0.01
