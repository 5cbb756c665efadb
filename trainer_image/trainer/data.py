"""Training data on megatron-core's datasets: per source a `GPTDataset`, per stage a `BlendedDataset`.

Each channel reads a prepared `.bin/.idx` pair (`trainer.corpora`), one document a sequence,
each ending in EOD. Megatron's semantics, exactly:

* **split by document**: the pair's documents are cut into train/valid/test by `split` (e.g.
  "969,30,1") as Megatron does, contiguous ranges of documents; training reads only the train
  documents, evaluation only the valid ones, so no held-out document is ever trained on;
* **without replacement within an epoch**: a source's training samples are a `GPTDataset`:
  its documents shuffled and packed back to back across document boundaries into sequences of
  `seq_length + 1` tokens, and those sequences shuffled; one epoch visits each once. Epoch `e`
  is another `GPTDataset`, reshuffled with seed `seed + e` (and the stage's offset), so the
  order never depends on how long the run is;
* **blended by weight**: a stage's mixture is a `BlendedDataset` over its sources, whose
  greedy index keeps every source's count within one sample of its weight at every prefix; it
  is built for as many samples as asked and grown when more are needed, which changes no
  sample already drawn (the greedy index has no look-ahead).

Sample `n` of a stage is a pure function of `(seed, stage, n)`. Global batch `k` holds samples
`(k - first) * B ... (k - first + 1) * B - 1`, where `first` is the batch index the stage began
at, so a resume at step `t` at any data-parallel size rebuilds exactly the batches the first
attempt saw, and a skip range (see `batch_index`) drops exactly the samples of the batches it
names: they are never trained on, and the data after them is the data that would have come
next. Corrupt ranges (demo and drill faults) replace one channel's samples in named batches.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.object_storage_utils import ObjectStorageConfig
from megatron.core.datasets.utils import Split

from trainer.corpora import (
    DEFAULT_CACHE_DIR,
    EMBEDDED_CORPORA,
    S3_SCHEME,
    SourceUnavailable,
    download_index,
    embedded_documents,
    encode_documents,
    prepared_source,
    write_indexed_dataset,
)
from trainer.ranges import batch_index, merge_ranges
from trainer.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "EMBEDDED_CORPORA",
    "Batch",
    "ChannelSpec",
    "DataOptions",
    "MixtureDataset",
    "SourceUnavailable",
    "batch_index",
    "counter_hash",
    "embedded_documents",
    "encode_documents",
    "load_tokenizer",
    "merge_ranges",
    "micro_batches",
    "shard",
    "write_indexed_dataset",
]

log = logging.getLogger(__name__)
# Megatron's builders log a dozen INFO lines for every epoch built, and warn that indices are not
# cached on disk: they are built in memory on purpose (see `path_to_cache` below).
logging.getLogger("megatron.core.datasets").setLevel(logging.ERROR)

DEFAULT_SPLIT = "969,30,1"
"""Megatron-LM's default train/valid/test split of each source's documents."""
_EPOCHS_CACHED = 2
_STAGE_SEED_STRIDE = 1_000_003
"""Stage `s` shuffles with `seed + s * stride + epoch`: a source used again in a later stage is
drawn in another order rather than replayed from its first sample."""
_MIN_BLEND = 1024
S3_CHUNK_BYTES = 64 * 1024 * 1024
"""Bytes of an object-store `.bin` fetched per request (megatron's default is 256 MiB)."""


def _index_cache(cache_dir: str | Path | None) -> Path:
    """Where object-store sources' `.idx` files are cached: beside the embedded corpora's pairs."""
    return Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser() / "object-store-index"


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """How sequences are cut and masked: Megatron's options of the same names."""

    split: str = DEFAULT_SPLIT
    reset_position_ids: bool = False
    """Positions restart at 0 after each EOD inside a sequence."""
    reset_attention_mask: bool = False
    """Tokens attend only within their own document inside a packed sequence."""
    eod_mask_loss: bool = False
    """No loss on predicting from an EOD token."""
    mmap_bin_files: bool = True
    """Memory-map the `.bin` files (else read them on demand)."""


Batch = dict[str, torch.Tensor]
"""`tokens` [B, S] int64, `labels` [B, S] int64 (tokens shifted left by one), `loss_mask`
[B, S] float32, `position_ids` [B, S] int64, `channel` [B] int64: ids into the run's channel
registry (`MixtureDataset.channel_names`), the same for every stage; with
`reset_attention_mask`, also `attention_mask` [B, 1, S, S] bool (True hides)."""


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
_GARBAGE = 3
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
    """One stage's mixture over the run's channels, with random access by (batch, row).

    `sources` are `(name, path, weight)`, optionally `+ (corrupt_ranges, corrupt_kind)`;
    `channel_names` is the run's channel registry: every channel of every stage in order of
    first appearance, so a channel's id does not change at a stage boundary.
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
        options: DataOptions = DataOptions(),
        stage_index: int = 0,
    ) -> None:
        specs = [ChannelSpec(str(s[0]), str(s[1]), float(s[2]), *s[3:]) for s in sources]
        names = [spec.name for spec in specs]
        if not specs or len(set(names)) != len(names):
            raise ValueError(f"channels must be non-empty with unique names, got {names}")
        self.channel_names = tuple(channel_names if channel_names is not None else names)
        if unknown := [n for n in names if n not in self.channel_names]:
            raise ValueError(f"channels {unknown} are missing from the channel registry")
        weights = [spec.weight for spec in specs]
        if not all(w > 0 and math.isfinite(w) for w in weights):
            raise ValueError(f"channel weights must be positive and finite, got {weights}")
        if seq_length <= 0:
            raise ValueError(f"seq_length must be positive, got {seq_length}")
        if unknown := {spec.corrupt_kind for spec in specs} - set(CORRUPT_KINDS):
            raise ValueError(f"corrupt kinds must be among {CORRUPT_KINDS}, got {sorted(unknown)}")
        self.specs = specs
        self.seq_length = seq_length
        self.seed = int(seed)
        self.vocab_size = tokenizer.vocab_size
        self.newline_id = tokenizer.encode("\n")[-1]
        self.eval_samples_per_channel = eval_samples_per_channel
        self.options = options
        self._ids = np.asarray([self.channel_names.index(n) for n in names], dtype=np.int64)
        self._corrupt = [merge_ranges(spec.corrupt) for spec in specs]
        prefixes = [prepared_source(s.name, s.path, tokenizer, cache_dir) for s in specs]
        self.config = GPTDatasetConfig(
            random_seed=(self.seed + stage_index * _STAGE_SEED_STRIDE) % 2**32,
            sequence_length=seq_length,
            blend=(prefixes, weights),
            split=options.split,
            tokenizer=_TokenizerView(tokenizer),
            reset_position_ids=options.reset_position_ids,
            reset_attention_mask=options.reset_attention_mask,
            eod_mask_loss=options.eod_mask_loss,
            create_attention_mask=options.reset_attention_mask,
            mmap_bin_files=options.mmap_bin_files,
            # Not None (megatron would cache next to the data, which may be read-only, and have
            # ranks other than 0 wait for rank 0's files): empty builds the indices in memory on
            # every rank, identically, since they are a pure function of the seed.
            path_to_cache="",
        )
        self.sources = [
            _Source(spec.name, prefix, self.config, _index_cache(cache_dir))
            for spec, prefix in zip(specs, prefixes, strict=True)
        ]
        self._weights = weights
        self._blend: BlendedDataset | None = None

    @property
    def window(self) -> int:
        """Tokens per sample: `seq_length` inputs plus the one extra label."""
        return self.seq_length + 1

    # --- training samples -----------------------------------------------------------------

    def blend(self, samples: int) -> BlendedDataset:
        """The stage's `BlendedDataset`, holding at least `samples` samples."""
        if self._blend is None or len(self._blend) < samples:
            size = max(_MIN_BLEND, samples, 2 * len(self._blend) if self._blend is not None else 0)
            self._blend = BlendedDataset(
                [source.train for source in self.sources], self._weights, size, self.config
            )
        return self._blend

    def plan(self, first_sample: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """For samples `first_sample ...` of the stage: (index into this stage's sources,
        sample index within that source's epochs)."""
        blend = self.blend(first_sample + count)
        window = slice(first_sample, first_sample + count)
        return (
            np.asarray(blend.dataset_index[window], dtype=np.int64),
            np.asarray(blend.dataset_sample_index[window], dtype=np.int64),
        )

    def batch(
        self, k: int, global_batch_size: int, *, first_batch: int = 0, rows: range | None = None
    ) -> Batch:
        """Rows `rows` (default all) of global batch `k`; the stage began at batch `first_batch`."""
        if k < first_batch:
            raise ValueError(f"batch index {k} is before the stage's first batch {first_batch}")
        rows = range(global_batch_size) if rows is None else rows
        local, samples = self.plan((k - first_batch) * global_batch_size + rows.start, len(rows))
        items = []
        for row, (c, sample) in zip(rows, zip(local, samples, strict=True), strict=True):
            if any(a <= k < b for a, b in self._corrupt[c]):
                items.append(self._garbage(c, k, row))
            else:
                items.append(self.sources[c].train[int(sample)])
        return self._collate(items, self._ids[local])

    def channel_counts(self, k: int, global_batch_size: int, *, first_batch: int = 0) -> np.ndarray:
        """Samples of global batch `k` per channel of the run's registry (no sample is read)."""
        local, _ = self.plan((k - first_batch) * global_batch_size, global_batch_size)
        return np.bincount(self._ids[local], minlength=len(self.channel_names))

    def _garbage(self, c: int, k: int, row: int) -> dict[str, torch.Tensor]:
        if self.specs[c].corrupt_kind == "newlines":
            window = np.full(self.window, self.newline_id, dtype=np.int64)
        else:
            offsets = np.arange(self.window, dtype=np.int64)
            window = (counter_hash(self.seed, _GARBAGE, k, row, offsets) % np.uint64(self.vocab_size)).astype(np.int64)
        tokens = torch.from_numpy(window)
        item = {
            "tokens": tokens[:-1].clone(),
            "labels": tokens[1:].clone(),
            "loss_mask": torch.ones(self.seq_length, dtype=torch.float32),
            "position_ids": torch.arange(self.seq_length, dtype=torch.int64),
        }
        if self.options.reset_attention_mask:
            causal = torch.ones(self.seq_length, self.seq_length, dtype=torch.bool).triu(1)
            item["attention_mask"] = causal.unsqueeze(0)
        return item

    # --- held-out evaluation --------------------------------------------------------------

    def eval_batch(self, samples_per_channel: int | None = None) -> Batch:
        """The fixed held-out samples, channel by channel in this stage's source order: the
        first `samples_per_channel` of each source's valid split, shuffled by the data seed
        alone, so every stage and attempt of the job evaluates the same documents."""
        wanted = self.eval_samples_per_channel if samples_per_channel is None else samples_per_channel
        items, channel = [], []
        for local, source in enumerate(self.sources):
            held_out = source.held_out(self.seed)
            count = min(wanted, len(held_out))
            if count < wanted:
                log.warning(
                    "channel %s: its held-out documents make %d samples of %d tokens, not %d",
                    source.channel, count, self.seq_length, wanted,
                )  # fmt: skip
            items.extend(held_out[i] for i in range(count))
            channel.extend([int(self._ids[local])] * count)
        return self._collate(items, np.asarray(channel, dtype=np.int64))

    def held_out_documents(self, name: str) -> np.ndarray:
        """Document ids (in the channel's pair) that are held out: never trained on."""
        source = self.sources[self._local(name)]
        return np.concatenate([source.documents(Split.valid), source.documents(Split.test)])

    def train_documents(self, name: str) -> np.ndarray:
        return self.sources[self._local(name)].documents(Split.train)

    def _local(self, name: str) -> int:
        for local, spec in enumerate(self.specs):
            if spec.name == name:
                return local
        raise KeyError(f"channel {name!r} is not in this stage")

    def _collate(self, items: list[dict[str, torch.Tensor]], channel: np.ndarray) -> Batch:
        keys = ["tokens", "labels", "loss_mask", "position_ids"]
        if self.options.reset_attention_mask:
            keys.append("attention_mask")
        batch = {key: torch.stack([item[key] for item in items]) for key in keys}
        batch["tokens"] = batch["tokens"].long()
        batch["labels"] = batch["labels"].long()
        batch["loss_mask"] = batch["loss_mask"].float()
        batch["channel"] = torch.from_numpy(np.ascontiguousarray(channel, dtype=np.int64))
        return batch


class _TokenizerView:
    """What megatron's datasets read of a tokenizer: its EOD, vocabulary size and pad id."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.eod = tokenizer.eos_id
        self.vocab_size = tokenizer.vocab_size
        self.unique_identifiers = {"class": type(self).__name__, "name": tokenizer.name}
        pad = getattr(tokenizer, "pad_id", None)
        if pad is not None:
            self.pad = pad


class _Source:
    """One channel's pair, its documents split as Megatron splits them."""

    def __init__(self, channel: str, prefix: str, config: GPTDatasetConfig, index_cache: Path) -> None:
        self.channel = channel
        self.prefix = prefix
        self.config = config
        if prefix.startswith(S3_SCHEME):
            # megatron-core's object storage: the .idx from a local cache, the .bin in chunks.
            download_index(prefix, index_cache)
            storage = ObjectStorageConfig(path_to_idx_cache=str(index_cache), bin_chunk_nbytes=S3_CHUNK_BYTES)
            self.indexed = IndexedDataset(prefix, mmap=False, object_storage_config=storage)
        else:
            self.indexed = IndexedDataset(prefix, mmap=config.mmap_bin_files)
        self.train = _Epochs(self)
        self._held_out: GPTDataset | None = None

    def documents(self, split: Split) -> np.ndarray:
        """The documents of one split: Megatron's rounding of the split matrix."""
        bounds = self.config.split_matrix[split.value]
        if bounds is None:
            return np.zeros(0, dtype=np.int32)
        count = self.indexed.sequence_lengths.shape[0]
        begin, end = (int(round(b * float(count))) for b in bounds)
        return np.arange(begin, end, dtype=np.int32)

    def gpt_dataset(self, split: Split, seed: int) -> GPTDataset:
        documents = self.documents(split)
        if documents.size == 0:
            raise SourceUnavailable(
                self.channel, self.prefix,
                f"split {self.config.split!r} leaves its {split.name} part no document "
                f"(of {self.indexed.sequence_lengths.shape[0]})",
            )  # fmt: skip
        config = dataclasses.replace(self.config, random_seed=seed % 2**32)
        dataset = GPTDataset(self.indexed, self.prefix, documents, None, split, config)
        if len(dataset) == 0:
            tokens = int(self.indexed.sequence_lengths[documents].sum())
            raise SourceUnavailable(
                self.channel, self.prefix,
                f"its {split.name} documents hold {tokens} tokens: not one sample of "
                f"{config.sequence_length + 1}",
            )  # fmt: skip
        return dataset

    def held_out(self, seed: int) -> GPTDataset:
        if self._held_out is None:
            self._held_out = self.gpt_dataset(Split.valid, seed)
        return self._held_out


class _Epochs:
    """A source's training samples, epoch after epoch, each epoch a reshuffled `GPTDataset`.

    What the stage's `BlendedDataset` blends: it asks only for `__len__`, `__getitem__` and the
    identity below.
    """

    index_split = Split.train
    MAX_EPOCHS = 1 << 20

    def __init__(self, source: _Source) -> None:
        self.source = source
        self._epochs: OrderedDict[int, GPTDataset] = OrderedDict()
        self.epoch_length = len(self.epoch(0))
        self.unique_identifiers = OrderedDict(
            [("class", type(self).__name__), ("path", source.prefix), ("seed", source.config.random_seed)]
        )

    def epoch(self, number: int) -> GPTDataset:
        if number not in self._epochs:
            self._epochs[number] = self.source.gpt_dataset(
                Split.train, self.source.config.random_seed + number
            )
            while len(self._epochs) > _EPOCHS_CACHED:
                self._epochs.popitem(last=False)
        self._epochs.move_to_end(number)
        return self._epochs[number]

    def __len__(self) -> int:
        return self.epoch_length * self.MAX_EPOCHS

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        epoch, offset = divmod(int(index), self.epoch_length)
        return self.epoch(epoch)[offset]

    def locate(self, index: int) -> tuple[int, int]:
        """(epoch, the sample's index in megatron's sample index) of sample `index`."""
        epoch, offset = divmod(int(index), self.epoch_length)
        return epoch, int(self.epoch(epoch).shuffle_index[offset])
