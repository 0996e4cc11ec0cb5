"""Output paths: the one check every command runs on where it will write, before any work.

A command writes either one file (`ttc allocate --output`) or one folder
(`train/eval/export --out`). Either path must be a regular file or folder of
its kind, or a new name in a place where something can be created. Refused,
before any model loads or any data is read:

- a name that is no new file or folder: `''`, `.`, `..`, `/`;
- a symbolic link (writing would follow it somewhere else), a FIFO, a device
  node or a socket (a "write" there replaces a system file or blocks);
- a path under a regular file (`notes.txt/out`), or in a place where nothing
  can be created (a read-only or virtual file system such as `/proc`),
  found by creating and removing a probe file in the nearest existing folder.

Folders that already exist are replaced only by the stage that wrote them
(`check_replaceable_folder`: one of ours, and only with `force`), through a
temporary sibling renamed into place (`staged_folder`), so a failed run leaves
the old output whole and nothing half-written. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from policy.errors import UsageError


def _named(path: str | Path, option: str) -> Path:
    raw = str(path)
    p = Path(raw)
    if not raw.strip() or p.name in ("", ".", ".."):  # '', '.', '..', '/', 'a/..': no name of their own
        raise UsageError(f"{option} {raw!r} names no new file or folder; give a path like runs/mine")
    return p


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file or folder"


def _check_place(p: Path, option: str) -> None:
    """The nearest existing ancestor of `p` is a folder in which a file can be created."""
    parent = p.absolute().parent
    while not os.path.lexists(parent):
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {str(p)!r} lies under {str(parent)!r}, which is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ttc-write-check-", dir=parent)
    except OSError as exc:
        raise UsageError(
            f"{option} {str(p)!r}: nothing can be created in {str(parent)!r} ({exc.strerror}); choose a writable place"
        ) from exc
    os.close(fd)
    os.unlink(probe)


def _lstat(p: Path, option: str) -> os.stat_result | None:
    try:
        return os.lstat(p)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _check_place(p, option)  # ENOTDIR: names the file the path lies under
        raise UsageError(f"{option} {str(p)!r} cannot be written: {exc.strerror}") from exc


def check_output_file(path: str | Path, option: str = "--output") -> Path:
    """`path` as a file a command may write (replace): a regular file, or a new name in a creatable place."""
    return _check_output(path, option, folder=False)


def check_output_folder(path: str | Path, option: str = "--out") -> Path:
    """`path` as a folder a command may create or fill: an existing folder (not a link), or a new name."""
    return _check_output(path, option, folder=True)


def _check_output(path: str | Path, option: str, folder: bool) -> Path:
    """`path` as an output of its kind (a folder, or a regular file): that kind, not a link, or a new name."""
    p = _named(path, option)
    st = _lstat(p, option)
    if st is not None:
        want = "a folder" if folder else "a regular file"
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"{option} {str(p)!r} is a symbolic link; give {want} or a new path")
        if folder and stat.S_ISREG(st.st_mode):
            raise UsageError(f"{option} {str(p)!r} is a file; give a folder for the output")
        if not folder and stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{option} {str(p)!r} is a folder; give a file path (e.g. {p}/decisions.jsonl)")
        if not (stat.S_ISDIR if folder else stat.S_ISREG)(st.st_mode):
            raise UsageError(f"{option} {str(p)!r} is {_kind(st.st_mode)}; give {want} or a new path")
    _check_place(p, option)
    return p


def check_replaceable_folder(
    path: str | Path, is_ours: Callable[[Path], bool], force: bool, option: str, what: str
) -> Path:
    """`check_output_folder`, and a non-empty folder only when `is_ours` says it holds an earlier `what`
    and `force` is given; anything else is kept and refused."""
    p = check_output_folder(path, option)
    if p.is_dir() and any(p.iterdir()):
        if not is_ours(p):
            raise UsageError(
                f"{option} {str(p)!r} is a non-empty folder that is not {what}; it is kept, choose another path"
            )
        if not force:
            raise UsageError(f"{option} {str(p)!r} already holds {what}; pass --force to replace it")
    return p


@contextlib.contextmanager
def parents_made_for(out: Path) -> Iterator[None]:
    """`out`'s missing parent folders made; if the block fails, those made here are removed again
    (deepest first, and only while empty: folders made for this output only)."""
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for p in created:
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


@contextlib.contextmanager
def staged_folder(out: Path, recheck: Callable[[], object] | None = None) -> Iterator[Path]:
    """A temporary sibling of `out` to write into; renamed to `out` on success, removed on failure.

    An old `out` is moved aside first and deleted only after the rename; `recheck` (e.g. the
    destination check again) runs just before the swap, since another process may have written there.
    """
    with parents_made_for(out):
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        old = None
        try:
            yield tmp
            if recheck is not None:
                recheck()
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
                os.replace(out, old)
            try:
                os.replace(tmp, out)
            except OSError:
                if old is not None:
                    os.replace(old, out)
                    old = None
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
