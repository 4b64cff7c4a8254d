"""Atomic outputs: a failed write leaves the old output; a killed writer's leftovers go; the
outputs are as readable as any file the user makes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from digitlab.files import atomic_dir, atomic_path, umask, write_text


def test_a_failed_write_keeps_the_old_output_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    write_text(out, "old")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json"
    ]


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_one(tmp_path: Path) -> None:
    """SIGKILL skips clean-up: .<name>.<random>.tmp files and folders (and .old folders)
    stay until the next write of the same output removes them."""
    (tmp_path / ".figures.abc123.tmp").mkdir()
    (tmp_path / ".figures.abc123.tmp" / "confusion.png").write_bytes(b"half")
    (tmp_path / ".figures.def456.old").mkdir()
    (tmp_path / ".curves.png.xyz.tmp").write_bytes(b"half")
    (tmp_path / ".other.png.xyz.tmp").write_bytes(b"another output's: kept")
    with atomic_dir(tmp_path / "figures") as folder:
        (folder / "confusion.png").write_bytes(b"whole")
    with atomic_path(tmp_path / "curves.png") as tmp:
        tmp.write_bytes(b"whole")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".other.png.xyz.tmp", "curves.png", "figures"]
    assert (tmp_path / "figures" / "confusion.png").read_bytes() == b"whole"


def test_outputs_have_the_umask_s_permissions_not_a_temporary_file_s(tmp_path: Path) -> None:
    """mkstemp makes 0600 files and mkdtemp 0700 folders: renamed into place, another user of
    a shared machine could not read them. Outputs get what any file the user makes gets."""
    old = os.umask(0o022)
    try:
        assert umask() == 0o022
        write_text(tmp_path / "metrics.json", "{}")
        with atomic_dir(tmp_path / "figures") as folder:
            (folder / "a.png").write_bytes(b"png")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "figures").stat().st_mode) == 0o755
