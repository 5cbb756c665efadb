"""Token streams per channel, mixed by stage weights, addressed by position alone.

Every channel is one flat token stream: an embedded corpus (`embedded://code|en|zh`, built
from what Python and jieba ship, tokenized once and cached on disk) or a Megatron `.bin/.idx`
dataset (its documents concatenated, memory-mapped). The last ~1% of each stream is held out
for evaluation and never sampled for training.

Sample `j` of global batch `k` is a pure function of `(seed, k, j)` and the stage's weights:
a counter-based hash picks its channel by weight and a window start uniformly in that
channel's training region. There is no iterator state, so a resume at step `t` rebuilds
exactly the batches the first attempt saw, whatever the data-parallel size, and a skip range
(see `batch_index`) drops exactly the batches it names.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import sysconfig
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from trainer.ranges import batch_index, merge_ranges
from trainer.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "Batch",
    "ChannelSpec",
    "MixtureDataset",
    "batch_index",
    "counter_hash",
    "embedded_cache_path",
    "embedded_corpus",
    "embedded_documents",
    "encode_documents",
    "indexed_stream",
    "load_stream",
    "load_tokenizer",
    "merge_ranges",
    "micro_batches",
    "shard",
    "write_indexed_dataset",
]

DATA_VERSION = 1
"""Bump when an embedded corpus's construction changes; it is part of every cache key."""
EMBEDDED_CORPORA = ("code", "en", "zh")
EMBEDDED_SCHEME = "embedded://"
INDEXED_SCHEME = "indexed://"
DEFAULT_CACHE_DIR = Path("~/.cache/pretrain-orchestrator/corpora")
EVAL_FRACTION = 0.01
"""Share of each stream's tail held out for evaluation (at least enough for the eval windows)."""

# Parts of the standard library that are generated tables, legacy or GUI code, or the `en`
# corpus itself; leaving them out keeps `code` at a few MB of ordinary Python.
_CODE_SKIP_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "__pycache__",
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "encodings",
        "pydoc_data",
        "distutils",
        "lib2to3",
        "tkinter",
        "turtledemo",
        "ensurepip",
    }
)
_ZH_SEED = 20240611
_ZH_SENTENCES = 36_000
_ZH_COMMA_PROBABILITY = 0.12


# --------------------------------------------------------------------------- corpora


def encode_documents(tokenizer: Tokenizer, documents: Sequence[str]) -> np.ndarray:
    """Tokenize documents into one flat array, each document followed by `eos_id`."""
    fast = getattr(tokenizer, "encode_documents", None)
    if fast is not None:
        return fast(documents)
    dtype = _token_dtype(tokenizer.vocab_size)
    pieces = [
        np.asarray([*tokenizer.encode(doc), tokenizer.eos_id], dtype=dtype) for doc in documents
    ]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def embedded_documents(name: str) -> list[str]:
    """The documents of one embedded corpus, in a fixed order."""
    if name == "code":
        return _code_documents()
    if name == "en":
        return _en_documents()
    if name == "zh":
        return _zh_documents()
    raise ValueError(f"unknown embedded corpus {name!r}; expected one of {EMBEDDED_CORPORA}")


def embedded_corpus(
    name: str, tokenizer: Tokenizer, cache_dir: str | Path | None = None
) -> np.ndarray:
    """The token stream of an embedded corpus, memory-mapped from the on-disk cache.

    The first call in a cache directory tokenizes and writes `<name>-<tokenizer>-v<N>-<src>.npy`
    atomically (temporary file, then rename), so ranks racing to build it never read a
    partial file; every later call only maps it.
    """
    path = embedded_cache_path(name, tokenizer, cache_dir)
    if not path.exists():
        tokens = encode_documents(tokenizer, embedded_documents(name))
        _save_atomically(path, tokens)
    return np.load(path, mmap_mode="r")


def embedded_cache_path(name: str, tokenizer: Tokenizer, cache_dir: str | Path | None) -> Path:
    """Where `embedded_corpus` caches a corpus: keyed by corpus, tokenizer and source version."""
    if name not in EMBEDDED_CORPORA:
        raise ValueError(f"unknown embedded corpus {name!r}; expected one of {EMBEDDED_CORPORA}")
    source = _embedded_source_version(name)
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    folder = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    return folder / f"{name}-{tokenizer.name}-v{DATA_VERSION}-{digest}.npy"


