"""Atomic, checksummed training checkpoints that hold only tensors and plain data, so loading
one (someone else's run directory included) cannot run code; a corrupt, truncated or hostile
file is refused clearly.

Layout: a magic line naming the format version, the sha256 of the payload, then the payload
(a ``torch.save`` zip archive). The checksum guards against damage, not against an author:
what makes a file safe to read is that the payload is unpickled by ``torch.load(weights_only=True)``,
whose unpickler builds tensors, numbers, strings and containers and nothing that can call a
function. The writer checks the state first, so muonclip never writes what it would refuse.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_bytes

__all__ = ["CheckpointError", "FORMAT_VERSION", "checkpoint_due", "save_checkpoint", "load_checkpoint",
           "check_plain"]

FORMAT_VERSION = 2
_MAGIC = b"MUONCLIP-CKPT-%d\n" % FORMAT_VERSION
# Version 1 had the same layout but was read with a full unpickler. Its files are read with the
# same restricted loader as version 2 (every checkpoint muonclip wrote holds only plain data, so
# they load) and are rewritten as version 2 at a resumed run's next checkpoint; one holding
# anything else is refused like a version 2 file would be.
_MAGIC_V1 = b"MUONCLIP-CKPT-1\n"
_HEADER_LEN = len(_MAGIC) + 65  # magic, 64 hex digits, newline
_ZIP = b"PK\x03\x04"  # torch.save's archive; older serialisations are not accepted

# What a checkpoint's state may hold: all of it loads under weights_only=True.
_LEAVES = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt, unsafe to load or from another run."""


def checkpoint_due(step: int, every: int, end_step: int) -> bool:
    """Whether the step just finished (``step`` counts from 0) takes a periodic checkpoint.

    ``every = 0`` turns them off; the session's last step is left to the final checkpoint."""
    return bool(every) and (step + 1) % every == 0 and step + 1 != end_step


def check_plain(obj: Any, where: str = "state") -> None:
    """Raise TypeError naming the first value in ``obj`` that is not a tensor, a plain scalar
    (str, int, float, bool, None, dtype, device, Size) or a dict/list/tuple of those:
    anything else would not load back under ``weights_only=True``."""
    if isinstance(obj, torch.Size) or type(obj) in _LEAVES or isinstance(obj, torch.Tensor):
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise TypeError(f"checkpoint {where} has a key of type {type(key).__name__} ({key!r}); "
                                "only str and int keys load back safely")
            check_plain(value, f"{where}[{key!r}]")
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint {where} is a {type(obj).__module__}.{type(obj).__qualname__}: a checkpoint may "
                    "hold only tensors, str/int/float/bool/None, dtypes, devices and dicts/lists/tuples of them, "
                    "so that it loads with torch.load(weights_only=True); store it as one of those")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Check that ``state`` is plain (:func:`check_plain`), serialise it with torch.save,
    prefix the format's magic and a sha256 of the payload, write atomically."""
    if type(state) not in (dict, OrderedDict):
        raise TypeError(f"a checkpoint's state must be a dict, not {type(state).__name__}")
    check_plain(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    return atomic_write_bytes(path, _MAGIC + digest + b"\n" + payload)


def _refusal(path: Path, exc: Exception, old: bool) -> CheckpointError:
    """The error for a payload the restricted unpickler would not build: say what it held
    (torch's long message also suggests turning the protection off, which is not relayed)."""
    found = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: was not an allowed global|\. |\n|$)", str(exc))
    what = found.group(1).strip() if found else "an object"
    written = " (it is in the previous checkpoint format, MUONCLIP-CKPT-1)" if old else ""
    return CheckpointError(
        f"refusing to load {path}{written}: it holds something other than tensors and plain data ({what}), and "
        "unpickling it could run code. muonclip never writes such a checkpoint, so this file was made or altered "
        "by someone else: do not load it. Train the run again from the start instead (e.g. with --force)")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (this format or the previous one),
    verifying its checksum; it is unpickled with ``weights_only=True``, so it cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    data = path.read_bytes()
    old = data.startswith(_MAGIC_V1)
    known = data.startswith(_MAGIC) or old
    if not known or len(data) < _HEADER_LEN:
        if not known and data.startswith(b"MUONCLIP-CKPT-"):
            raise CheckpointError(f"{path} is a muonclip checkpoint of a format this version cannot read "
                                  f"(it reads MUONCLIP-CKPT-1 and -{FORMAT_VERSION}); it may be truncated, or "
                                  "written by a newer muonclip")
        raise CheckpointError(f"{path} is not a muonclip checkpoint (bad header); it may be truncated or corrupt")
    digest = data[len(_MAGIC):_HEADER_LEN - 1].decode("ascii", "replace")
    payload = data[_HEADER_LEN:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"{path} is corrupt: its checksum does not match its contents")
    if not payload.startswith(_ZIP):
        raise CheckpointError(f"{path} is not a muonclip checkpoint: its payload is not a torch.save archive")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc, old) from None
    except Exception as exc:  # a matching checksum makes this unlikely, but say what happened
        raise CheckpointError(f"{path} could not be deserialised: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a muonclip checkpoint: it holds a {type(state).__name__}, not a dict")
    return state
