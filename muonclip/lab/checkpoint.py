"""Atomic, checksummed training checkpoints: a corrupt or truncated file is refused clearly."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_bytes

__all__ = ["CheckpointError", "checkpoint_due", "save_checkpoint", "load_checkpoint"]

_MAGIC = b"MUONCLIP-CKPT-1\n"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or from another run."""


def checkpoint_due(step: int, every: int, end_step: int) -> bool:
    """Whether the step just finished (``step`` counts from 0) takes a periodic checkpoint.

    ``every = 0`` turns them off; the session's last step is left to the final checkpoint."""
    return bool(every) and (step + 1) % every == 0 and step + 1 != end_step


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Serialise ``state`` with torch.save, prefix a sha256 of the payload, write atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    return atomic_write_bytes(path, _MAGIC + digest + b"\n" + payload)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, verifying its checksum."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    data = path.read_bytes()
    header_len = len(_MAGIC) + 65
    if not data.startswith(_MAGIC) or len(data) < header_len:
        raise CheckpointError(f"{path} is not a muonclip checkpoint (bad header); it may be truncated or corrupt")
    digest = data[len(_MAGIC):header_len - 1].decode("ascii", "replace")
    payload = data[header_len:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"{path} is corrupt: its checksum does not match its contents")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as exc:  # a matching checksum makes this unlikely, but say what happened
        raise CheckpointError(f"{path} could not be deserialised: {exc}") from exc
