"""The files of a bundle, read safely from a folder or a .zip: exact names, size caps, no links.

A bundle is untrusted input. From a folder only the known file names are read,
each must be a regular file (a symlink is refused, so nothing outside the
folder is ever read; a FIFO or device is refused, so a read cannot hang), and
its size is checked before and while reading. From a zip exactly the known
names at the archive root are accepted: a member in a subfolder, a duplicate
name, a link, or any other member is refused, and each member's uncompressed
size is capped from its header and again while it is read in chunks, so a
small archive cannot inflate into gigabytes; so is the bundle's total. A
folder holding anything besides bundle files (a link, a script) is refused
like a zip with an extra member. Standard library only.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

from policy.errors import BundleError

MANIFEST = "policy.json"
TREE_FILES = ("success.trees.json", "energy.trees.json")
LIGHTGBM_FILES = ("success.txt", "energy.txt")
ONNX_FILES = ("success.onnx", "energy.onnx")
PARITY = "parity.json"
BUNDLE_FILES = (MANIFEST, *TREE_FILES, *LIGHTGBM_FILES, *ONNX_FILES, PARITY)
PROBE = "probe.json"  # "text+probe" policies only: the probe's reduction (policy/probe.py)
STAGE2 = "stage2.json"  # optional: the look-then-decide rule (policy/two_stage.py)
TASKS = "tasks.json"  # optional: known task columns, the unknown-task rule, adapted tasks (policy/tasks.py)
FRONTIER = "frontier.json"  # optional: the training price frontier and default price (policy/frontier.py)
PROMPTS = "prompts.json"  # optional: the prompt each model was trained on, per task (policy/prompts.py)
#: every name a bundle may hold: its files, the optional probe reduction, stage-2 rule, task table, frontier, prompts
KNOWN_FILES = (*BUNDLE_FILES, PROBE, STAGE2, TASKS, FRONTIER, PROMPTS)
#: files every bundle must hold besides policy.json (the model files of the optional backends may be absent)
REQUIRED_FILES = (*TREE_FILES, PARITY)
_MIB = 1 << 20
_BIG_FILES = (*TREE_FILES, *LIGHTGBM_FILES, *ONNX_FILES, PROBE, STAGE2)
MAX_BYTES = {MANIFEST: _MIB, PARITY: _MIB, TASKS: 16 * _MIB, FRONTIER: _MIB, PROMPTS: 4 * _MIB}
MAX_BYTES |= {name: 64 * _MIB for name in _BIG_FILES}
#: all files of one bundle together (a bundle of ours is a few MiB; each file alone is capped above)
MAX_TOTAL_BYTES = 128 * _MIB
_CHUNK = _MIB


def _read_capped(f: BinaryIO, name: str, where: str, budget: int = MAX_TOTAL_BYTES) -> bytes:
    """At most MAX_BYTES[name] bytes of `f`, and at most `budget` (what the bundle's total cap leaves)."""
    cap = min(MAX_BYTES[name], budget)
    parts, total = [], 0
    while chunk := f.read(min(_CHUNK, cap + 1 - total)):
        parts.append(chunk)
        total += len(chunk)
        if total > cap:
            if cap < MAX_BYTES[name]:
                raise _total_error(where)
            raise BundleError(f"{name} in {where} is larger than {cap >> 20} MiB; it is not a bundle file of ours")
    return b"".join(parts)


def _total_error(where: str) -> BundleError:
    return BundleError(f"{where} unpacks to more than {MAX_TOTAL_BYTES >> 20} MiB in all; it is not a bundle of ours")


def read_blobs(path: Path) -> dict[str, bytes]:
    """Every bundle file present, by name, from a folder or a zip; `BundleError` for anything unsafe."""
    if path.is_dir():
        blobs = _read_folder(path)
    elif path.is_file() and zipfile.is_zipfile(path):
        blobs = _read_zip(path)
    elif path.exists():
        raise BundleError(f"{path} is neither a bundle folder nor a .zip of one")
    else:
        raise BundleError(f"no policy bundle at {path}; export one with `ttc export` or train.export.write_bundle")
    if MANIFEST not in blobs:
        raise BundleError(f"{path} holds no {MANIFEST}; it is not a policy bundle")
    return blobs


def _read_folder(path: Path) -> dict[str, bytes]:
    root = path.resolve()
    # the same rule as a zip: only bundle files, so a link (`evil -> /etc`) or a script beside them is refused
    try:
        extra = sorted(e.name for e in os.scandir(root) if e.name not in KNOWN_FILES)
    except OSError as exc:
        raise BundleError(f"cannot list the bundle folder {path}: {exc.strerror}") from exc
    if extra:
        raise BundleError(
            f"{path} holds {extra[:5]}, which are not bundle files; a bundle folder holds only "
            f"{', '.join(KNOWN_FILES)} (re-export it with `ttc export`)"
        )
    blobs: dict[str, bytes] = {}
    used = 0
    for name in KNOWN_FILES:
        p = root / name
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise BundleError(f"{name} in {path} is a symbolic link; a bundle holds plain files only, copy the file in")
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{name} in {path} is not a regular file")
        if st.st_size > MAX_BYTES[name]:
            raise BundleError(f"{name} in {path} is larger than {MAX_BYTES[name] >> 20} MiB; it is not ours")
        # O_NOFOLLOW and O_NONBLOCK: a link or a FIFO swapped in after the check above is still refused,
        # and never blocks the open; fstat then checks what was actually opened
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise BundleError(f"cannot open {name} in {path}: {exc.strerror}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BundleError(f"{name} in {path} is not a regular file")
        with os.fdopen(fd, "rb") as f:
            blobs[name] = _read_capped(f, name, str(path), MAX_TOTAL_BYTES - used)
        used += len(blobs[name])
    return blobs


def _read_zip(path: Path) -> dict[str, bytes]:
    blobs: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_member(info, blobs, path)
                # placeholder so a second member of this name is seen as a duplicate before any read
                blobs[info.filename] = b""
            if sum(info.file_size for info in infos) > MAX_TOTAL_BYTES:  # the headers' sizes, before any read
                raise _total_error(str(path))
            used = 0
            for info in infos:
                # members are read into memory by exact name, never extracted: no path in the archive is used
                with zf.open(info) as f:
                    blobs[info.filename] = _read_capped(f, info.filename, str(path), MAX_TOTAL_BYTES - used)
                used += len(blobs[info.filename])
    # OSError: e.g. a zip cut at its start, whose offsets point before the file (EINVAL on seek)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError, OSError) as exc:
        raise BundleError(f"{path} is a damaged zip ({type(exc).__name__}: {exc}); re-export the bundle") from exc
    return blobs


def _check_member(info: zipfile.ZipInfo, seen: dict[str, bytes], path: Path) -> None:
    name = info.filename
    if name not in KNOWN_FILES:
        raise BundleError(
            f"{path} holds {name!r}, which is not a bundle file at the archive root; a bundle zip holds only "
            f"{', '.join(KNOWN_FILES)} (re-pack it with `ttc export`)"
        )
    if name in seen:
        raise BundleError(f"{path} holds {name} twice; a bundle zip holds each file once")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise BundleError(f"{name} in {path} is a symbolic link; a bundle holds plain files only")
    if info.file_size > MAX_BYTES[name]:
        cap = MAX_BYTES[name] >> 20
        raise BundleError(f"{name} in {path} unpacks to {info.file_size} bytes, over the {cap} MiB cap")


def is_bundle_folder(path: Path) -> bool:
    """True for a folder that holds policy.json and nothing but plain bundle files (one of ours)."""
    if path.is_symlink() or not path.is_dir():
        return False
    entries = list(path.iterdir())
    return (path / MANIFEST).is_file() and all(
        e.name in KNOWN_FILES and not e.is_symlink() and e.is_file() for e in entries
    )


def is_bundle_zip(path: Path) -> bool:
    """True for a zip whose members are all bundle file names at the root (one of ours)."""
    if path.is_symlink() or not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return False
    return MANIFEST in names and all(n in KNOWN_FILES for n in names)
