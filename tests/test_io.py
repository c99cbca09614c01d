"""File helpers: atomic writes leave the old content on failure, the exclusive lock, removing named artifacts."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from muonclip.io import LockedError, atomic_write_text, exclusive_lock, remove_named


def test_atomic_write_keeps_the_old_content_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind


def test_lock_refuses_a_live_holder_and_is_released(tmp_path):
    lock = tmp_path / ".lock"
    with exclusive_lock(lock, "the thing"):
        assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}"
        with pytest.raises(LockedError, match=f"the thing is being written by process {os.getpid()}"):
            with exclusive_lock(lock, "the thing"):
                pass
        assert lock.exists()  # the refused attempt did not remove the holder's lock
    assert not lock.exists()


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = tmp_path / ".lock"
    lock.write_text(f"{gone.pid} {socket.gethostname()}")
    with exclusive_lock(lock, "the thing"):
        assert lock.read_text().startswith(f"{os.getpid()} ")
    lock.write_text(f"{gone.pid} another-host")  # liveness on another host cannot be checked
    with pytest.raises(LockedError, match="another-host"):
        with exclusive_lock(lock, "the thing"):
            pass


def test_remove_named_removes_only_what_it_names(tmp_path):
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events").write_text("x")
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    (tmp_path / "cache").symlink_to(outside, target_is_directory=True)
    remove_named(tmp_path, ("tb", "summary.json", "cache", "absent.pt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert (outside / "keep").read_text() == "keep"  # a symlinked folder is unlinked, not emptied
