"""How many tokens a data source holds, when the service can tell without the trainer.

The planner's data accounting (`service.planner.data`) divides the tokens a plan takes from
each source by its size. The size comes from, in order:

- a local prepared dataset `<prefix>.bin/.idx` (the prefix, optionally with `indexed://` in
  front or a `.bin`/`.idx` suffix, relative paths under the data root): the sidecar
  `<prefix>.json` the data preparation job writes (`{"format": "pretrain-data/1",
  "tokens": …, "documents": …, "tokenizer": …}`), else the sum of the sequence lengths in the
  `.idx` (Megatron's index format, read here with numpy alone: the service never imports
  torch or megatron);
- an embedded corpus with the default byte tokenizer: the table `service.embedded_sizes`
  (with any other tokenizer its size is unknown);
- anything else (`s3://`, a path this process cannot read, a malformed index): unknown, with
  the reason. Never an error: planning goes on without the figure.

Summing an index's lengths reads 4 bytes per sequence, so a summed index is cached by its
path, modification time and size: one plan, or a thousand plans of specs that name the same
sources, read a huge index once.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat as stat_module
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from service.embedded_sizes import BASIS as EMBEDDED_BASIS
from service.embedded_sizes import BYTE_TOKENIZER_SIZES
from service.spec.data import EMBEDDED_CORPUS_PREFIXES
from service.spec.paths import PathPolicy
from service.spec.problems import Problem, problem
from trainer.corpora import INDEXED_SCHEME, SIDECAR_FORMAT
from trainer.tokenizer import fingerprint

if TYPE_CHECKING:
    from service.spec.job import JobSpec

# Megatron's `_INDEX_HEADER`, then `<Q` version 1, `<B` dtype code, `<Q` sequence count and
# `<Q` document count (entries of `document_indices`: documents + 1), then the int32 lengths.
INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
INDEX_HEADER = struct.Struct("<9sQBQQ")
# megatron.core.datasets.indexed_dataset.DType: code -> bytes per token.
INDEX_DTYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}
# Lengths summed per read, so a huge index never sits in memory whole (64 MiB of int32).
SUM_CHUNK = 1 << 24
CACHE_ENTRIES = 1024

Basis = Literal["sidecar", "index", "embedded", "unknown"]


@dataclass(frozen=True)
class SourceSize:
    """A source's size in tokens (None when unknown), where the figure came from and a note:
    why it is unknown, or what it was counted with."""

    tokens: int | None
    documents: int | None
    basis: Basis
    note: str
    key: str | None = None
    """What the source is, however a spec spells it (a local prefix, `embedded://<name>`)."""
    tokenizer: str | None = None
    """The tokenizer the sidecar says the pair was prepared with."""


class IndexUnreadable(ValueError):
    """A `.idx` that is not a Megatron index this reader understands."""


def source_size(
    path: str, *, data_root: str, byte_tokenizer: bool, policy: PathPolicy | None = None
) -> SourceSize:
    """The size of one spec data source; `byte_tokenizer`: the job uses the default tokenizer.

    With a `policy`, the sidecar and the index are read only where they lie under its roots
    once symlinks are resolved: the spec's path passed the same check, but `<prefix>.idx` is
    another file, and a link there must not make the service read outside the roots.
    """
    for prefix in EMBEDDED_CORPUS_PREFIXES:
        if path.startswith(prefix):
            name = path[len(prefix) :]
            return replace(_embedded(name, byte_tokenizer), key=f"embedded://{name}")
    if "://" in path and not path.startswith(INDEXED_SCHEME):
        scheme = path.split("://", 1)[0]
        return _unknown(f"{scheme}:// is not read by the service")
    prefix = local_prefix(path, data_root)
    return replace(_local(prefix, policy), key=prefix)


def _local(prefix: str, policy: PathPolicy | None) -> SourceSize:
    if policy is not None:
        for extension in (".json", ".idx"):
            if (reason := policy.problem(prefix + extension, base=policy.data_root)) is not None:
                return _unknown(f"not read: {reason}")
    try:
        sidecar = _read_sidecar(prefix + ".json")
        if sidecar is not None:
            return sidecar
        documents, tokens = index_size(prefix + ".idx")
    except FileNotFoundError:
        return _unknown(f"no {prefix}.idx readable by the service")
    except (OSError, IndexUnreadable) as exc:
        return _unknown(f"{prefix}.idx could not be read: {exc}")
    return SourceSize(tokens, documents, "index", f"sequence lengths summed from {prefix}.idx")


def local_prefix(path: str, data_root: str) -> str:
    """The absolute dataset prefix a local source names, as the trainer resolves it."""
    prefix = path.removeprefix(INDEXED_SCHEME)
    for extension in (".bin", ".idx"):
        prefix = prefix.removesuffix(extension)
    return posixpath.normpath(posixpath.join(data_root, prefix))


def _embedded(name: str, byte_tokenizer: bool) -> SourceSize:
    if not byte_tokenizer:
        return _unknown("embedded corpora are sized for the byte tokenizer only")
    if name not in BYTE_TOKENIZER_SIZES:
        return _unknown(f"unknown embedded corpus {name!r}")
    documents, tokens = BYTE_TOKENIZER_SIZES[name]
    return SourceSize(tokens, documents, "embedded", EMBEDDED_BASIS)


def _unknown(note: str) -> SourceSize:
    return SourceSize(None, None, "unknown", note)


def _read_sidecar(path: str) -> SourceSize | None:
    """The sidecar's figures; None when there is none or it is not one we read (the index is
    counted instead)."""
    try:
        with _open_regular(path) as stream:
            raw = stream.read(1 << 20)
    except FileNotFoundError:
        return None
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(document, dict) or document.get("format") != SIDECAR_FORMAT:
        return None
    tokens, documents = document.get("tokens"), document.get("documents")
    if not _count(tokens):
        return None
    tokenizer = document.get("tokenizer")
    tokenizer = tokenizer if isinstance(tokenizer, str) else None
    note = f"from {path}" + (f" (tokenizer {tokenizer})" if tokenizer else "")
    return SourceSize(tokens, documents if _count(documents) else None, "sidecar", note, tokenizer=tokenizer)


def _open_regular(path: str):
    """Open a regular file for reading; a FIFO or device never blocks or streams the plan."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat_module.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IndexUnreadable(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_cache: OrderedDict[tuple[str, int, int], tuple[int, int]] = OrderedDict()
