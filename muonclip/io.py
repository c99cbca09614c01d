"""Atomic file writes (a temp file in the target's directory, fsync, then ``os.replace``) and
an exclusive lock file for a directory one process writes at a time.

A reader never sees a half-written file: it sees either the old content or the new
content. Parent directories are created when missing.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any, Union

__all__ = ["LockedError", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "exclusive_lock",
           "read_json", "remove_named"]

PathLike = Union[str, "os.PathLike[str]"]


class LockedError(RuntimeError):
    """Another live process holds the lock file."""


def _open_temp(directory: Path, name: str) -> tuple[int, Path]:
    """Create a fresh temp file next to the target. Mode 0o666 minus the umask (applied
    by the OS), i.e. the permissions a plain ``open(path, "w")`` would give."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temp file in {directory}")  # pragma: no cover


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); silently skipped where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    The temp file lives in the same directory, so ``os.replace`` is a rename within one
    file system; on any error it is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_temp(directory, path.name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
    return path


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8 by default) and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Serialise ``obj`` as JSON (trailing newline) and write it atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


def read_json(path: PathLike, error: type[Exception], what: str, hint: str = "") -> Any:
    """Parse a UTF-8 JSON file, raising ``error`` with a message naming ``what`` and the path
    when it is missing (then ``hint`` is appended), unreadable or not JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"no {what} at {path} (file not found){hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} file {path}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} file {path} is not valid JSON: {exc}") from exc


def _holder(path: Path) -> tuple[int, str] | None:
    """``(pid, host)`` written in a lock file, or None when it cannot be read."""
    try:
        pid, host = path.read_text(encoding="utf-8").split(maxsplit=1)
        return int(pid), host.strip()
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would signal the process there, not probe it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def exclusive_lock(path: PathLike, what: str):
    """Hold the lock file ``path`` for the ``with`` block; ``what`` names the locked thing in errors.

    The file is created exclusively and holds this process's pid and host. If another live
    process holds it (or one on another host: its liveness cannot be checked), raise
    :class:`LockedError` naming it; a lock left by a process of this host that has died
    (a killed run) is taken over. The file is removed on exit.
    """
    path = Path(path)
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and holder[1] == socket.gethostname() and not _alive(holder[0]):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            who = f"process {holder[0]} on {holder[1]}" if holder else "another process"
            raise LockedError(f"{what} is being written by {who} (lock file {path}); wait for it to finish, "
                              "or remove the lock file if that process is gone") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(me)
        break
    else:  # pragma: no cover - three stale takeovers lost in a row
        raise LockedError(f"could not take the lock file {path} for {what}")
    try:
        yield path
    finally:
        if _holder(path) == (os.getpid(), socket.gethostname()):
            path.unlink(missing_ok=True)


def remove_named(directory: PathLike, names: tuple[str, ...]) -> None:
    """Remove the files and folders called ``names`` in ``directory`` (absent ones are fine);
    nothing else there is touched."""
    for name in names:
        path = Path(directory) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
