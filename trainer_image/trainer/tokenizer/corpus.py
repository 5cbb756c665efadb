"""Corpora for the tokenizer workshop, named by spec: an embedded corpus, a file or a folder.

* `embedded:code`, `embedded:en`, `embedded:zh` (or `embedded://zh`, as in trainer configs):
  the trainer's embedded corpora, the same documents `trainer.corpora` tokenizes;
* a `.jsonl` file: one document a line, its `"text"` field;
* any other file: one document, read as UTF-8 (bad bytes become U+FFFD);
* a folder: every file below it, in sorted path order, read as above (hidden files skipped).

`NAME=SPEC` names a corpus for a report; without a name, an embedded corpus is called by its
own name and a path by its stem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

EMBEDDED_PREFIXES = ("embedded://", "embedded:")


@dataclass(frozen=True)
class Corpus:
    name: str
    spec: str
    documents: tuple[str, ...]

    @property
    def bytes(self) -> int:
        return sum(len(doc.encode("utf-8")) for doc in self.documents)


def parse_named(spec: str) -> tuple[str, str]:
    """`NAME=SPEC` → (name, spec); a bare spec gets a name of its own."""
    name, sep, rest = spec.partition("=")
    if sep and name and "/" not in name and ":" not in name:
        return name, rest
    return default_name(spec), spec


def default_name(spec: str) -> str:
    for prefix in EMBEDDED_PREFIXES:
        if spec.startswith(prefix):
            return spec[len(prefix) :]
    return Path(spec).stem or spec


def load_corpus(spec: str, *, max_bytes: int | None = None, name: str | None = None) -> Corpus:
    """Documents of one corpus spec, the first `max_bytes` UTF-8 bytes of them when given."""
    documents = _documents(spec)
    if max_bytes is not None:
        documents = head_bytes(documents, max_bytes)
    return Corpus(name or default_name(spec), spec, tuple(documents))


def head_bytes(documents: tuple[str, ...] | list[str], max_bytes: int) -> tuple[str, ...]:
    """Whole documents while they fit in `max_bytes`, then the start of the next one."""
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    kept: list[str] = []
    left = max_bytes
    for doc in documents:
        size = len(doc.encode("utf-8"))
        if size <= left:
            kept.append(doc)
            left -= size
            continue
        if left > 0:
            kept.append(doc.encode("utf-8")[:left].decode("utf-8", errors="ignore"))
        break
    return tuple(kept)


def _documents(spec: str) -> tuple[str, ...]:
    for prefix in EMBEDDED_PREFIXES:
        if spec.startswith(prefix):
            return embedded(spec[len(prefix) :])
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        return tuple(doc for file in files for doc in _file_documents(file))
    if path.is_file():
        return tuple(_file_documents(path))
    raise FileNotFoundError(f"corpus {spec!r}: no such file or folder (or use embedded:NAME)")


def _file_documents(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    if path.suffix != ".jsonl":
        return [text]
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f'{path}:{number}: expected an object with a "text" string')
        documents.append(record["text"])
    return documents


@cache
def embedded(name: str) -> tuple[str, ...]:
    """The documents of the trainer's embedded corpus `name`, built once per process."""
    from trainer.corpora import EMBEDDED_CORPORA, embedded_documents

    if name not in EMBEDDED_CORPORA:
        raise ValueError(f"unknown embedded corpus {name!r}; expected one of {EMBEDDED_CORPORA}")
    return tuple(embedded_documents(name))