def _embedded_source_version(name: str) -> str:
    if name == "zh":
        import jieba

        return f"jieba-{jieba.__version__}-{_ZH_SEED}-{_ZH_SENTENCES}"
    return f"python-{sys.version.split()[0]}"


def _save_atomically(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as stream:
            np.save(stream, array)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _code_documents() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    documents = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in _CODE_SKIP_DIRS)
        for file in sorted(files):
            if file.endswith(".py"):
                raw = (Path(folder) / file).read_bytes()
                documents.append(raw.decode("utf-8", errors="replace"))
    return documents


def _en_documents() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _zh_documents() -> list[str]:
    """Sentences of 8-30 words drawn by frequency from jieba's dictionary, seeded."""
    words, frequencies = _jieba_words()
    rng = np.random.Generator(np.random.Philox(key=_ZH_SEED))
    cdf = np.cumsum(frequencies, dtype=np.float64)
    cdf /= cdf[-1]
    sentence_lengths = rng.integers(8, 31, size=_ZH_SENTENCES)
    word_ids = np.searchsorted(cdf, rng.random(int(sentence_lengths.sum())), side="right")
    punctuation = np.where(rng.random(word_ids.size) < _ZH_COMMA_PROBABILITY, "，", "")
    sentence_ends = np.cumsum(sentence_lengths)
    punctuation = punctuation.astype(object)
    punctuation[sentence_ends - 1] = "。"
    pieces = np.empty(2 * word_ids.size, dtype=object)
    pieces[0::2] = np.asarray(words, dtype=object)[np.minimum(word_ids, len(words) - 1)]
    pieces[1::2] = punctuation
    documents = []
    sentence = 0
    while sentence < _ZH_SENTENCES:
        count = int(rng.integers(4, 17))
        first = int(sentence_ends[sentence - 1]) if sentence else 0
        last = int(sentence_ends[min(sentence + count, _ZH_SENTENCES) - 1])
        documents.append("".join(pieces[2 * first : 2 * last]))
        sentence += count
    return documents


def _jieba_words() -> tuple[list[str], np.ndarray]:
    """Words of jieba's dict.txt (`word freq pos` per line) that are all CJK ideographs."""
    import jieba

    text = (Path(jieba.__file__).parent / "dict.txt").read_text(encoding="utf-8")
    words, frequencies = [], []
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) >= 2 and all("\u4e00" <= ch <= "\u9fff" for ch in parts[0]):
            words.append(parts[0])
            frequencies.append(int(parts[1]))
    return words, np.asarray(frequencies, dtype=np.float64)


def _token_dtype(vocab_size: int) -> type[np.integer]:
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


# --------------------------------------------------------------------------- indexed datasets


def write_indexed_dataset(
    prefix: str | Path, documents: Iterable[str], tokenizer: Tokenizer
) -> Path:
    """Write documents as a Megatron `<prefix>.bin/.idx` pair, each ending in eos."""
    from megatron.core.datasets.indexed_dataset import (
        IndexedDatasetBuilder,
        get_bin_path,
        get_idx_path,
    )

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    dtype = _token_dtype(tokenizer.vocab_size)
    builder = IndexedDatasetBuilder(get_bin_path(str(prefix)), dtype=dtype)
    for document in documents:
        tokens = encode_documents(tokenizer, [document]).astype(dtype)
        builder.add_document(tokens, [tokens.size])
    builder.finalize(get_idx_path(str(prefix)))
    return prefix


