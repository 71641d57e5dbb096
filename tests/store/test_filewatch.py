"""inotify on the store's directory says what the feed must look at: a written journal (a
commit may have landed), the database file itself, or nothing (another file); and says when
the watch is no use any more (the directory went away)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipzone.store import filewatch
from sipzone.store.filewatch import FileWatch, Stir


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, FileWatch]]:
    directory = tmp_path / "store"
    directory.mkdir()
    path = directory / "sipzone.db"
    path.write_bytes(b"x" * 100)
    watch = filewatch.watch(str(path))
    assert watch is not None, "inotify is available on Linux"
    try:
        yield path, watch
    finally:
        watch.close()


def test_nothing_happened_reads_nothing(watched: tuple[Path, FileWatch]) -> None:
    _, watch = watched
    assert watch.read() is Stir.NOTHING


def test_another_file_in_the_directory_is_ignored(watched: tuple[Path, FileWatch]) -> None:
    path, watch = watched
    (path.parent / "sipzone.db.copy").write_bytes(b"snapshot")
    (path.parent / "other-wal").write_bytes(b"not ours")
    assert watch.read() is Stir.NOTHING


@pytest.mark.parametrize("journal", ["-wal", "-journal"])
def test_a_written_journal_is_data(watched: tuple[Path, FileWatch], journal: str) -> None:
    path, watch = watched
    with open(f"{path}{journal}", "ab") as f:
        f.write(b"frame")
    assert watch.read() is Stir.DATA
    assert watch.read() is Stir.NOTHING  # drained


def test_the_file_written_replaced_or_deleted_is_file(
    watched: tuple[Path, FileWatch], tmp_path: Path
) -> None:
    path, watch = watched
    with open(f"{path}-wal", "ab") as f:
        f.write(b"frame")
    with open(path, "r+b") as f:
        f.truncate(10)
    assert watch.read() is Stir.FILE  # the stronger of the two
    other = path.parent / "backup.db"
    other.write_bytes(b"y")
    os.rename(other, path)
    assert watch.read() is Stir.FILE
    path.unlink()
    assert watch.read() is Stir.FILE


def test_a_removed_directory_loses_the_watch(watched: tuple[Path, FileWatch]) -> None:
    path, watch = watched
    shutil.rmtree(path.parent)
    assert watch.read() is Stir.LOST


def test_a_directory_that_cannot_be_watched_gives_none(tmp_path: Path) -> None:
    assert filewatch.watch(str(tmp_path / "missing" / "sipzone.db")) is None


def test_a_store_behind_a_symbolic_link_is_watched_where_its_journals_are(tmp_path: Path) -> None:
    """SQLite keeps the journals beside the file a link points to; the link itself may be
    repointed where it is."""
    data, etc = tmp_path / "data", tmp_path / "etc"
    data.mkdir()
    etc.mkdir()
    real = data / "store.db"
    real.write_bytes(b"x")
    link = etc / "sipzone.db"
    link.symlink_to(real)
    watch = filewatch.watch(str(link))
    assert watch is not None
    try:
        (etc / "sipzone.db-wal").write_bytes(b"not the store's")  # beside the link: nothing
        assert watch.read() is Stir.NOTHING
        with open(f"{real}-wal", "ab") as f:
            f.write(b"frame")
        assert watch.read() is Stir.DATA
        other = data / "other.db"
        other.write_bytes(b"y")
        (etc / "new").symlink_to(other)
        os.rename(etc / "new", link)  # the link repointed
        assert watch.read() is Stir.FILE
    finally:
        watch.close()
