"""Corpora and batches for the lab: deterministic, offline, resumable.

* :func:`default_corpus` -- an embedded corpus built from text that ships with every
  CPython: the pydoc topic pages plus the docstrings of the pure-Python standard
  library, read from source with :mod:`ast` (nothing is imported).
* :func:`load_text` -- a UTF-8 file, or a folder of text files.
* :func:`load_hf_dataset` -- a Hugging Face dataset (optional ``datasets`` package).
* :class:`TokenDataset` -- tokens in one 1-D tensor, a train/validation split and
  batch samplers. ``batch_at(step)`` derives each step's batch from ``(seed, step)``
  alone, so a resumed run sees exactly the batches an uninterrupted one would.

Kept as one module (~490 lines) because the corpus builders and the dataset share the
determinism contract (sources in a fixed order, seeds derived from names); split it along
corpus / dataset if either grows.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.machinery
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

__all__ = [
    "DataError",
    "DOC_SEPARATOR",
    "TEXT_EXTENSIONS",
    "STDLIB_EXCLUDE",
    "default_corpus",
    "default_corpus_sources",
    "load_text",
    "load_hf_dataset",
    "load_corpus",
    "TokenDataset",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Between documents (topics, docstrings, files of a folder).
DOC_SEPARATOR = "\n\n"

#: File name endings :func:`load_text` reads from a folder (lower-cased comparison).
TEXT_EXTENSIONS = frozenset(
    {".txt", ".text", ".md", ".markdown", ".rst", ".org", ".tex", ".py", ".json", ".jsonl",
     ".csv", ".tsv", ".html", ".htm", ".xml", ".yaml", ".yml", ".toml", ".ini", ".cfg"}
)

#: Standard-library top-level names never read for the default corpus: side effects if
#: imported, GUI/demo code, test suites, or parts some distributions ship separately.
STDLIB_EXCLUDE = frozenset(
    {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test",
     "lib2to3", "ensurepip", "venv", "distutils", "pydoc_data", "msilib",
     "_aix_support", "_osx_support", "_bootsubprocess"}
)

# Sub-directories of stdlib packages that hold tests or data rather than library code.
_SKIP_SUBDIRS = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages"})


class DataError(ValueError):
    """A corpus cannot be loaded or a dataset cannot serve what was asked."""


# --------------------------------------------------------------------------- default corpus


def _stdlib_dir() -> str:
    path = sysconfig.get_path("stdlib")
    if path and os.path.isdir(path):
        return path
    return os.path.dirname(os.__file__)  # pragma: no cover - unusual installs


def _stdlib_module_names() -> list[str]:
    names = getattr(sys, "stdlib_module_names", ())  # Python >= 3.10
    return sorted(
        n for n in names
        if n not in STDLIB_EXCLUDE and not n.startswith("__") and not n.startswith("_test")
    )


def _stdlib_source_files(name: str, stdlib: str) -> list[tuple[str, str]]:
    """(dotted module name, file path) of the pure-Python sources of one top-level module.

    Looked up only inside the stdlib directory (a ``random.py`` in the working directory
    cannot shadow it) and without importing anything. Built-in, frozen-only and
    extension modules yield nothing.
    """
    try:
        spec = importlib.machinery.PathFinder.find_spec(name, [stdlib])
    except (ImportError, ValueError):  # pragma: no cover - defensive
        return []
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return []
    if not spec.submodule_search_locations:
        return [(name, spec.origin)]
    root = os.path.dirname(spec.origin)
    out: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_SUBDIRS)
        rel = os.path.relpath(dirpath, root)
        prefix = name if rel == "." else name + "." + rel.replace(os.sep, ".")
        for fname in sorted(filenames):
            if not fname.endswith(".py"):
                continue
            stem = fname[:-3]
            dotted = prefix if stem == "__init__" else f"{prefix}.{stem}"
            out.append((dotted, os.path.join(dirpath, fname)))
    return out


def _docstrings(module: str, source: bytes) -> list[tuple[str, str]]:
    """(qualified name, cleaned docstring) for the module, its classes and functions,
    in source order."""
    try:
        tree = ast.parse(source)  # honours PEP 263 coding cookies
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return []
    out: list[tuple[str, str]] = []

    def visit(node: ast.AST, qualname: str) -> None:
        doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
        if doc and doc.strip():
            out.append((qualname, doc.strip()))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{qualname}.{child.name}")

    visit(tree, module)
    return out


def _pydoc_topics() -> list[tuple[str, str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - some distributions strip pydoc_data
        return []
    return [(k, topics[k].strip()) for k in sorted(topics) if topics[k].strip()]


@functools.lru_cache(maxsize=1)
def default_corpus_sources() -> tuple[tuple[str, str], ...]:
    """The documents of :func:`default_corpus` as ``(label, text)`` pairs, in order.

    Labels are ``"topic:<name>"`` for pydoc topics and ``"doc:<qualified.name>"`` for
    docstrings. Exact duplicate docstrings are kept once (first occurrence).
    """
    docs: list[tuple[str, str]] = [(f"topic:{k}", v) for k, v in _pydoc_topics()]
    seen: set[str] = set()
    stdlib = _stdlib_dir()
    for name in _stdlib_module_names():
        for dotted, path in _stdlib_source_files(name, stdlib):
            try:
                source = Path(path).read_bytes()
            except OSError:  # pragma: no cover - unreadable file
                continue
            for qualname, doc in _docstrings(dotted, source):
                if doc in seen:
                    continue
                seen.add(doc)
                docs.append((f"doc:{qualname}", doc))
    return tuple(docs)


@functools.lru_cache(maxsize=1)
def default_corpus() -> str:
    """The embedded default corpus (about 2 MB of text on CPython 3.11).

    pydoc topic pages (sorted by topic), then one block per docstring of the pure-Python
    standard library: modules in sorted order, files sorted within packages, docstrings
    in source order, each block headed by the object's qualified name. Identical across
    runs and machines on the same Python version; cached in-process.
    """
    parts = []
    for label, text in default_corpus_sources():
        if label.startswith("doc:"):
            parts.append(f"{label[4:]}\n{text}")
        else:
            parts.append(text)
    corpus = DOC_SEPARATOR.join(parts) + "\n"
    if len(corpus) < 1000:  # pragma: no cover - a stripped-down Python
        raise DataError("the default corpus is (nearly) empty: this Python ships no docstrings or pydoc topics")
    return corpus


# --------------------------------------------------------------------------- files and folders


def _read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    return text.removeprefix("\ufeff")  # tolerate a UTF-8 byte-order mark


def load_text(path: PathLike, *, extensions: frozenset[str] | None = None) -> str:
    """Read a UTF-8 file, or every text file under a folder (recursively).

    A folder's files (name ending in ``extensions``, default :data:`TEXT_EXTENSIONS`;
    hidden files and folders skipped) are read in sorted relative-path order and joined
    with :data:`DOC_SEPARATOR`. Raises :class:`DataError` naming the path if it is
    missing, a file is not UTF-8, or the result holds no non-whitespace text.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"corpus path does not exist: {path}")
    if path.is_file():
        text = _read_utf8(path)
        if not text.strip():
            raise DataError(f"corpus file is empty: {path}")
        return text
    if not path.is_dir():
        raise DataError(f"corpus path is neither a file nor a folder: {path}")
    exts = TEXT_EXTENSIONS if extensions is None else frozenset(e.lower() for e in extensions)
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in filenames:
            if not fname.startswith(".") and Path(fname).suffix.lower() in exts:
                files.append(Path(dirpath) / fname)
    files.sort(key=lambda p: p.relative_to(path).as_posix())
    texts = [t for t in (_read_utf8(f) for f in files) if t.strip()]
    if not texts:
        raise DataError(
            f"corpus folder {path} holds no non-empty text files "
            f"(looked for: {', '.join(sorted(exts))})"
        )
    return DOC_SEPARATOR.join(t.strip("\n") for t in texts) + "\n"


