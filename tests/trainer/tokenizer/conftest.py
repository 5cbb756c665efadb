"""Tokenizers trained once for the whole package, on slices of the embedded corpora."""

from __future__ import annotations

import pytest

from trainer.tokenizer.corpus import embedded, load_corpus
from trainer.tokenizer.train import Trained, TrainOptions, train_tokenizer

SLICE_BYTES = 250_000
DOMAIN_TOKENS = ("阿莫西林", "青霉素", "amoxicillin")
BANNED = ("return", "中国", r"re:^ ?import$")
SPARE = 37
PAD_MULTIPLE = 64


def _slice(name: str, max_bytes: int = SLICE_BYTES) -> list[str]:
    return list(load_corpus(f"embedded:{name}", max_bytes=max_bytes).documents)


@pytest.fixture(scope="package")
def slices() -> dict[str, list[str]]:
    return {name: _slice(name) for name in ("code", "en", "zh")}


@pytest.fixture(scope="package")
def mixed(slices: dict[str, list[str]]) -> list[str]:
    return [doc for docs in slices.values() for doc in docs]


@pytest.fixture(scope="package")
def trained(mixed: list[str]) -> Trained:
    """Byte-level BPE with domain tokens, bans, an odd spare count and padding to 64."""
    options = TrainOptions(
        vocab_size=3000,
        domain_tokens=DOMAIN_TOKENS,
        banned=BANNED,
        spare=SPARE,
        pad_to_multiple_of=PAD_MULTIPLE,
    )
    return train_tokenizer(mixed, options)


@pytest.fixture(scope="package")
def unbanned(mixed: list[str]) -> Trained:
    """The same corpus and size without bans: shows what the bans took out."""
    return train_tokenizer(mixed, TrainOptions(vocab_size=3000, spare=0))


@pytest.fixture(scope="package")
def base(slices: dict[str, list[str]]) -> Trained:
    """Trained on code and English only, like an English base model's tokenizer."""
    documents = slices["code"] + slices["en"]
    return train_tokenizer(
        documents, TrainOptions(vocab_size=2000, domain_tokens=("阿莫西林",), spare=10)
    )


@pytest.fixture(scope="package")
def zh_new() -> list[str]:
    """Chinese text past the first slice (about 400 kB), for the expansion to learn from."""
    return list(embedded("zh")[300:700])


@pytest.fixture(scope="package")
def zh_held_out() -> list[str]:
    """Chinese text neither the base nor the expansion saw."""
    return list(embedded("zh")[-30:])
