"""Tokenizers for the lab: raw UTF-8 bytes (vocab 256) and a locally trained byte-level BPE.

Both share one small interface::

    tok.vocab_size            # int
    tok.encode(text)          # -> list[int]
    tok.decode(ids)           # -> str
    tok.encode_tensor(text)   # -> 1-D integer torch tensor (fast path for corpora)
    tok.save(path)            # JSON file, written atomically
    load_tokenizer(path)      # -> ByteTokenizer | BPETokenizer

The BPE tokenizer needs the optional ``tokenizers`` package (``pip install muonclip[bpe]``);
it is imported only when a BPE tokenizer is trained or loaded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Union

import torch

from ..io import atomic_write_json, atomic_write_text, read_json

__all__ = [
    "ByteTokenizer",
    "BPETokenizer",
    "Tokenizer",
    "TokenizerError",
    "load_tokenizer",
    "make_tokenizer",
    "TOKENIZER_KINDS",
]

PathLike = Union[str, "os.PathLike[str]"]

TOKENIZER_KINDS = ("byte", "bpe")

_BYTE_FORMAT = "muonclip.byte"


class TokenizerError(ValueError):
    """A tokenizer cannot be built, loaded or used as asked."""


def _require_tokenizers() -> Any:
    try:
        import tokenizers  # noqa: F401  (optional dependency)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the BPE tokenizer needs the optional 'tokenizers' package: "
            "pip install 'muonclip[bpe]'"
        ) from exc
    return tokenizers


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocab 256, lossless for any ``str``."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_tensor(self, text: str) -> torch.Tensor:
        """The same ids as :meth:`encode`, as a 1-D ``uint8`` tensor (no Python list)."""
        data = bytearray(text.encode("utf-8"))
        if not data:
            return torch.empty(0, dtype=torch.uint8)
        return torch.frombuffer(data, dtype=torch.uint8)

    def decode(self, ids: Iterable[int]) -> str:
        """Bytes back to text; byte runs that are not valid UTF-8 (which a model may
        sample) become U+FFFD instead of raising."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        ids = list(ids)
        bad = [i for i in ids if not 0 <= int(i) < 256]
        if bad:
            raise TokenizerError(f"byte token ids must be in [0, 256); got {bad[:5]}")
        return bytes(ids).decode("utf-8", errors="replace")

    def save(self, path: PathLike) -> Path:
        return atomic_write_json(path, {"format": _BYTE_FORMAT, "vocab_size": 256})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash(ByteTokenizer)

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


def _chunks(text: str, size: int = 1 << 16) -> Iterator[str]:
    """Line-aligned pieces of ``text`` for the BPE trainer (it only counts words)."""
    start = 0
    n = len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            nl = text.rfind("\n", start, end)
            if nl > start:
                end = nl + 1
        yield text[start:end]
        start = end


class BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenisation) from the ``tokenizers`` library.

    Lossless: ``decode(encode(s)) == s`` for any string, because all 256 byte symbols
    are in the initial alphabet. Train with :meth:`train`; persist with :meth:`save`.
    """

    kind = "bpe"

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int = 1024, *, min_frequency: int = 2) -> "BPETokenizer":
        """Train on ``text`` locally. ``vocab_size`` (>= 256) is an upper bound: a small
        corpus may run out of merges first; check :attr:`vocab_size` afterwards."""
        if not isinstance(vocab_size, int) or vocab_size < 256:
            raise TokenizerError(f"BPE vocab_size must be an int >= 256 (the byte alphabet); got {vocab_size!r}")
        if not text:
            raise TokenizerError("cannot train a BPE tokenizer on empty text")
        tk = _require_tokenizers()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            show_progress=False,
            special_tokens=[],
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(_chunks(text), trainer=trainer)
        return cls(tok)

    @classmethod
    def from_json(cls, text: str) -> "BPETokenizer":
        tk = _require_tokenizers()
        try:
            return cls(tk.Tokenizer.from_str(text))
        except Exception as exc:  # the Rust side raises a plain Exception
            raise TokenizerError(f"not a valid tokenizers JSON: {exc}") from exc

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_tensor(self, text: str) -> torch.Tensor:
        ids = self.encode(text)
        dtype = torch.int16 if self.vocab_size <= 2**15 else torch.int32
        return torch.tensor(ids, dtype=dtype)

    def decode(self, ids: Iterable[int]) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"BPE token ids must be in [0, {self.vocab_size}); got {bad[:5]}")
        return self._tok.decode(ids, skip_special_tokens=False)

    def to_json(self) -> str:
        return self._tok.to_str()

    def save(self, path: PathLike) -> Path:
        """Write the standard ``tokenizers`` JSON (loadable by other tools too)."""
        return atomic_write_text(path, self.to_json())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


Tokenizer = Union[ByteTokenizer, BPETokenizer]


def load_tokenizer(path: PathLike) -> Tokenizer:
    """Load a tokenizer written by ``.save(path)`` (byte or BPE, told apart by content)."""
    path = Path(path)
    obj = read_json(path, TokenizerError, "tokenizer")
    if isinstance(obj, dict) and obj.get("format") == _BYTE_FORMAT:
        return ByteTokenizer()
    if isinstance(obj, dict) and "model" in obj:
        try:
            return BPETokenizer.from_json(path.read_text(encoding="utf-8"))
        except TokenizerError as exc:
            raise TokenizerError(f"{path}: {exc}") from exc
    raise TokenizerError(f"{path} is neither a byte tokenizer nor a tokenizers BPE JSON file")


def make_tokenizer(kind: str, text: str | None = None, vocab_size: int = 1024) -> Tokenizer:
    """``"byte"`` -> :class:`ByteTokenizer`; ``"bpe"`` -> :meth:`BPETokenizer.train` on ``text``."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        if text is None:
            raise TokenizerError("a BPE tokenizer needs text to train on")
        return BPETokenizer.train(text, vocab_size)
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(TOKENIZER_KINDS)}")
