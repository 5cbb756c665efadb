"""What a token stands for (its bytes), banned-token patterns, and pruning a BPE vocabulary.

Hugging Face `tokenizer.json` files are handled as plain dicts here: the edits (drop tokens
and the merges around them, append tokens and merges) are list surgery on `model.vocab` and
`model.merges`, and a dict round-trips through `tokenizers.Tokenizer.from_str` exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache

CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
"""CJK unified ideographs (with extension A, B-F and the compatibility block)."""
LATIN = re.compile("[A-Za-z\u00c0-\u024f]")
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
REGEX_PREFIX = "re:"


@cache
def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte-to-character table: printable bytes map to themselves, the rest above 255."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@cache
def _byte_level_inverse() -> dict[str, int]:
    return {char: byte for byte, char in byte_level_alphabet().items()}


def byte_level_text(text: str) -> str:
    """`text` as a byte-level BPE spells it (its UTF-8 bytes through the alphabet)."""
    alphabet = byte_level_alphabet()
    return "".join(alphabet[b] for b in text.encode("utf-8"))


def _components(node: dict | None) -> list[dict]:
    if not node:
        return []
    parts = node.get("decoders") or node.get("pretokenizers")
    if node.get("type") == "Sequence" and parts is not None:
        return [leaf for part in parts for leaf in _components(part)]
    return [node]


def is_byte_level(spec: dict) -> bool:
    """Whether a `tokenizer.json` dict spells its vocabulary in GPT-2's byte alphabet."""
    return any(part.get("type") == "ByteLevel" for part in _components(spec.get("decoder")))


def surface_decoder(spec: dict) -> Callable[[str], bytes]:
    """A function from a model-vocabulary token to the bytes of text it stands for."""
    model = spec["model"]
    if is_byte_level(spec):
        inverse = _byte_level_inverse()

        def byte_level(token: str) -> bytes:
            if all(ch in inverse for ch in token):
                return bytes(inverse[ch] for ch in token)
            return token.encode("utf-8")  # a token kept outside the byte alphabet (added)

        return byte_level
    prefix = model.get("continuing_subword_prefix") or ""
    metaspace = any(
        part.get("type") in {"Metaspace", "Replace"} for part in _components(spec.get("decoder"))
    )
    byte_fallback = bool(model.get("byte_fallback"))

    def plain(token: str) -> bytes:
        if byte_fallback and (match := _BYTE_TOKEN.match(token)):
            return bytes([int(match.group(1), 16)])
        if prefix and token.startswith(prefix) and len(token) > len(prefix):
            token = token[len(prefix) :]
        if metaspace:
            token = token.replace("\u2581", " ")
        return token.encode("utf-8")

    return plain


def token_surfaces(spec: dict) -> dict[int, bytes]:
    """Every id of a `tokenizer.json` dict mapped to the bytes it decodes to."""
    decode = surface_decoder(spec)
    surfaces = {int(i): decode(token) for token, i in _vocab_items(spec["model"])}
    for added in spec.get("added_tokens") or []:
        surfaces[int(added["id"])] = added["content"].encode("utf-8")
    return surfaces


def _vocab_items(model: dict) -> Iterable[tuple[str, int]]:
    vocab = model["vocab"]
    if isinstance(vocab, dict):
        return vocab.items()
    return ((token, i) for i, (token, _score) in enumerate(vocab))  # Unigram: [token, score]


def is_partial_utf8(data: bytes) -> bool:
    """True for a byte piece that is not whole characters (a byte-fallback token)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def printable(data: bytes) -> str:
    """Bytes as text, with any byte that is not part of a whole character shown as `\\xNN`."""
    return data.decode("utf-8", errors="backslashreplace")


def merges_of(model: dict) -> list[tuple[str, str]]:
    """A BPE model's merges as pairs, whichever of the two file formats holds them."""
    pairs = []
    for merge in model.get("merges") or []:
        if isinstance(merge, str):
            left, right = merge.split(" ", 1)
            pairs.append((left, right))
        else:
            pairs.append((merge[0], merge[1]))
    return pairs


# --------------------------------------------------------------------------- banned tokens


@dataclass(frozen=True)
class BanList:
    """Tokens to keep out of a vocabulary.

    One pattern a line: a literal bans every token whose text contains it (so banning a word
    also bans the longer tokens built on it); `re:REGEX` bans every token the regular
    expression finds a match in. Blank lines and lines starting with `#` are skipped.
    """

    literals: tuple[str, ...] = ()
    regexes: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> BanList:
        literals, regexes = [], []
        for raw in lines:
            line = raw.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line.startswith(REGEX_PREFIX):
                try:
                    regexes.append(re.compile(line[len(REGEX_PREFIX) :]))
                except re.error as error:
                    raise ValueError(
                        f"banned pattern {line!r} is not a valid regex: {error}"
                    ) from None
            else:
                literals.append(line)
        return cls(tuple(literals), tuple(regexes))

    def __bool__(self) -> bool:
        return bool(self.literals or self.regexes)

    def __len__(self) -> int:
        return len(self.literals) + len(self.regexes)

    def matches(self, text: str) -> bool:
        return any(lit in text for lit in self.literals) or any(
            rx.search(text) for rx in self.regexes
        )


@dataclass
class Pruned:
    tokens: list[str]
    """The kept tokens, in their original order."""
    merges: list[tuple[str, str]]
    removed: list[str]
    """Banned tokens and the tokens that became unreachable without them."""
    removed_merges: int
    kept_alphabet: list[str]
    """Banned tokens kept anyway: single symbols every text may need to stay encodable."""


def prune_bpe(
    tokens: Sequence[str],
    merges: Sequence[tuple[str, str]],
    banned: Callable[[str], bool],
    protected: Iterable[str] = (),
) -> Pruned:
    """Remove banned tokens, every merge that produces or uses one, and whatever that orphans.

    A merge `(a, b)` goes when `a`, `b` or `a+b` is removed; a token that no remaining merge
    produces goes too unless it is part of the alphabet (no merge ever produced it) or
    `protected`. Repeated until nothing changes, so the result is closed: every merge's inputs
    and output are in the vocabulary and no kept merge can produce a removed token.
    """
    produced_before = {a + b for a, b in merges}
    alphabet = {t for t in tokens if t not in produced_before}
    keep_always = alphabet | set(protected)
    flagged = [t for t in tokens if banned(t)]
    removed = {t for t in flagged if t not in keep_always}
    kept_merges = list(merges)
    while True:
        kept_merges = [
            (a, b)
            for a, b in kept_merges
            if a not in removed and b not in removed and a + b not in removed
        ]
        produced = {a + b for a, b in kept_merges}
        orphans = {
            t for t in tokens if t not in removed and t not in keep_always and t not in produced
        }
        if not orphans:
            break
        removed |= orphans
    return Pruned(
        tokens=[t for t in tokens if t not in removed],
        merges=kept_merges,
        removed=[t for t in tokens if t in removed],
        removed_merges=len(merges) - len(kept_merges),
        kept_alphabet=[t for t in flagged if t in keep_always],
    )
