"""How well a tokenizer compresses and covers each corpus, and what its vocabulary holds.

Per corpus (tokens are counted without special tokens, documents encoded one by one):
* `chars_per_token`, `bytes_per_token`: characters and UTF-8 bytes over tokens;
* `zh_chars_per_token`: CJK ideographs over the tokens that cover at least one of them (by
  the tokens' character offsets), so punctuation, digits or Latin text around the Chinese do
  not dilute it; None when the corpus has no ideograph;
* `unk_share`: share of tokens that are the unknown token;
* `byte_piece_share`: share of tokens that are not whole characters: byte-level pieces of a
  character the vocabulary lacks, or `<0xNN>` byte-fallback tokens;
* `char_coverage`, `zh_char_coverage`: share of the corpus's distinct characters (distinct
  ideographs) that encode, alone, to exactly one token.
Per vocabulary: size, share of entries whose text holds an ideograph / a Latin letter / an
ASCII digit, the most digits any token holds (1 when digits are split), and byte pieces.
Probes: how chosen strings (numbers, domain terms) split, piece by piece.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
from tokenizers import Tokenizer

from trainer.tokenizer.vocab import CJK, LATIN, is_partial_utf8, printable, token_surfaces

DIGIT_PROBES = ("9.11", "9.9", "3.14159", "1234567", "2024年3月15日")


def _cjk_mask(codepoints: np.ndarray) -> np.ndarray:
    c = codepoints
    return (
        ((c >= 0x3400) & (c <= 0x4DBF))
        | ((c >= 0x4E00) & (c <= 0x9FFF))
        | ((c >= 0xF900) & (c <= 0xFAFF))
        | ((c >= 0x20000) & (c <= 0x2FFFF))
    )


class TokenTable:
    """Per-id facts about a tokenizer's vocabulary, computed once."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        spec = json.loads(tokenizer.to_str())
        self.surfaces = token_surfaces(spec)
        size = max(self.surfaces) + 1 if self.surfaces else 0
        self.size = size
        self.byte_piece = np.zeros(size, dtype=bool)
        for i, data in self.surfaces.items():
            self.byte_piece[i] = is_partial_utf8(data)
        self.special = np.zeros(size, dtype=bool)
        for added in spec.get("added_tokens") or []:
            if added.get("special"):
                self.special[int(added["id"])] = True
        unk = spec["model"].get("unk_token")
        self.unk_id = tokenizer.token_to_id(unk) if unk else None

    def text(self, i: int) -> str:
        return printable(self.surfaces.get(i, b""))


def vocabulary_report(tokenizer: Tokenizer, table: TokenTable | None = None) -> dict:
    """What the vocabulary is made of (special tokens excluded from the shares)."""
    table = table or TokenTable(tokenizer)
    texts = [
        data.decode("utf-8", errors="ignore")
        for i, data in table.surfaces.items()
        if not table.special[i]
    ]
    counted = max(len(texts), 1)
    cjk = sum(1 for t in texts if CJK.search(t))
    latin = sum(1 for t in texts if LATIN.search(t))
    digit_counts = [sum(ch.isascii() and ch.isdigit() for ch in t) for t in texts]
    return {
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "special_tokens": int(table.special.sum()),
        "cjk_share": cjk / counted,
        "latin_share": latin / counted,
        "digit_tokens": sum(1 for n in digit_counts if n),
        "max_digits_in_a_token": max(digit_counts, default=0),
        "byte_pieces": int(
            sum(table.byte_piece[i] for i in table.surfaces if not table.special[i])
        ),
    }


def corpus_report(
    tokenizer: Tokenizer, documents: Sequence[str], table: TokenTable | None = None
) -> dict:
    """Compression and coverage figures of one corpus (see the module docstring)."""
    table = table or TokenTable(tokenizer)
    chars = bytes_ = tokens = zh_chars = zh_tokens = unk = byte_pieces = 0
    encodings = tokenizer.encode_batch(list(documents), add_special_tokens=False)
    for doc, encoding in zip(documents, encodings, strict=True):
        ids = np.asarray(encoding.ids, dtype=np.int64)
        chars += len(doc)
        bytes_ += len(doc.encode("utf-8"))
        tokens += ids.size
        if ids.size == 0:
            continue
        if table.unk_id is not None:
            unk += int((ids == table.unk_id).sum())
        known = ids[ids < table.size]
        byte_pieces += int(table.byte_piece[known].sum())
        codepoints = np.frombuffer(doc.encode("utf-32-le"), dtype=np.uint32)
        mask = _cjk_mask(codepoints)
        ideographs = int(mask.sum())
        if ideographs:
            zh_chars += ideographs
            before = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
            offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
            zh_tokens += int((before[offsets[:, 1]] > before[offsets[:, 0]]).sum())
    distinct = sorted(set().union(*map(set, documents))) if documents else []
    single = _single_token_chars(tokenizer, distinct)
    distinct_zh = [ch for ch in distinct if CJK.match(ch)]
    return {
        "documents": len(documents),
        "chars": chars,
        "bytes": bytes_,
        "tokens": tokens,
        "chars_per_token": chars / tokens if tokens else None,
        "bytes_per_token": bytes_ / tokens if tokens else None,
        "zh_chars": zh_chars,
        "zh_tokens": zh_tokens,
        "zh_chars_per_token": zh_chars / zh_tokens if zh_tokens else None,
        "unk_share": unk / tokens if tokens else 0.0,
        "byte_piece_share": byte_pieces / tokens if tokens else 0.0,
        "distinct_chars": len(distinct),
        "char_coverage": sum(single[ch] for ch in distinct) / len(distinct) if distinct else None,
        "distinct_zh_chars": len(distinct_zh),
        "zh_char_coverage": (
            sum(single[ch] for ch in distinct_zh) / len(distinct_zh) if distinct_zh else None
        ),
    }


