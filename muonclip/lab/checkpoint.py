"""Atomic, checksummed training checkpoints that hold only tensors and plain data, so loading
one (someone else's run directory included) cannot run code; a corrupt, truncated or hostile
file is refused clearly.

Layout: a magic line naming the format version, the sha256 of the payload, then the payload
(a ``torch.save`` zip archive). The checksum guards against damage, not against an author:
what makes a file safe to read is that the payload is unpickled by ``torch.load(weights_only=True)``,
whose unpickler builds tensors, numbers, strings and containers and nothing that can call a
function. The writer checks the state first, so muonclip never writes what it would refuse.

That unpickler runs in Python, at a cost per pickled object, and each tensor pickles as a few
dozen objects. So format 2 packs the tensors held in dicts into one flat CPU tensor per (top-level
key, dtype) and records where each came from (``_pack``); the loader puts views of those flat
tensors back in place (on the CPU, where every checkpoint has always loaded). A checkpoint then
loads no slower than the free unpickler loaded format 1 (measured on the ``dragon`` preset: CHANGELOG).
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import math
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
# Version 1 had the same layout, an unpacked state as payload, and was read with a free unpickler.
# Its files are read with the same restricted loader as version 2 (every checkpoint muonclip
# wrote holds only plain data, so they load) and a resumed run's next checkpoint is version 2;
# one holding anything else is refused like a version 2 file would be.
_MAGIC_V1 = b"MUONCLIP-CKPT-1\n"
_HEADER_LEN = len(_MAGIC) + 65  # magic, 64 hex digits, newline
_ZIP = b"PK\x03\x04"  # torch.save's archive; older serialisations are not accepted
_BODY_KEYS = {"state", "tensors", "storage"}  # a version 2 payload

# What a checkpoint's state may hold: all of it loads under weights_only=True.
_LEAVES = (str, int, float, bool, type(None), torch.dtype, torch.device)
_DICTS = (dict, OrderedDict)


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
    if type(obj) in _LEAVES or isinstance(obj, (torch.Tensor, torch.Size)):
        return
    if type(obj) in _DICTS:
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise TypeError(f"checkpoint {where} has a key of type {type(key).__name__} ({key!r}); "
                                "only str and int keys load back safely")
            check_plain(value, f"{where}[{key!r}]")
        for name, value in vars(obj).items() if type(obj) is OrderedDict else ():  # a state_dict's _metadata
            check_plain(value, f"{where}.{name}")
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint {where} is a {type(obj).__module__}.{type(obj).__qualname__}: a checkpoint may "
                    "hold only tensors, str/int/float/bool/None, dtypes, devices and dicts/lists/tuples of them, "
                    "so that it loads with torch.load(weights_only=True); store it as one of those")


def _packable(value: Any) -> bool:
    """A plain, dense, contiguous tensor without autograd: a flat slice of it is the same tensor."""
    return (type(value) is torch.Tensor and value.layout == torch.strided and value.is_contiguous()
            and not value.requires_grad and not value.is_quantized)


def _pack(state: dict) -> dict:
    """``{"state", "tensors", "storage"}``: ``state`` with each packable tensor held in a dict
    replaced by None; for each, ``[*path, key, group, offset, shape]`` (all of them one JSON
    text: a single string costs the unpickler one step, a list of lists a dozen per tensor);
    and per group (top-level key, dtype) one flat CPU tensor of their elements: a GPU tensor is
    copied to the CPU alone, as torch.save would, so packing needs no second copy on the GPU.
    Tensors in lists or tuples stay as they are."""
    chunks: dict[str, list[torch.Tensor]] = {}
    filled: dict[str, int] = {}
    index: list[list] = []

    def walk(obj: dict, path: list) -> dict:
        out = copy.copy(obj)  # keeps a state_dict's OrderedDict type and _metadata
        for key, value in obj.items():
            if _packable(value):
                group = f"{path[0] if path else key}|{value.dtype}".replace("torch.", "")
                index.append([*path, key, group, filled.get(group, 0), list(value.shape)])
                chunks.setdefault(group, []).append(value.reshape(-1).cpu())
                filled[group] = filled.get(group, 0) + value.numel()
                out[key] = None
            elif type(value) in _DICTS:
                out[key] = walk(value, [*path, key])
        return out

    tree = walk(state, [])
    return {"state": tree, "tensors": json.dumps(index), "storage": {g: torch.cat(c) for g, c in chunks.items()}}


def _unpack(body: dict) -> dict:
    """Put each packed tensor back where :func:`_pack` found it (a view of its group's flat tensor);
    ValueError on an index that does not fit the state or the storage."""
    tree, storage = body["state"], body["storage"]
    for entry in json.loads(body["tensors"]):
        *path, key, group, offset, shape = entry
        node = tree
        for part in path:
            node = node[part]
        flat = storage[group]
        numel = math.prod(shape)
        if (not isinstance(flat, torch.Tensor) or flat.dim() != 1 or node[key] is not None or min(shape, default=0) < 0
                or not 0 <= offset <= flat.numel() - numel):
            raise ValueError(f"entry {entry!r} does not fit")
        node[key] = flat[offset:offset + numel].view(shape)
    return tree


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Check that ``state`` is plain (:func:`check_plain`), pack its tensors, serialise it with
    torch.save, prefix the format's magic and a sha256 of the payload, write atomically."""
    if type(state) not in _DICTS:
        raise TypeError(f"a checkpoint's state must be a dict, not {type(state).__name__}")
    check_plain(state)
    buf = io.BytesIO()
    torch.save(_pack(state), buf)
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
    with open(path, "rb") as fh:
        header = fh.read(_HEADER_LEN)
        payload = fh.read()
    old = header.startswith(_MAGIC_V1)
    known = header.startswith(_MAGIC) or old
    if not known or len(header) < _HEADER_LEN:
        if not known and header.startswith(b"MUONCLIP-CKPT-"):
            raise CheckpointError(f"{path} is a muonclip checkpoint of a format this version cannot read "
                                  f"(it reads MUONCLIP-CKPT-1 and -{FORMAT_VERSION}); it may be truncated, or "
                                  "written by a newer muonclip")
        raise CheckpointError(f"{path} is not a muonclip checkpoint (bad header); it may be truncated or corrupt")
    digest = header[len(_MAGIC):_HEADER_LEN - 1].decode("ascii", "replace")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"{path} is corrupt: its checksum does not match its contents")
    if not payload.startswith(_ZIP):
        raise CheckpointError(f"{path} is not a muonclip checkpoint: its payload is not a torch.save archive")
    try:
        body = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc, old) from None
    except Exception as exc:  # a matching checksum makes this unlikely, but say what happened
        raise CheckpointError(f"{path} could not be deserialised: {exc}") from exc
    if old:
        state = body
    elif isinstance(body, dict) and set(body) == _BODY_KEYS:
        try:
            state = _unpack(body)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path} is malformed: its tensor index does not match its contents ({exc})") \
                from exc
    else:
        raise CheckpointError(f"{path} is malformed: a format {FORMAT_VERSION} payload is a dict of "
                              f"{sorted(_BODY_KEYS)}")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a muonclip checkpoint: it holds a {type(state).__name__}, not a dict")
    return state
