"""Grow an existing BPE tokenizer with tokens learned on a new corpus, keeping every old id.

Chinese-LLaMA style, done as continued BPE training: the new corpus is first tokenized with
the base, and merges are then learned on top of the base's own pieces (by the Rust trainer:
each base token stands in as one private-use character, so a merge can only join two pieces
the base really produces). Each new token takes the next free id after the base's last one
and its merge goes after all of the base's merges, so new merges rank below every old one:
a text whose new encoding holds no new id encodes exactly as before, and only text where a
new token applies changes. A merge whose result the base already has is skipped (it would
give an old token a second route and change old text); so are banned results.

A base with byte fallback (not byte-level) first gains the corpus's frequent characters it
lacks, as new single-character tokens.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from tokenizers import Tokenizer, models, trainers

from trainer.tokenizer.train import padded_size
from trainer.tokenizer.vocab import BanList, is_byte_level, merges_of, printable, surface_decoder

_MAX_TRAINING_ROUNDS = 6


@dataclass(frozen=True)
class ExpandOptions:
    add: int
    """How many tokens to add (fewer when the corpus has fewer new pairs to merge)."""
    min_frequency: int = 2
    """A pair must occur this often in the new corpus to become a token."""
    banned: tuple[str, ...] = ()
    """`BanList` lines: new tokens matching them are not added."""
    pad_to_multiple_of: int | None = None
    """Rounding of the embedding rows; default: the base's (`vocab_layout.json`), else 128."""

    def __post_init__(self) -> None:
        if self.add < 1:
            raise ValueError(f"add must be >= 1, got {self.add}")
        if self.min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {self.min_frequency}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")


@dataclass
class Expanded:
    tokenizer: Tokenizer
    layout: dict
    """The base's `vocab_layout.json` with the new sizes and an `expansion` summary."""
    expansion: dict = field(default_factory=dict)
    """What the trainer needs to resize its embeddings; saved as `vocab_expansion.json`."""


def expand_tokenizer(
    base: Tokenizer,
    documents: Sequence[str],
    options: ExpandOptions,
    *,
    base_layout: dict | None = None,
    base_name: str = "",
) -> Expanded:
    """Append up to `options.add` tokens learned on `documents` to `base`; old ids stay put."""
    spec = json.loads(base.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"expand needs a BPE tokenizer; the base is {model.get('type')}")
    old_vocab = base.get_vocab(with_added_tokens=True)
    old_size = len(old_vocab)
    next_id = max(old_vocab.values()) + 1
    bans = BanList.from_lines(options.banned)
    surface = surface_decoder(spec)
    added_texts = {added["content"] for added in spec.get("added_tokens") or []}

    vocab = dict(model["vocab"])
    # Added tokens join the model's vocabulary at their own ids: `tokenizers` renumbers added
    # tokens on load from the model's entry count, which new ids past them would shift.
    for added in spec.get("added_tokens") or []:
        vocab.setdefault(added["content"], int(added["id"]))

    def wanted(token: str) -> bool:
        text = surface(token).decode("utf-8", errors="replace")
        return text not in added_texts and not (bans and bans.matches(text))

    new_tokens: list[str] = []
    if not is_byte_level(spec):
        new_tokens = _missing_characters(
            documents, set(vocab), wanted, options.min_frequency, options.add
        )
    segmenter = _grown(spec, vocab, new_tokens, next_id, [])
    skip = _unmergeable_ids(spec, segmenter)
    words = list(_pieces(segmenter, documents, skip))
    wanted_merges = options.add - len(new_tokens)
    merged_tokens: list[str] = []
    new_merges: list[tuple[str, str]] = []
    target = 2 * wanted_merges + 256  # some merges make tokens the base has: learn spares
    for _round in range(_MAX_TRAINING_ROUNDS if wanted_merges > 0 else 0):
        merges, full = _continue_bpe(words, target, options.min_frequency)
        have = set(vocab) | set(new_tokens)
        merged_tokens, new_merges = _select(merges, have, wanted, wanted_merges)
        if len(merged_tokens) >= wanted_merges or not full:
            break
        target *= 2
    new_tokens = [*new_tokens, *merged_tokens]

    grown = _grown(spec, vocab, new_tokens, next_id, new_merges)
    moved = [t for t, i in old_vocab.items() if grown.token_to_id(t) != i]
    if moved:
        raise RuntimeError(f"expansion moved {len(moved)} old tokens, e.g. {moved[:5]}")

    new_size = grown.get_vocab_size(with_added_tokens=True)
    multiple = options.pad_to_multiple_of or (base_layout or {}).get("pad_to_multiple_of") or 128
    old_padded = (base_layout or {}).get("padded_vocab_size") or padded_size(old_size, multiple)
    padded = max(padded_size(new_size, multiple), old_padded)
    added_entries = [
        {"id": grown.token_to_id(t), "token": t, "text": printable(surface(t))} for t in new_tokens
    ]
    expansion = {
        "base": base_name,
        "old_vocab_size": old_size,
        "new_vocab_size": new_size,
        "old_padded_vocab_size": old_padded,
        "padded_vocab_size": padded,
        "pad_to_multiple_of": multiple,
        "added_count": len(new_tokens),
        "requested": options.add,
        "first_new_id": added_entries[0]["id"] if added_entries else None,
        "added": added_entries,
    }
    layout = copy.deepcopy(base_layout) if base_layout else _foreign_layout(base, spec)
    reserved = layout.get("reserved") or {}
    layout.update(
        model_vocab_size=grown.get_vocab_size(with_added_tokens=False),
        vocab_size=new_size,
        pad_to_multiple_of=multiple,
        padded_vocab_size=padded,
        spare_rows={
            "reserved": reserved.get("count", 0),
            "padding": padded - new_size,
            "total": reserved.get("count", 0) + padded - new_size,
        },
    )
    layout.setdefault("expansions", []).append(
        {k: v for k, v in expansion.items() if k != "added"}
        | {"corpus_bytes": sum(len(d.encode("utf-8")) for d in documents)}
    )
    return Expanded(grown, layout, expansion)