def _single_token_chars(tokenizer: Tokenizer, chars: Sequence[str]) -> dict[str, bool]:
    encodings = tokenizer.encode_batch(list(chars), add_special_tokens=False)
    return {ch: len(e.ids) == 1 for ch, e in zip(chars, encodings, strict=True)}


def probe(tokenizer: Tokenizer, texts: Sequence[str], table: TokenTable | None = None) -> dict:
    """Each probe string as the pieces it encodes to (bytes of partial pieces as `\\xNN`)."""
    table = table or TokenTable(tokenizer)
    result = {}
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        result[text] = [table.text(i) for i in ids]
    return result


def tokenization_report(
    tokenizer: Tokenizer,
    corpora: Mapping[str, Sequence[str]],
    *,
    probes: Sequence[str] = (),
    layout: dict | None = None,
) -> dict:
    """The vocabulary report, one corpus report per named corpus, and the probes' pieces.

    Probes default to `DIGIT_PROBES` plus the layout's domain tokens.
    """
    table = TokenTable(tokenizer)
    domain = list((layout or {}).get("domain_tokens") or {})
    return {
        "vocabulary": vocabulary_report(tokenizer, table),
        "layout": _layout_summary(layout) if layout else None,
        "corpora": {name: corpus_report(tokenizer, docs, table) for name, docs in corpora.items()},
        "digits": probe(tokenizer, DIGIT_PROBES, table),
        "probes": probe(tokenizer, list(dict.fromkeys([*domain, *probes])), table),
    }


def _layout_summary(layout: dict) -> dict:
    keys = ("model", "vocab_size", "padded_vocab_size", "pad_to_multiple_of", "spare_rows")
    return {key: layout.get(key) for key in keys}


def format_report(report: dict) -> str:
    """The report as a few aligned tables for a terminal."""
    lines = []
    vocab = report["vocabulary"]
    lines.append(
        f"vocabulary: {vocab['vocab_size']:,} ids ({vocab['special_tokens']} special); "
        f"CJK {vocab['cjk_share']:.1%}, Latin {vocab['latin_share']:.1%}; "
        f"most digits in a token: {vocab['max_digits_in_a_token']}; "
        f"byte pieces: {vocab['byte_pieces']}"
    )
    if layout := report.get("layout"):
        spare = layout.get("spare_rows") or {}
        lines.append(
            f"layout: {layout['model']}, padded to {layout['padded_vocab_size']:,} "
            f"(multiple of {layout['pad_to_multiple_of']}); spare rows {spare.get('total')} "
            f"= {spare.get('reserved')} reserved + {spare.get('padding')} padding"
        )
    header = (
        f"{'corpus':<10}{'MB':>8}{'tokens':>12}{'chars/tok':>11}{'zh/tok':>8}"
        f"{'bytes/tok':>11}{'unk':>7}{'bytepc':>8}{'chars1':>8}{'zh1':>8}"
    )
    lines += ["", header]
    for name, row in report["corpora"].items():
        lines.append(
            f"{name:<10}{row['bytes'] / 1e6:>8.2f}{row['tokens']:>12,}"
            f"{_num(row['chars_per_token']):>11}{_num(row['zh_chars_per_token']):>8}"
            f"{_num(row['bytes_per_token']):>11}{row['unk_share']:>7.1%}"
            f"{row['byte_piece_share']:>8.1%}{_pct(row['char_coverage']):>8}"
            f"{_pct(row['zh_char_coverage']):>8}"
        )
    lines.append(
        "zh/tok: ideographs per token that covers one; bytepc: byte pieces; chars1 / zh1: "
        "distinct characters / ideographs that are one token"
    )
    for title, probes in (("digits", report["digits"]), ("probes", report["probes"])):
        if probes:
            lines += ["", f"{title}:"]
            lines += [f"  {text!r:<16} → {' | '.join(pieces)}" for text, pieces in probes.items()]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
