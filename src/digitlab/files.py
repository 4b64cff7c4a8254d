"""Atomic writes: an output is either the old complete one or the new complete one, readable
as any file the user makes (the umask's permissions, not a temporary file's 0600)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from digitlab.errors import write_error


def remove_leftovers(path: Path) -> None:
    """Remove what an earlier writer of `path` killed with SIGKILL left beside it
    (.<name>.<random>.tmp / .old files and folders)."""
    for pattern in (f".{path.name}.*.tmp", f".{path.name}.*.old"):
        for leftover in path.parent.glob(pattern):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def umask() -> int:
    """This process's umask, read without changing it (Linux), else by setting it back."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _named_after(path: Path, tmp: Path) -> Iterator[None]:
    """An OSError writing `tmp` (or a file in it) becomes one line naming `path`, the output
    the user knows; other OSErrors (reading an input) pass through unchanged."""
    try:
        yield
    except OSError as exc:
        name = str(exc.filename) if exc.filename is not None else None
        if name is None or name == str(tmp) or name.startswith(f"{tmp}{os.sep}"):
            shown = path / os.path.relpath(name, tmp) if name and name != str(tmp) else path
            raise write_error(shown, exc) from None
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`. A write that
    fails (no space, a file-size limit) is one DigitlabError naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _named_after(path, tmp_path):
            tmp_path.chmod(0o666 & ~umask())
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, indented, with a trailing newline."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; on success swap it in for `path`.

    Should the block fail, the temporary directory is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        with _named_after(path, tmp):
            tmp.chmod(0o777 & ~umask())
            yield tmp
            replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(new: Path, dest: Path) -> None:
    """Put directory `new` at `dest`, removing what was there only once `new` is in place."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
        os.replace(dest, old / dest.name)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