def load_hf_dataset(
    name: str,
    split: str = "train",
    text_field: str = "text",
    max_chars: int | None = 20_000_000,
    *,
    config: str | None = None,
    **kwargs: Any,
) -> str:
    """Concatenate the ``text_field`` column of a Hugging Face dataset split.

    Needs the optional ``datasets`` package (``pip install 'muonclip[data]'``) and, unless
    the dataset is cached, network access. Stops after ``max_chars`` characters (None:
    no limit). Extra keyword arguments go to ``datasets.load_dataset``.
    """
    try:
        import datasets  # optional dependency
    except ImportError as exc:
        raise ImportError(
            "loading a Hugging Face dataset needs the optional 'datasets' package: "
            "pip install 'muonclip[data]'"
        ) from exc
    try:
        ds = datasets.load_dataset(name, config, split=split, **kwargs)
    except Exception as exc:
        raise DataError(f"cannot load Hugging Face dataset {name!r} (split {split!r}): {exc}") from exc
    columns = getattr(ds, "column_names", None)
    if columns is not None and text_field not in columns:
        raise DataError(f"dataset {name!r} has no column {text_field!r}; columns: {', '.join(columns)}")
    parts: list[str] = []
    total = 0
    for row in ds:
        text = row[text_field]
        if not isinstance(text, str) or not text.strip():
            continue
        if max_chars is not None:
            room = max_chars - total
            if room <= 0:
                break
            if len(text) > room:
                parts.append(text[:room])
                break
        parts.append(text)
        total += len(text) + len(DOC_SEPARATOR)
    if not parts:
        raise DataError(f"dataset {name!r} (split {split!r}, column {text_field!r}) holds no text")
    return DOC_SEPARATOR.join(parts)