_cache_lock = threading.Lock()


def index_size(idx_path: str) -> tuple[int, int]:
    """(documents, tokens) of a Megatron `.idx`: its document count and the sum of its
    sequence lengths, cached by path, modification time and size."""
    with _open_regular(idx_path) as stream:
        stat = os.fstat(stream.fileno())
        key = (os.path.realpath(idx_path), stat.st_mtime_ns, stat.st_size)
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key]
        found = _read_index(stream, stat.st_size)
    with _cache_lock:
        _cache[key] = found
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return found


def _read_index(stream, file_size: int) -> tuple[int, int]:
    header = stream.read(INDEX_HEADER.size)
    if len(header) < INDEX_HEADER.size:
        raise IndexUnreadable("shorter than an index header")
    magic, version, code, sequences, document_entries = INDEX_HEADER.unpack(header)
    if magic != INDEX_MAGIC:
        raise IndexUnreadable("not a Megatron index (bad magic)")
    if version != INDEX_VERSION:
        raise IndexUnreadable(f"index version {version}, this reader knows {INDEX_VERSION}")
    if code not in INDEX_DTYPE_SIZES:
        raise IndexUnreadable(f"unknown dtype code {code}")
    # lengths (int32), pointers (int64), document indices (int64) follow the header.
    needed = INDEX_HEADER.size + sequences * (4 + 8) + document_entries * 8
    if needed > file_size:
        raise IndexUnreadable(f"truncated: {sequences} sequences need {needed} bytes, found {file_size}")
    total = 0
    left = sequences
    while left:
        chunk = np.fromfile(stream, dtype="<i4", count=min(left, SUM_CHUNK))
        if chunk.size == 0:
            raise IndexUnreadable("truncated sequence lengths")
        total += int(chunk.sum(dtype=np.int64))
        left -= chunk.size
    return max(document_entries - 1, 0), total


def clear_cache() -> None:
    """Forget every summed index (tests)."""
    with _cache_lock:
        _cache.clear()


def sizes_for(spec: JobSpec, policy: PathPolicy) -> dict[str, SourceSize]:
    """The size of every data source a pretraining spec names, by its path in the spec, read
    only under the policy's roots."""
    byte_tokenizer = spec.tokenizer is None
    return {
        source.path: source_size(
            source.path, data_root=policy.data_root, byte_tokenizer=byte_tokenizer, policy=policy
        )
        for stage in spec.stages
        for source in stage.data
    }


def source_problems(spec: JobSpec, policy: PathPolicy, sizes: dict[str, SourceSize]) -> list[Problem]:
    """Local sources the trainer could not open, found at submit where the service sees the data
    volume (its data root is a directory here): a missing pair, or a pair whose sidecar names
    another tokenizer than the job's. `sizes` are `sizes_for`'s. Elsewhere (an API without the
    volume, object stores) the trainer finds out and ends the attempt naming the source."""
    if not os.path.isdir(policy.data_root):
        return []
    expected = _tokenizer_fingerprint(spec, policy)
    problems = []
    for i, stage in enumerate(spec.stages):
        for j, source in enumerate(stage.data):
            size = sizes[source.path]
            if size.key is None or size.key.startswith("embedded://") or size.note.startswith("not read:"):
                continue  # another scheme, an embedded corpus, or a path the path rules refuse
            loc = ["stages", i, "data", j, "path"]
            missing = [ext for ext in (".bin", ".idx") if not os.path.isfile(size.key + ext)]
            if missing:
                problems.append(problem(
                    loc, f"no {size.key}{missing[0]}: prepare the source with a kind: data job, or "
                    "check the path (relative paths are under the data root)",
                ))  # fmt: skip
            elif expected is not None and size.tokenizer is not None and size.tokenizer != expected:
                problems.append(problem(
                    loc, f"{size.key} was prepared with tokenizer {size.tokenizer!r}, but this job "
                    f"uses {expected!r}: prepare it again with the job's tokenizer",
                ))  # fmt: skip
    return problems


def _tokenizer_fingerprint(spec: JobSpec, policy: PathPolicy) -> str | None:
    """The name the trainer gives the job's tokenizer: "byte", or `trainer.tokenizer.fingerprint`
    of its tokenizer.json; None when the service cannot read that."""
    if spec.tokenizer is None:
        return "byte"
    folder = posixpath.normpath(posixpath.join(policy.data_root, spec.tokenizer.path))
    file = folder if folder.endswith(".json") else posixpath.join(folder, "tokenizer.json")
    if "://" in spec.tokenizer.path or policy.problem(file, base=policy.data_root) is not None:
        return None
    try:
        return fingerprint(file)
    except OSError:
        return None