def indexed_stream(prefix: str | Path) -> np.ndarray:
    """All documents of a Megatron `.bin/.idx` dataset as one flat memmap (no copy).

    The index is read with megatron-core's `IndexedDataset`; its sequences lie back to back
    in the `.bin`, so the stream is that file mapped from the first sequence on.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset, get_bin_path

    prefix = str(prefix)
    if not IndexedDataset.exists(prefix):
        raise FileNotFoundError(f"no {prefix}.bin/.idx pair")
    dataset = IndexedDataset(prefix, mmap=True)
    lengths = dataset.sequence_lengths
    if len(lengths) == 0:
        raise ValueError(f"indexed dataset {prefix} is empty")
    dtype = np.dtype(dataset.index.dtype)
    first, last = int(dataset.index.sequence_pointers[0]), int(dataset.index.sequence_pointers[-1])
    total = int(lengths.sum(dtype=np.int64))
    if last + int(lengths[-1]) * dtype.itemsize != first + total * dtype.itemsize:
        raise ValueError(f"indexed dataset {prefix} is not contiguous in its .bin")
    stream = np.memmap(get_bin_path(prefix), dtype=dtype, mode="r", offset=first, shape=(total,))
    del dataset
    return stream


def load_stream(path: str, tokenizer: Tokenizer, cache_dir: str | Path | None = None) -> np.ndarray:
    """A channel's token stream from `embedded://<name>`, `indexed:///<prefix>` or a prefix.

    Indexed datasets must have been tokenized with the run's tokenizer; that is not checked
    (it would read the whole corpus).
    """
    if path.startswith(EMBEDDED_SCHEME):
        return embedded_corpus(path.removeprefix(EMBEDDED_SCHEME), tokenizer, cache_dir)
    prefix = path.removeprefix(INDEXED_SCHEME)
    for extension in (".bin", ".idx"):
        prefix = prefix.removesuffix(extension)
    return indexed_stream(prefix)


# --------------------------------------------------------------------------- sampling

Batch = dict[str, torch.Tensor]
"""`tokens` [B, S] int64, `labels` [B, S] int64 (tokens shifted left by one), `loss_mask`
[B, S] float32 (all ones: windows never need padding), `channel` [B] int64: ids into the run's
channel registry (`MixtureDataset.channel_names`), the same for every stage."""


class ChannelSpec(NamedTuple):
    name: str
    path: str
    weight: float
    corrupt: Sequence[Sequence[int]] = ()
    """Global batch-index ranges `[start, end)` whose samples of this channel are garbage."""
    corrupt_kind: str = "random"
    """What garbage: `random` ids (the loss spikes) or `newlines`, one newline id repeated
    (the loss collapses: a drop)."""


def shard(batch: Batch, dp_rank: int, dp_size: int) -> Batch:
    """Data-parallel rank `dp_rank`'s rows `[rank*B/dp, (rank+1)*B/dp)` of a global batch."""
    size = batch["tokens"].shape[0]
    if dp_size <= 0 or size % dp_size:
        raise ValueError(f"global batch of {size} does not split over {dp_size} ranks")
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank {dp_rank} out of range for dp_size {dp_size}")
    per_rank = size // dp_size
    return {
        key: value[dp_rank * per_rank : (dp_rank + 1) * per_rank] for key, value in batch.items()
    }


def micro_batches(batch: Batch, micro_batch_size: int) -> list[Batch]:
    """Consecutive micro-batches of `micro_batch_size` rows (which must divide the batch)."""
    size = batch["tokens"].shape[0]
    if micro_batch_size <= 0 or size % micro_batch_size:
        raise ValueError(f"batch of {size} does not split into micro-batches of {micro_batch_size}")
    return [
        {key: value[i : i + micro_batch_size] for key, value in batch.items()}
        for i in range(0, size, micro_batch_size)
    ]


CORRUPT_KINDS = ("random", "newlines")