def load_corpus(
    source: str = "default",
    *,
    hf_dataset: str | None = None,
    hf_split: str = "train",
    hf_text_field: str = "text",
    max_chars: int | None = None,
) -> str:
    """One entry point for the data config: a Hugging Face dataset when ``hf_dataset``
    is set, else :func:`default_corpus` for ``source == "default"``, else
    :func:`load_text` on ``source``. ``max_chars`` truncates the result."""
    if hf_dataset:
        text = load_hf_dataset(hf_dataset, hf_split, hf_text_field, max_chars=max_chars)
    elif source == "default":
        text = default_corpus()
    else:
        text = load_text(source)
    if max_chars is not None:
        if max_chars <= 0:
            raise DataError(f"max_chars must be positive; got {max_chars}")
        text = text[:max_chars]
    return text


# --------------------------------------------------------------------------- token dataset

def _derive_seed(*parts: object) -> int:
    """A 63-bit seed from any labels, stable across processes and platforms."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _compact(tokens: Tensor, vocab_size: int | None) -> Tensor:
    """The smallest integer dtype that holds every id (uint8 / int16 / int32)."""
    if tokens.dtype == torch.uint8:
        return tokens
    hi = vocab_size if vocab_size is not None else (int(tokens.max()) + 1 if tokens.numel() else 1)
    if hi <= 256:
        return tokens.to(torch.uint8)
    if hi <= 2**15:
        return tokens.to(torch.int16)
    return tokens.to(torch.int32)


class TokenDataset:
    """Token ids in one 1-D tensor with a deterministic train/validation split.

    The last ``val_fraction`` of the tokens is validation, the rest is training; a
    window never crosses from one into the other. Batches are ``(x, y)`` int64 tensors
    of shape ``(batch_size, seq_len)`` with ``y[:, t] == x[:, t + 1]`` (next-token
    targets), both read from one contiguous window of ``seq_len + 1`` tokens.
    """

    def __init__(
        self,
        tokens: Tensor,
        *,
        val_fraction: float = 0.05,
        seed: int = 0,
        vocab_size: int | None = None,
    ) -> None:
        if not isinstance(tokens, Tensor):
            tokens = torch.as_tensor(tokens)
        if tokens.dim() != 1:
            raise DataError(f"tokens must be a 1-D tensor; got shape {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise DataError(f"tokens must be integers; got {tokens.dtype}")
        if not 0.0 < float(val_fraction) < 1.0:
            raise DataError(f"val_fraction must be in (0, 1); got {val_fraction}")
        n = tokens.numel()
        if n < 4:
            raise DataError(f"need at least 4 tokens to split into train and validation; got {n}")
        if tokens.numel() and int(tokens.min()) < 0:
            raise DataError("token ids must be non-negative")
        if vocab_size is not None and int(tokens.max()) >= vocab_size:
            raise DataError(f"token id {int(tokens.max())} is outside the vocabulary ({vocab_size})")
        self.tokens = _compact(tokens.detach().cpu().contiguous(), vocab_size)
        self.vocab_size = vocab_size
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        n_val = min(max(1, round(n * self.val_fraction)), n - 2)
        self.n_train = n - n_val
        self.train = self.tokens[: self.n_train]
        self.val = self.tokens[self.n_train:]
        self._fingerprint: str | None = None

    @classmethod
    def from_text(cls, text: str, tokenizer: Any, *, val_fraction: float = 0.05, seed: int = 0) -> "TokenDataset":
        """Tokenise ``text`` once (``tokenizer.encode_tensor`` when available)."""
        if not text:
            raise DataError("cannot build a dataset from empty text")
        if hasattr(tokenizer, "encode_tensor"):
            tokens = tokenizer.encode_tensor(text)
        else:
            tokens = torch.tensor(tokenizer.encode(text), dtype=torch.int64)
        return cls(tokens, val_fraction=val_fraction, seed=seed, vocab_size=int(tokenizer.vocab_size))

    # ---------------------------------------------------------------- info

    def __len__(self) -> int:
        return self.tokens.numel()

    @property
    def n_val(self) -> int:
        return self.tokens.numel() - self.n_train

    @property
    def fingerprint(self) -> str:
        """sha256 (16 hex chars) of the ids and the split: store it in a checkpoint to
        check that a resumed run reads the same data."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"{self.tokens.dtype}:{self.n_train}:".encode())
            h.update(self.tokens.numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to check and reproduce the sampling (no token data)."""
        return {"seed": self.seed, "n_tokens": len(self), "n_train": self.n_train,
                "val_fraction": self.val_fraction, "fingerprint": self.fingerprint}

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Raise :class:`DataError` if ``state`` (from :meth:`state_dict`) describes other data."""
        mine = self.state_dict()
        diffs = [f"{k}: saved {state.get(k)!r}, now {mine[k]!r}" for k in mine if state.get(k) != mine[k]]
        if diffs:
            raise DataError("dataset differs from the checkpoint's: " + "; ".join(diffs))

    def split(self, split: str) -> Tensor:
        if split == "train":
            return self.train
        if split in ("val", "validation"):
            return self.val
        raise DataError(f"unknown split {split!r}; expected 'train' or 'val'")

    def n_windows(self, split: str, seq_len: int) -> int:
        """How many distinct windows of ``seq_len + 1`` tokens the split holds."""
        return max(0, self.split(split).numel() - seq_len)

    # ---------------------------------------------------------------- sampling

    def _check(self, split: str, batch_size: int, seq_len: int) -> Tensor:
        if batch_size < 1 or seq_len < 1:
            raise DataError(f"batch_size and seq_len must be >= 1; got {batch_size}, {seq_len}")
        data = self.split(split)
        if data.numel() < seq_len + 1:
            raise DataError(
                f"the {split} split has {data.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                "use a shorter seq_len, a larger corpus or another val_fraction"
            )
        return data

    @staticmethod
    def _windows(data: Tensor, offsets: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
        idx = offsets.view(-1, 1) + torch.arange(seq_len + 1).view(1, -1)
        chunk = data[idx].long()
        return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

    def get_batch(
        self, split: str, batch_size: int, seq_len: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """A batch at uniformly random offsets drawn from ``generator``.

        Resume exactly by saving ``generator.get_state()`` and restoring it with
        ``set_state``; or use :meth:`batch_at`, which needs no state at all.
        """
        data = self._check(split, batch_size, seq_len)
        offsets = torch.randint(0, data.numel() - seq_len, (batch_size,), generator=generator)
        return self._windows(data, offsets, seq_len)

    def batch_at(
        self, step: int, batch_size: int, seq_len: int, split: str = "train", *, seed: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """The batch of training step ``step``: a pure function of
        ``(seed, split, step, batch_size, seq_len)`` and the data, so a run resumed at
        step ``k`` gets bit-identical batches from ``batch_at(k)`` on."""
        if step < 0:
            raise DataError(f"step must be >= 0; got {step}")
        seed = self.seed if seed is None else int(seed)
        gen = torch.Generator().manual_seed(_derive_seed("muonclip.batch", seed, split, int(step)))
        return self.get_batch(split, batch_size, seq_len, gen)

    def val_batches(self, n: int, batch_size: int, seq_len: int) -> list[tuple[Tensor, Tensor]]:
        """A fixed evaluation set: ``n`` batches whose windows are spread evenly over the
        validation split (same every call, independent of seed and step)."""
        if n < 1:
            raise DataError(f"n must be >= 1; got {n}")
        data = self._check("val", batch_size, seq_len)
        last = data.numel() - seq_len - 1  # largest valid offset
        count = n * batch_size
        if count == 1:
            offsets = torch.zeros(1, dtype=torch.long)
        else:
            offsets = torch.div(torch.arange(count, dtype=torch.long) * last, count - 1, rounding_mode="floor")
        return [self._windows(data, chunk, seq_len) for chunk in offsets.split(batch_size)]

    def __repr__(self) -> str:
        return (f"TokenDataset(tokens={len(self)}, train={self.n_train}, val={self.n_val}, "
                f"dtype={self.tokens.dtype}, seed={self.seed})")
