"""Train a tokenizer with Hugging Face `tokenizers`: byte-level BPE (default), BPE, WordPiece.

Ids of the result, in order and without gaps:

    core special tokens | <0x00>..<0xFF> (bpe only) | learned tokens | domain tokens | reserved

* core special tokens: `<|endoftext|>` (eos), `<|im_start|>`, `<|im_end|>` (ChatML), `<|pad|>`;
  `bpe` adds `<unk>` and `wordpiece` adds `[UNK]` in front. There is no bos token, as in Qwen;
* `--vocab-size` counts the model's own vocabulary: core specials, the alphabet (256 bytes for
  byte-level BPE; for the others up to `limit_alphabet` characters plus, for bpe, the 256
  byte-fallback pieces) and the learned tokens. Banned tokens come out of it afterwards;
* domain tokens are added tokens: matched in raw text before pre-tokenization, so each is one
  token wherever it appears (inside a longer Chinese run too);
* reserved tokens `<|reserved_0|>`… are special tokens nothing produces: rows for the tokens
  that later alignment stages add, so the embedding need not grow then.
Digits are split one per token by the pre-tokenizer (Qwen2's split pattern isolates every
`\\p{N}`; bpe and wordpiece use `Digits(individual_digits=True)`), so no merge ever joins two.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from trainer.tokenizer.vocab import BanList, merges_of, prune_bpe, surface_decoder

MODEL_KINDS = ("byte-bpe", "bpe", "wordpiece")
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2's pre-tokenizer split: letter runs, each digit alone, punctuation runs, whitespace."""
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
UNK_TOKENS = {"byte-bpe": None, "bpe": "<unk>", "wordpiece": "[UNK]"}
RESERVED_TOKEN = "<|reserved_{}|>"
BYTE_FALLBACK_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
LAYOUT_FORMAT = 1


@dataclass(frozen=True)
class TrainOptions:
    """What `train_tokenizer` builds; every field has the CLI's default."""

    vocab_size: int = 32000
    """Model vocabulary before bans: core specials, alphabet and learned tokens."""
    model: str = "byte-bpe"
    """`byte-bpe`, `bpe` (characters with byte fallback, Llama style) or `wordpiece`."""
    min_frequency: int = 2
    """A pair must occur this often to be merged."""
    domain_tokens: tuple[str, ...] = ()
    """Strings that must each be one token."""
    banned: tuple[str, ...] = ()
    """`BanList` lines: literals (token text containing them) or `re:REGEX`."""
    spare: int = 1000
    """Reserved special tokens `<|reserved_i|>` appended at the end."""
    pad_to_multiple_of: int = 128
    """The embedding's row count is the vocabulary rounded up to this."""
    limit_alphabet: int | None = None
    """Most distinct characters in the alphabet (bpe, wordpiece); default vocab_size // 4."""

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model must be one of {MODEL_KINDS}, got {self.model!r}")
        if self.spare < 0:
            raise ValueError(f"spare must be >= 0, got {self.spare}")
        if self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")
        if self.min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {self.min_frequency}")
        floor = len(core_special_tokens(self.model)) + (512 if self.model == "bpe" else 256)
        if self.vocab_size <= floor:
            raise ValueError(
                f"vocab_size {self.vocab_size} leaves no room to learn: the {self.model} "
                f"specials and alphabet alone take {floor}"
            )


@dataclass
class Trained:
    tokenizer: Tokenizer
    layout: dict = field(default_factory=dict)
    """Where every kind of token sits and the padded size; saved as `vocab_layout.json`."""


def core_special_tokens(model: str) -> tuple[str, ...]:
    unk = UNK_TOKENS[model]
    return (*([unk] if unk else []), EOS_TOKEN, *CHAT_TOKENS, PAD_TOKEN)


def padded_size(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def clean_domain_tokens(tokens: Sequence[str]) -> tuple[str, ...]:
    """Stripped, blank lines and repeats dropped, first occurrence's order kept."""
    return tuple(dict.fromkeys(t.strip() for t in tokens if t.strip()))


def train_tokenizer(documents: Sequence[str], options: TrainOptions) -> Trained:
    """Train on `documents`, remove banned tokens, then add domain and reserved tokens."""
    specials = core_special_tokens(options.model)
    domain = clean_domain_tokens(options.domain_tokens)
    bans = BanList.from_lines(options.banned)
    if clashing := [t for t in domain if bans.matches(t)]:
        raise ValueError(f"domain tokens {clashing} match a banned pattern")
    if clashing := [t for t in domain if t in specials or t.startswith("<|reserved_")]:
        raise ValueError(f"domain tokens {clashing} clash with special tokens")

    tokenizer, trainer = _untrained(options, specials)
    # Specials and domain tokens are cut out of the text first, so no merge is spent on them.
    tokenizer.add_special_tokens(list(specials))
    tokenizer.add_tokens([_domain_token(t) for t in domain])
    started = time.perf_counter()
    tokenizer.train_from_iterator(documents, trainer, length=len(documents))
    seconds = time.perf_counter() - started

    spec = json.loads(tokenizer.to_str())
    learned = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda item: item[1])]
    learned = [t for t in learned if t not in specials]
    fallback = list(BYTE_FALLBACK_TOKENS) if options.model == "bpe" else []
    surface = surface_decoder(spec)

    def is_banned(token: str) -> bool:
        return bans.matches(surface(token).decode("utf-8", errors="replace"))

    if options.model == "wordpiece":
        tokens, merges, ban_summary = _prune_wordpiece(learned, is_banned if bans else None)
    else:
        pruned = prune_bpe(learned, merges_of(spec["model"]), is_banned if bans else _never)
        tokens, merges = pruned.tokens, pruned.merges
        ban_summary = {
            "removed_tokens": len(pruned.removed),
            "removed_merges": pruned.removed_merges,
            "kept_alphabet": pruned.kept_alphabet,
        }

    spec["model"]["vocab"] = {t: i for i, t in enumerate([*specials, *fallback, *tokens])}
    if options.model != "wordpiece":
        spec["model"]["merges"] = [list(pair) for pair in merges]
    spec["added_tokens"] = []
    final = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    final.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    final.add_tokens([_domain_token(t) for t in domain])
    reserved = [RESERVED_TOKEN.format(i) for i in range(options.spare)]
    final.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in reserved])

    corpus_bytes = sum(len(doc.encode("utf-8")) for doc in documents)
    layout = build_layout(
        final,
        model=options.model,
        specials=specials,
        domain=domain,
        reserved=reserved,
        pad_to_multiple_of=options.pad_to_multiple_of,
    )
    layout["requested_vocab_size"] = options.vocab_size
    layout["banned"] = {"patterns": len(bans), **ban_summary}
    layout["training"] = {
        "documents": len(documents),
        "bytes": corpus_bytes,
        "seconds": round(seconds, 3),
        "mb_per_s": round(corpus_bytes / 1e6 / seconds, 3) if seconds > 0 else None,
        "min_frequency": options.min_frequency,
    }
    return Trained(final, layout)


