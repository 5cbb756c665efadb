"""A byte-level tokenizer: UTF-8 bytes are ids 0-255, then `<eos>` and `<pad>`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

EOS_ID = 256
PAD_ID = 257
EOS_TOKEN = "<eos>"
PAD_TOKEN = "<pad>"


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


def hf_tokenizer():
    """The same ids as a Hugging Face `tokenizers` file, for an exported model's readers.

    A BPE with no merges over GPT-2's byte alphabet: every byte is one token, its id the byte's
    value, so `transformers` (and lm-eval through it) encode text exactly as the trainer did.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    byte_chars = _gpt2_byte_chars()
    tokenizer = Tokenizer(models.BPE(vocab={byte_chars[b]: b for b in range(256)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in (EOS_TOKEN, PAD_TOKEN)]
    )
    return tokenizer


def _gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's byte → printable character table, which `ByteLevel` pre-tokenizes bytes into."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in chars)
    for offset, b in enumerate(shifted):
        chars[b] = chr(256 + offset)
    return chars
