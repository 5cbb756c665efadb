"""A byte-level tokenizer: UTF-8 bytes are ids 0-255, then `<eos>` and `<pad>`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

EOS_ID = 256
PAD_ID = 257


class ByteTokenizer:
    """Every string encodes (any script, Chinese included); needs no files and no training."""

    name = "byte"
    vocab_size = 258
    eos_id = EOS_ID
    pad_id = PAD_ID

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Encode documents into one flat array, each followed by `<eos>` (the fast path)."""
        eos = np.array([EOS_ID], dtype=np.uint16)
        pieces: list[np.ndarray] = []
        for text in texts:
            pieces.append(np.frombuffer(text.encode("utf-8"), dtype=np.uint8))
            pieces.append(eos)
        if not pieces:
            return np.zeros(0, dtype=np.uint16)
        return np.concatenate(pieces, dtype=np.uint16)

    def encode_with_lengths(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode_documents` and each document's length, its `<eos>` included."""
        encoded = [text.encode("utf-8") for text in texts]
        lengths = np.fromiter((len(b) + 1 for b in encoded), dtype=np.int64, count=len(encoded))
        flat = np.frombuffer(b"\x00".join(encoded) + b"\x00", dtype=np.uint8).astype(np.uint16)
        if len(encoded):
            flat[np.cumsum(lengths) - 1] = EOS_ID
        else:
            flat = flat[:0]
        return flat, lengths

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; specials are dropped and broken UTF-8 becomes U+FFFD."""
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")