def build_layout(
    tokenizer: Tokenizer,
    *,
    model: str,
    specials: Sequence[str],
    domain: Sequence[str],
    reserved: Sequence[str],
    pad_to_multiple_of: int,
) -> dict:
    """Ids of every kind of token, vocabulary size, padded size and spare rows."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    padded = padded_size(size, pad_to_multiple_of)
    unk = UNK_TOKENS.get(model)
    return {
        "format": LAYOUT_FORMAT,
        "model": model,
        "model_vocab_size": tokenizer.get_vocab_size(with_added_tokens=False),
        "special_tokens": {
            "eos_token": EOS_TOKEN,
            "pad_token": PAD_TOKEN,
            "unk_token": unk,
            "bos_token": None,
            "chat_tokens": list(CHAT_TOKENS),
        },
        "special_token_ids": {t: tokenizer.token_to_id(t) for t in specials},
        "domain_tokens": {t: tokenizer.token_to_id(t) for t in domain},
        "reserved": {
            "count": len(reserved),
            "first_id": tokenizer.token_to_id(reserved[0]) if reserved else None,
            "name": RESERVED_TOKEN,
        },
        "vocab_size": size,
        "pad_to_multiple_of": pad_to_multiple_of,
        "padded_vocab_size": padded,
        "spare_rows": {
            "reserved": len(reserved),
            "padding": padded - size,
            "total": len(reserved) + padded - size,
        },
    }


def _never(_token: str) -> bool:
    return False


def _domain_token(text: str) -> AddedToken:
    return AddedToken(text, single_word=False, lstrip=False, rstrip=False, normalized=False)


def _untrained(options: TrainOptions, specials: Sequence[str]) -> tuple[Tokenizer, object]:
    """The tokenizer pipeline of a model kind, and the trainer that fills its vocabulary."""
    learned = options.vocab_size - len(specials)
    limit = options.limit_alphabet or max(options.vocab_size // 4, 100)
    if options.model == "byte-bpe":
        tokenizer = Tokenizer(models.BPE())  # no unk: all 256 bytes are in the alphabet
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(
                    add_prefix_space=False, trim_offsets=False, use_regex=False
                ),
            ]
        )
        tokenizer.decoder = decoders.ByteLevel(
            add_prefix_space=False, trim_offsets=False, use_regex=False
        )
        trainer = trainers.BpeTrainer(
            vocab_size=learned,
            min_frequency=options.min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif options.model == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=True),
                pre_tokenizers.Digits(individual_digits=True),
            ]
        )
        tokenizer.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=learned - len(BYTE_FALLBACK_TOKENS),
            min_frequency=options.min_frequency,
            limit_alphabet=limit,
            show_progress=False,
        )
    else:
        tokenizer = Tokenizer(
            models.WordPiece(
                unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=200
            )
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Digits(individual_digits=True)]
        )
        tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
        trainer = trainers.WordPieceTrainer(
            vocab_size=learned,
            min_frequency=options.min_frequency,
            limit_alphabet=limit,
            continuing_subword_prefix="##",
            show_progress=False,
        )
    return tokenizer, trainer


def _prune_wordpiece(tokens: list[str], is_banned) -> tuple[list[str], list, dict]:
    """WordPiece has no merges: drop banned tokens, but never a single character or `##c`."""
    if is_banned is None:
        return tokens, [], {"removed_tokens": 0, "removed_merges": 0, "kept_alphabet": []}

    def single(token: str) -> bool:
        return len(token.removeprefix("##")) == 1

    flagged = [t for t in tokens if is_banned(t)]
    removed = {t for t in flagged if not single(t)}
    return (
        [t for t in tokens if t not in removed],
        [],
        {
            "removed_tokens": len(removed),
            "removed_merges": 0,
            "kept_alphabet": [t for t in flagged if single(t)],
        },
    )
