"""Tokenizers behind one small interface: `encode`, `decode`, `vocab_size`, `eos_id`, `name`.

`load_tokenizer("byte")` gives the byte-level tokenizer of the embedded default; any other
spec is a Hugging Face `tokenizer.json` file or a directory holding one.

The tokenizer workshop (`pretrain-tokenizer`: train, expand, report) lives beside this in
`train.py`, `expand.py`, `report.py` and `cli.py`; `job.run_tokenizer_job` is its one entry
point for a JSON config. Those import `tokenizers` on use, not here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from trainer.tokenizer.byte import ByteTokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "Tokenizer", "fingerprint", "load_tokenizer", "token_dtype"]

# Tried in order when the directory has no tokenizer_config.json naming its eos token.
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eos|>", "<|im_end|>")


class Tokenizer(Protocol):
    name: str
    """Stable identity of the vocabulary; part of every token cache key."""
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class HFTokenizer:
    """A Hugging Face `tokenizers` file, encoded without added special tokens (raw text)."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as _RustTokenizer

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        self._tokenizer = _RustTokenizer.from_file(str(file))
        self.name = fingerprint(file)
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_id = self._find_eos(file.parent)

    def _find_eos(self, folder: Path) -> int:
        config = folder / "tokenizer_config.json"
        candidates: list[str] = []
        if config.is_file():
            eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str):
                candidates.append(eos)
        candidates.extend(_EOS_CANDIDATES)
        for token in candidates:
            token_id = self._tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        raise ValueError(f"tokenizer in {folder} has none of the eos tokens {candidates}")

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Encode documents into one flat array, each followed by eos (batched in Rust)."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        dtype = token_dtype(self.vocab_size)
        pieces: list[np.ndarray] = []
        eos = np.array([self.eos_id], dtype=dtype)
        for encoding in encodings:
            pieces.append(np.asarray(encoding.ids, dtype=dtype))
            pieces.append(eos)
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)

    def encode_with_lengths(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode_documents` and each document's length, its eos included (for `.bin/.idx`).

        The lengths cannot be read back from the flat array: a document may hold the eos text.
        """
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        dtype = token_dtype(self.vocab_size)
        flat: list[int] = []
        lengths = np.empty(len(encodings), dtype=np.int64)
        eos = self.eos_id
        for index, encoding in enumerate(encodings):
            ids = encoding.ids
            flat.extend(ids)
            flat.append(eos)
            lengths[index] = len(ids) + 1
        return np.array(flat, dtype=dtype), lengths

    def decode(self, ids: Iterable[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids])


def token_dtype(vocab_size: int) -> type[np.integer]:
    """The dtype token ids are stored in: uint16 while every id fits, else int32 (Megatron's rule)."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def fingerprint(file: str | Path) -> str:
    """A `tokenizer.json`'s name: `hf-` and its sha256's first 16 hex digits. Prepared datasets
    record it (their sidecar), training checks it, and so does the service at submit."""
    return "hf-" + hashlib.sha256(Path(file).read_bytes()).hexdigest()[:16]


def load_tokenizer(spec: str) -> Tokenizer:
    """`"byte"`, or the path of a Hugging Face `tokenizer.json` (or of its directory)."""
    if spec == "byte":
        return ByteTokenizer()
    return HFTokenizer(spec)