# Purposes keep the hash streams of different decisions independent.
_CHANNEL_DRAW, _WINDOW_START, _GARBAGE = 1, 2, 3
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection on uint64 that scrambles every bit."""
    x = (x ^ (x >> 30)) * _MIX1
    x = (x ^ (x >> 27)) * _MIX2
    return x ^ (x >> 31)


def counter_hash(*words: int | np.ndarray) -> np.ndarray:
    """A uint64 hash of a tuple of counters, vectorised over broadcast arrays (1-d at least)."""
    arrays = [np.atleast_1d(np.asarray(w).astype(np.uint64)) for w in words]
    h = np.zeros(np.broadcast_shapes(*(a.shape for a in arrays)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for word in arrays:
            h = _mix64(h ^ _mix64(word + _GOLDEN))
    return h


class MixtureDataset:
    """One stage's mixture over the run's channels, with random access by (batch, slot).

    Sample `j` of global batch `k`:
      * channel: drawn by the stage's weights from `counter_hash(seed, 1, k, j)`;
      * window start: `counter_hash(seed, 2, k, j) mod n`, uniform over the `n` windows of
        `seq_length + 1` tokens that fit in that channel's training region;
      * if `k` falls in one of that channel's `corrupt` ranges (`[start_batch, end_batch)`),
        the window is replaced: kind `random` by ids uniform in `[0, vocab_size)` from
        `counter_hash(seed, 3, k, j, position)` (the loss spikes), kind `newlines` by the
        tokenizer's newline id repeated (the loss collapses): a deterministic bad stretch.
    Eval windows come from each channel's held-out tail and do not depend on the seed.
    """

    def __init__(
        self,
        sources: Sequence[Sequence],
        *,
        seq_length: int,
        seed: int,
        tokenizer: Tokenizer,
        channel_names: Sequence[str] | None = None,
        cache_dir: str | Path | None = None,
        eval_samples_per_channel: int = 16,
    ) -> None:
        """`sources` are `(name, path, weight)`, optionally `+ (corrupt_ranges, corrupt_kind)`.

        `channel_names` is the run's channel registry: every channel of every stage in order
        of first appearance, so a channel's id does not change at a stage boundary.
        """
        specs = [ChannelSpec(str(s[0]), str(s[1]), float(s[2]), *s[3:]) for s in sources]
        names = [spec.name for spec in specs]
        if not specs or len(set(names)) != len(names):
            raise ValueError(f"channels must be non-empty with unique names, got {names}")
        self.channel_names = tuple(channel_names if channel_names is not None else names)
        if unknown := [n for n in names if n not in self.channel_names]:
            raise ValueError(f"channels {unknown} are missing from the channel registry")
        weights = np.asarray([spec.weight for spec in specs], dtype=np.float64)
        if (weights < 0).any() or not math.isfinite(weights.sum()) or weights.sum() <= 0:
            raise ValueError(f"channel weights must be >= 0 with a positive sum, got {weights}")
        if seq_length <= 0:
            raise ValueError(f"seq_length must be positive, got {seq_length}")
        self.seq_length = seq_length
        self.seed = seed % 2**64
        self.vocab_size = tokenizer.vocab_size
        self.eval_samples_per_channel = eval_samples_per_channel
        self.specs = specs
        self._cdf = np.cumsum(weights / weights.sum())
        self._cdf[-1] = 1.0
        self._ids = np.asarray([self.channel_names.index(n) for n in names], dtype=np.int64)
        self._corrupt = [merge_ranges(spec.corrupt) for spec in specs]
        if unknown := {spec.corrupt_kind for spec in specs} - set(CORRUPT_KINDS):
            raise ValueError(f"corrupt kinds must be among {CORRUPT_KINDS}, got {sorted(unknown)}")
        self.newline_id = tokenizer.encode("\n")[-1]
        self._streams = [load_stream(spec.path, tokenizer, cache_dir) for spec in specs]
        self._eval_start = np.asarray(
            [self._split(spec.name, s) for spec, s in zip(specs, self._streams, strict=True)],
            dtype=np.int64,
        )
        self._window_counts = (self._eval_start - self.window + 1).astype(np.uint64)

    @property
    def window(self) -> int:
        """Tokens per sample: `seq_length` inputs plus the one extra label."""
        return self.seq_length + 1

    def _split(self, name: str, stream: np.ndarray) -> int:
        eval_windows = max(self.eval_samples_per_channel, 1)
        held_out = max(math.ceil(len(stream) * EVAL_FRACTION), eval_windows * self.window)
        eval_start = len(stream) - held_out
        if eval_start < self.window:
            raise ValueError(
                f"channel {name!r} has {len(stream)} tokens: too few for a training window of "
                f"{self.window} besides {held_out} held-out tokens"
            )
        return eval_start

    def train_region(self, name: str) -> tuple[int, int]:
        """Half-open token range of the channel's stream that training windows come from."""
        return 0, int(self._eval_start[self._local(name)])

    def eval_region(self, name: str) -> tuple[int, int]:
        """Half-open token range held out for evaluation: the stream's tail."""
        local = self._local(name)
        return int(self._eval_start[local]), len(self._streams[local])

    def stream(self, name: str) -> np.ndarray:
        return self._streams[self._local(name)]

    def _local(self, name: str) -> int:
        for local, spec in enumerate(self.specs):
            if spec.name == name:
                return local
        raise KeyError(f"channel {name!r} is not in this stage")

    def plan(self, k: int, slots: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Per slot of global batch `k`: (index into this stage's sources, window start)."""
        slots = np.asarray(slots, dtype=np.int64)
        draw = counter_hash(self.seed, _CHANNEL_DRAW, k, slots)
        unit = (draw >> 11).astype(np.float64) * 2.0**-53
        local = np.searchsorted(self._cdf, unit, side="right")
        starts = counter_hash(self.seed, _WINDOW_START, k, slots) % self._window_counts[local]
        return local, starts.astype(np.int64)

    def batch(self, k: int, global_batch_size: int) -> Batch:
        """Global batch `k` with `global_batch_size` rows; row `j` depends only on (seed, k, j)."""
        if k < 0:
            raise ValueError(f"batch index must be >= 0, got {k}")
        slots = np.arange(global_batch_size, dtype=np.int64)
        local, starts = self.plan(k, slots)
        windows = np.empty((global_batch_size, self.window), dtype=np.int64)
        offsets = np.arange(self.window, dtype=np.int64)
        for c in np.unique(local):
            rows = np.flatnonzero(local == c)
            if any(a <= k < b for a, b in self._corrupt[c]):
                if self.specs[c].corrupt_kind == "newlines":
                    windows[rows] = self.newline_id
                else:
                    garbage = counter_hash(self.seed, _GARBAGE, k, rows[:, None], offsets[None, :])
                    windows[rows] = garbage % np.uint64(self.vocab_size)
            else:
                windows[rows] = self._streams[c][starts[rows, None] + offsets]
        return self._to_batch(windows, self._ids[local])

    def eval_windows(self, name: str, samples: int | None = None) -> np.ndarray:
        """Start offsets of the channel's fixed eval windows, evenly spaced over its eval region."""
        samples = self.eval_samples_per_channel if samples is None else samples
        start, end = self.eval_region(name)
        span = end - start - self.window
        return start + (np.arange(samples, dtype=np.int64) * span) // max(samples - 1, 1)

    def eval_batch(self, samples_per_channel: int | None = None) -> Batch:
        """Every fixed eval window, channel by channel in this stage's source order."""
        offsets = np.arange(self.window, dtype=np.int64)
        windows, channel = [], []
        for local, spec in enumerate(self.specs):
            starts = self.eval_windows(spec.name, samples_per_channel)
            windows.append(self._streams[local][starts[:, None] + offsets].astype(np.int64))
            channel.append(np.full(len(starts), self._ids[local], dtype=np.int64))
        return self._to_batch(np.concatenate(windows), np.concatenate(channel))

    def eval_batches(
        self, micro_batch_size: int, samples_per_channel: int | None = None
    ) -> Iterator[Batch]:
        """`eval_batch` in micro-batches of `micro_batch_size` rows; the last may be short."""
        batch = self.eval_batch(samples_per_channel)
        for first in range(0, batch["tokens"].shape[0], micro_batch_size):
            yield {key: value[first : first + micro_batch_size] for key, value in batch.items()}

    def _to_batch(self, windows: np.ndarray, channel: np.ndarray) -> Batch:
        tokens = torch.from_numpy(windows)
        return {
            "tokens": tokens[:, :-1].contiguous(),
            "labels": tokens[:, 1:].contiguous(),
            "loss_mask": torch.ones(tokens.shape[0], self.seq_length, dtype=torch.float32),
            "channel": torch.from_numpy(np.ascontiguousarray(channel)),
        }
