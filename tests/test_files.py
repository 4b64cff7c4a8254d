"""Atomic outputs: a failed write leaves the old output; a killed writer's leftovers go."""

from __future__ import annotations

from pathlib import Path

import pytest

from digitlab.files import atomic_dir, atomic_path, write_text


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