def _grown(
    spec: dict, vocab: dict[str, int], tokens: list[str], first_id: int, merges: list
) -> Tokenizer:
    """The base with `tokens` at ids from `first_id` on and `merges` after its own."""
    spec = copy.deepcopy(spec)
    model = spec["model"]
    model["vocab"] = {**vocab, **{t: first_id + i for i, t in enumerate(tokens)}}
    model["merges"] = [list(pair) for pair in (*merges_of(model), *merges)]
    return Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))


def _unmergeable_ids(spec: dict, tokenizer: Tokenizer) -> set[int]:
    """Ids no merge may touch: added tokens, the unknown token, `<0xNN>` byte fallback."""
    ids = {int(added["id"]) for added in spec.get("added_tokens") or []}
    model = spec["model"]
    if unk := model.get("unk_token"):
        ids.add(tokenizer.token_to_id(unk))
    if model.get("byte_fallback"):
        ids |= {i for b in range(256) if (i := tokenizer.token_to_id(f"<0x{b:02X}>")) is not None}
    return ids


def _pieces(tokenizer: Tokenizer, documents: Sequence[str], skip: set[int]) -> Iterator[list[str]]:
    """The base's tokens of each pre-tokenized word of the corpus (words of two or more)."""
    for first in range(0, len(documents), 512):
        batch = list(documents[first : first + 512])
        for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
            word: list[str] = []
            current = None
            for token, token_id, word_id in zip(
                encoding.tokens, encoding.ids, encoding.word_ids, strict=True
            ):
                mergeable = token_id not in skip and word_id is not None
                if not mergeable or word_id != current:
                    if len(word) > 1:
                        yield word
                    word = []
                    current = word_id if mergeable else None
                if mergeable:
                    word.append(token)
            if len(word) > 1:
                yield word


def _stand_in(index: int) -> str:
    """The `index`-th private-use character (BMP area, then planes 15 and 16)."""
    for start, size in ((0xE000, 0x1900), (0xF0000, 0xFFFE), (0x100000, 0xFFFE)):
        if index < size:
            return chr(start + index)
        index -= size
    raise ValueError("the corpus uses more distinct base tokens than there are stand-ins")


def _continue_bpe(
    words: list[list[str]], target: int, min_frequency: int
) -> tuple[list[tuple[str, str]], bool]:
    """Up to `target` merges over the base's pieces, in rank order: (merges, hit target?)."""
    stand_ins: dict[str, str] = {}
    lines = []
    for word in words:
        chars = []
        for token in word:
            if token not in stand_ins:
                stand_ins[token] = _stand_in(len(stand_ins))
            chars.append(stand_ins[token])
        lines.append("".join(chars))
    tokenizer = Tokenizer(models.BPE())  # no pre-tokenizer: each line is one word
    trainer = trainers.BpeTrainer(
        vocab_size=len(stand_ins) + target, min_frequency=min_frequency, show_progress=False
    )
    tokenizer.train_from_iterator(lines, trainer, length=len(lines))
    token_of = {char: token for token, char in stand_ins.items()}

    def back(symbol: str) -> str:
        return "".join(token_of[char] for char in symbol)

    merges = merges_of(json.loads(tokenizer.to_str())["model"])
    return [(back(a), back(b)) for a, b in merges], len(merges) >= target


def _select(
    merges: list[tuple[str, str]], have: set[str], wanted: Callable[[str], bool], limit: int
) -> tuple[list[str], list[tuple[str, str]]]:
    """New tokens and their merges, in rank order, skipping results that exist or are banned."""
    have = set(have)
    tokens: list[str] = []
    kept: list[tuple[str, str]] = []
    for a, b in merges:
        if len(tokens) >= limit:
            break
        token = a + b
        if token in have or a not in have or b not in have or not wanted(token):
            continue
        tokens.append(token)
        kept.append((a, b))
        have.add(token)
    return tokens, kept


def _missing_characters(
    documents: Sequence[str],
    have: set[str],
    wanted: Callable[[str], bool],
    min_frequency: int,
    limit: int,
) -> list[str]:
    """The corpus's characters a non-byte-level vocabulary lacks, most frequent first."""
    counts: Counter[str] = Counter()
    for doc in documents:
        counts.update(doc)
    missing = [
        ch
        for ch, n in counts.items()
        if n >= min_frequency and not ch.isspace() and ch not in have and wanted(ch)
    ]
    missing.sort(key=lambda ch: (-counts[ch], ch))
    return missing[:limit]


def _foreign_layout(base: Tokenizer, spec: dict) -> dict:
    """A minimal layout for a base that was not made here (no `vocab_layout.json`)."""
    specials = [a["content"] for a in spec.get("added_tokens") or [] if a.get("special")]
    return {
        "format": 1,
        "model": "byte-bpe" if is_byte_level(spec) else "bpe",
        "special_tokens": {"chat_tokens": []},
        "special_token_ids": {t: base.token_to_id(t) for t in specials},
        "domain_tokens": {},
        "reserved": {"count": 0, "first_id": None, "name": None},
    }
