"""The data pipeline: corpora, tokenizers, position-addressed mixtures, skips, eval, corruption."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import data
from trainer.data import MixtureDataset, batch_index, merge_ranges, micro_batches, shard
from trainer.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

SEQ = 128
CHANNELS = [
    ("code", "embedded://code", 0.5),
    ("en", "embedded://en", 0.3),
    ("zh", "embedded://zh", 0.2),
]
CJK = re.compile("[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpora")


@pytest.fixture(scope="module")
def tokenizer() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture(scope="module")
def corpora(cache_dir: Path, tokenizer: ByteTokenizer) -> dict[str, np.ndarray]:
    return {
        name: data.embedded_corpus(name, tokenizer, cache_dir) for name in data.EMBEDDED_CORPORA
    }


@pytest.fixture(scope="module")
def mixture(
    corpora: dict[str, np.ndarray], cache_dir: Path, tokenizer: ByteTokenizer
) -> MixtureDataset:
    return MixtureDataset(
        CHANNELS, seq_length=SEQ, seed=1234, tokenizer=tokenizer, cache_dir=cache_dir
    )


# --------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_round_trips_chinese_and_english() -> None:
    tokenizer = load_tokenizer("byte")
    text = "def loss(x):  # 训练损失，很好。\nHello, world!"
    ids = tokenizer.encode(text)
    assert tokenizer.vocab_size == 258 and tokenizer.eos_id == 256
    assert max(ids) < 256 and len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([*ids, tokenizer.eos_id, 257]) == text


def test_byte_tokenizer_fast_path_matches_encode() -> None:
    tokenizer = ByteTokenizer()
    docs = ["abc", "中文", ""]
    expected = [*tokenizer.encode("abc"), 256, *tokenizer.encode("中文"), 256, 256]
    assert tokenizer.encode_documents(docs).tolist() == expected


def test_hugging_face_tokenizer_loads_from_a_directory(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    rust = Tokenizer(models.BPE(unk_token="<unk>"))
    rust.pre_tokenizer = pre_tokenizers.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|endoftext|>"])
    rust.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    rust.save(str(tmp_path / "tokenizer.json"))

    tokenizer = load_tokenizer(str(tmp_path))
    assert isinstance(tokenizer, HFTokenizer)
    assert tokenizer.eos_id == rust.token_to_id("<|endoftext|>")
    assert tokenizer.vocab_size == rust.get_vocab_size()
    assert tokenizer.name.startswith("hf-")
    ids = tokenizer.encode("the lazy fox")
    assert "lazy" in tokenizer.decode(ids)
    stream = data.encode_documents(tokenizer, ["the fox", "the dog"])
    assert (stream == tokenizer.eos_id).sum() == 2 and stream[-1] == tokenizer.eos_id


# --------------------------------------------------------------------------- embedded corpora


def test_embedded_corpora_are_large_and_contain_what_they_claim(
    corpora: dict[str, np.ndarray], tokenizer: ByteTokenizer
) -> None:
    for name, stream in corpora.items():
        assert len(stream) > 100_000, name
        assert (stream == tokenizer.eos_id).sum() > 10, name
    assert "def " in tokenizer.decode(corpora["code"][:200_000])
    assert "import " in tokenizer.decode(corpora["code"][:200_000])
    english = tokenizer.decode(corpora["en"][:50_000])
    assert " the " in english and not CJK.search(english)
    chinese = tokenizer.decode(corpora["zh"][:30_000])
    assert len(CJK.findall(chinese)) > 5_000
    assert "，" in chinese and "。" in chinese and " " not in chinese


def test_embedded_corpora_are_deterministic_and_loaded_from_cache(
    corpora: dict[str, np.ndarray],
    cache_dir: Path,
    tokenizer: ByteTokenizer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rebuilt_zh = data.embedded_corpus("zh", tokenizer, tmp_path)  # fresh build, another dir
    assert np.array_equal(rebuilt_zh, corpora["zh"])
    assert np.array_equal(
        data.encode_documents(tokenizer, data.embedded_documents("en")), corpora["en"]
    )

    def no_rebuild(name: str) -> list[str]:
        raise AssertionError(f"{name} was rebuilt instead of read from the cache")

    monkeypatch.setattr(data, "embedded_documents", no_rebuild)
    for name, stream in corpora.items():
        path = data.embedded_cache_path(name, tokenizer, cache_dir)
        assert path.is_file() and path.name.startswith(f"{name}-byte-v{data.DATA_VERSION}-")
        again = data.embedded_corpus(name, tokenizer, cache_dir)
        assert isinstance(again, np.memmap)
        assert np.array_equal(again, stream)
    assert not list(cache_dir.glob(".*.tmp"))


# --------------------------------------------------------------------------- sampling


def test_batch_is_deterministic_and_differs_across_indices(
    mixture: MixtureDataset, cache_dir: Path, tokenizer: ByteTokenizer
) -> None:
    first = mixture.batch(7, 16)
    again = MixtureDataset(
        CHANNELS, seq_length=SEQ, seed=1234, tokenizer=tokenizer, cache_dir=cache_dir
    )
    assert torch.equal(first["tokens"], again.batch(7, 16)["tokens"])
    assert torch.equal(first["channel"], again.batch(7, 16)["channel"])
    assert not torch.equal(first["tokens"], mixture.batch(8, 16)["tokens"])
    other_seed = MixtureDataset(
        CHANNELS, seq_length=SEQ, seed=99, tokenizer=tokenizer, cache_dir=cache_dir
    )
    assert not torch.equal(first["tokens"], other_seed.batch(7, 16)["tokens"])


def test_sample_depends_only_on_seed_batch_and_slot(mixture: MixtureDataset) -> None:
    small, large = mixture.batch(3, 8), mixture.batch(3, 32)
    assert torch.equal(small["tokens"], large["tokens"][:8])
    assert torch.equal(small["channel"], large["channel"][:8])


def test_batch_has_shapes_dtypes_and_shifted_labels(mixture: MixtureDataset) -> None:
    batch = mixture.batch(0, 16)
    assert batch["tokens"].shape == batch["labels"].shape == batch["loss_mask"].shape == (16, SEQ)
    assert batch["tokens"].dtype == batch["labels"].dtype == torch.int64
    assert batch["loss_mask"].dtype == torch.float32 and bool((batch["loss_mask"] == 1).all())
    assert batch["channel"].shape == (16,) and set(batch) == {
        "tokens",
        "labels",
        "loss_mask",
        "channel",
    }
    assert torch.equal(batch["tokens"][:, 1:], batch["labels"][:, :-1])
    local, starts = mixture.plan(0, np.arange(16))
    for row in range(16):
        stream = mixture.stream(mixture.specs[local[row]].name)
        window = np.asarray(stream[starts[row] : starts[row] + SEQ + 1], dtype=np.int64)
        assert batch["tokens"][row].tolist() == window[:-1].tolist()
        assert batch["labels"][row].tolist() == window[1:].tolist()


def test_channel_draws_follow_the_weights(mixture: MixtureDataset) -> None:
    channels = torch.cat([mixture.batch(k, 16)["channel"] for k in range(125)])  # 2,000 samples
    shares = torch.bincount(channels, minlength=3).double() / len(channels)
    assert shares.tolist() == pytest.approx([0.5, 0.3, 0.2], abs=0.03)


def test_channel_ids_follow_the_registry_not_the_stage(
    corpora: dict[str, np.ndarray], cache_dir: Path, tokenizer: ByteTokenizer
) -> None:
    registry = ["code", "en", "zh"]
    zh_only = MixtureDataset(
        [("zh", "embedded://zh", 1.0)],
        seq_length=SEQ,
        seed=1,
        tokenizer=tokenizer,
        channel_names=registry,
        cache_dir=cache_dir,
    )
    batch = zh_only.batch(0, 16)
    assert zh_only.channel_names == ("code", "en", "zh")
    assert batch["channel"].tolist() == [2] * 16
    assert CJK.search(tokenizer.decode(batch["tokens"].flatten().tolist()))
    with pytest.raises(ValueError, match="registry"):
        MixtureDataset(
            CHANNELS,
            seq_length=SEQ,
            seed=1,
            tokenizer=tokenizer,
            channel_names=["code"],
            cache_dir=cache_dir,
        )


def test_zero_weight_channels_are_never_drawn(cache_dir: Path, tokenizer: ByteTokenizer) -> None:
    stage = MixtureDataset(
        [("code", "embedded://code", 1.0), ("en", "embedded://en", 0.0)],
        seq_length=SEQ,
        seed=5,
        tokenizer=tokenizer,
        cache_dir=cache_dir,
    )
    assert set(torch.cat([stage.batch(k, 16)["channel"] for k in range(20)]).tolist()) == {0}


def test_global_batch_builds_fast(mixture: MixtureDataset) -> None:
    import time

    start = time.perf_counter()
    for k in range(200):
        mixture.batch(k, 16)
    assert (
        time.perf_counter() - start
    ) / 200 < 0.01  # loose: ~0.1 ms here; bench/ prints the figure


# --------------------------------------------------------------------------- skip ranges


@pytest.mark.parametrize(
    ("step", "ranges", "expected"),
    [
        (0, [], 0),
        (41, [], 41),
        (4, [(5, 8)], 4),
        (5, [(5, 8)], 8),
        (6, [(5, 8)], 9),
        (0, [(0, 3)], 3),
        (7, [(5, 8), (10, 12)], 12),
        (5, [(10, 12), (5, 8)], 8),  # order does not matter
        (5, [(5, 7), (6, 8)], 8),  # overlapping ranges merge
        (5, [(5, 6), (6, 8)], 8),  # adjacent ranges merge
        (5, [(5, 5)], 5),  # empty range skips nothing
        (100, [(10, 20)], 110),  # a range wholly in the past still shifts the step
        (3, [(2, 4), (5, 7)], 7),
    ],
)
def test_batch_index_table(step: int, ranges: list[tuple[int, int]], expected: int) -> None:
    assert batch_index(step, ranges) == expected


def test_merge_ranges_sorts_merges_and_rejects_bad_ranges() -> None:
    assert merge_ranges([(10, 12), (5, 7), (6, 8), (8, 9), (3, 3)]) == [(5, 9), (10, 12)]
    with pytest.raises(ValueError):
        merge_ranges([(5, 3)])
    with pytest.raises(ValueError):
        batch_index(-1)


def test_resume_with_skip_ranges_consumes_exactly_the_other_batches() -> None:
    ranges = [(30, 45), (40, 50), (70, 71)]
    steps = 200
    consumed = [batch_index(t, ranges) for t in range(steps)]
    skipped = {i for a, b in ranges for i in range(a, b)}
    assert consumed == sorted(consumed) and len(set(consumed)) == steps
    assert set(consumed) == set(range(consumed[-1] + 1)) - skipped
    # A resume at step 120 maps each later step exactly as the uninterrupted run did.
    assert [batch_index(t, ranges) for t in range(120, steps)] == consumed[120:]


# --------------------------------------------------------------------------- eval


def test_train_and_eval_regions_never_overlap(mixture: MixtureDataset) -> None:
    for name, _, _ in CHANNELS:
        (train_start, train_end), (eval_start, eval_end) = (
            mixture.train_region(name),
            mixture.eval_region(name),
        )
        stream_length = len(mixture.stream(name))
        assert train_start == 0 and train_end == eval_start and eval_end == stream_length
        assert eval_end - eval_start >= max(stream_length // 100, 16 * (SEQ + 1))
        starts = mixture.eval_windows(name)
        assert starts.min() >= eval_start and starts.max() + SEQ + 1 <= eval_end
        assert (np.diff(starts) >= SEQ + 1).all()
    local, starts = mixture.plan(0, np.arange(50_000))  # one huge batch: many training windows
    for index, (name, _, _) in enumerate(CHANNELS):
        picked = starts[local == index]
        assert picked.min() >= 0 and picked.max() + SEQ + 1 <= mixture.train_region(name)[1]


def test_eval_batches_are_fixed_per_channel(
    mixture: MixtureDataset, cache_dir: Path, tokenizer: ByteTokenizer
) -> None:
    batches = list(mixture.eval_batches(micro_batch_size=4, samples_per_channel=10))
    assert [len(b["tokens"]) for b in batches] == [4, 4, 4, 4, 4, 4, 4, 2]
    assert torch.cat([b["channel"] for b in batches]).tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert all(torch.equal(b["tokens"][:, 1:], b["labels"][:, :-1]) for b in batches)
    everything = mixture.eval_batch(samples_per_channel=10)
    assert torch.equal(torch.cat([b["tokens"] for b in batches]), everything["tokens"])
    other_stage = MixtureDataset(
        [(n, p, 1.0) for n, p, _ in CHANNELS],
        seq_length=SEQ,
        seed=7,
        tokenizer=tokenizer,
        cache_dir=cache_dir,
    )
    again = list(other_stage.eval_batches(micro_batch_size=4, samples_per_channel=10))
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(batches, again, strict=True))


# --------------------------------------------------------------------------- indexed datasets


def test_indexed_dataset_round_trips_through_megatron(
    tmp_path: Path, tokenizer: ByteTokenizer
) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    documents = [f"document {i}: 训练数据 number {i}\n" * (i + 1) for i in range(40)]
    prefix = data.write_indexed_dataset(tmp_path / "tiny" / "corpus", documents, tokenizer)
    assert prefix.with_suffix(".bin").is_file() and prefix.with_suffix(".idx").is_file()

    dataset = IndexedDataset(str(prefix))
    assert len(dataset) == 40 and tokenizer.decode(dataset[3][:-1]) == documents[3]

    stream = data.load_stream(str(prefix), tokenizer)
    assert isinstance(stream, np.memmap)
    assert np.array_equal(stream, data.encode_documents(tokenizer, documents))
    for spelled in (f"indexed://{prefix}", f"{prefix}.bin"):
        assert np.array_equal(data.load_stream(spelled, tokenizer), stream)

    stage = MixtureDataset(
        [("tiny", str(prefix), 1.0)],
        seq_length=32,
        seed=0,
        tokenizer=tokenizer,
        eval_samples_per_channel=4,
    )
    text = tokenizer.decode(stage.batch(0, 4)["tokens"].flatten().tolist())
    assert "document" in text or "训练" in text or "number" in text


def test_missing_indexed_dataset_is_a_clear_error(tmp_path: Path, tokenizer: ByteTokenizer) -> None:
    with pytest.raises(FileNotFoundError, match="nothing"):
        data.load_stream(str(tmp_path / "nothing"), tokenizer)


# --------------------------------------------------------------------------- corruption


def test_corrupt_range_replaces_only_that_channels_samples(
    mixture: MixtureDataset, cache_dir: Path, tokenizer: ByteTokenizer
) -> None:
    sources = [("code", "embedded://code", 0.5), ("en", "embedded://en", 0.3, [[10, 12]])]
    sources.append(("zh", "embedded://zh", 0.2, []))
    corrupted = MixtureDataset(
        sources, seq_length=SEQ, seed=1234, tokenizer=tokenizer, cache_dir=cache_dir
    )
    saw_garbage = False
    for k in range(8, 14):
        clean, bad = mixture.batch(k, 32), corrupted.batch(k, 32)
        assert torch.equal(clean["channel"], bad["channel"])
        for row in range(32):
            if k in (10, 11) and int(clean["channel"][row]) == 1:
                saw_garbage = True
                assert not torch.equal(clean["tokens"][row], bad["tokens"][row])
                assert torch.equal(bad["tokens"][row, 1:], bad["labels"][row, :-1])
            else:
                assert torch.equal(clean["tokens"][row], bad["tokens"][row])
                assert torch.equal(clean["labels"][row], bad["labels"][row])
    assert saw_garbage
    big = corrupted.batch(10, 256)
    garbage = big["tokens"][big["channel"] == 1].flatten()
    assert int(garbage.min()) >= 0 and int(garbage.max()) < tokenizer.vocab_size
    assert torch.bincount(garbage, minlength=258).count_nonzero() > 250  # uniform over the vocab
    assert torch.equal(
        corrupted.batch(10, 32)["tokens"], corrupted.batch(10, 32)["tokens"]
    )  # seeded
    with pytest.raises(ValueError, match="bad range"):
        MixtureDataset(
            [("en", "embedded://en", 1.0, [[5, 3]])],
            seq_length=SEQ,
            seed=1,
            tokenizer=tokenizer,
            cache_dir=cache_dir,
        )


def test_a_newlines_corruption_fills_that_channels_windows_with_one_newline_id(
    mixture: MixtureDataset, cache_dir: Path, tokenizer: ByteTokenizer
) -> None:
    sources = [("code", "embedded://code", 0.5), ("en", "embedded://en", 0.3, [[10, 11]], "newlines")]
    sources.append(("zh", "embedded://zh", 0.2))
    corrupted = MixtureDataset(sources, seq_length=SEQ, seed=1234, tokenizer=tokenizer, cache_dir=cache_dir)
    newline = tokenizer.encode("\n")[0]
    bad, clean = corrupted.batch(10, 32), mixture.batch(10, 32)
    en = bad["channel"] == 1
    assert en.any() and (~en).any()
    assert (bad["tokens"][en] == newline).all() and (bad["labels"][en] == newline).all()
    assert torch.equal(bad["tokens"][~en], clean["tokens"][~en])
    assert torch.equal(corrupted.batch(11, 32)["tokens"], mixture.batch(11, 32)["tokens"])
    with pytest.raises(ValueError, match="corrupt kinds must be among"):
        MixtureDataset(
            [("en", "embedded://en", 1.0, [[5, 6]], "zeros")],
            seq_length=SEQ, seed=1, tokenizer=tokenizer, cache_dir=cache_dir,
        )  # fmt: skip


# --------------------------------------------------------------------------- sharding


def test_shard_splits_a_global_batch_exactly_across_ranks(mixture: MixtureDataset) -> None:
    batch = mixture.batch(5, 16)
    shards = [shard(batch, rank, 4) for rank in range(4)]
    assert all(len(s["tokens"]) == 4 for s in shards)
    assert torch.equal(torch.cat([s["tokens"] for s in shards]), batch["tokens"])
    assert torch.equal(torch.cat([s["labels"] for s in shards]), batch["labels"])
    assert torch.equal(torch.cat([s["channel"] for s in shards]), batch["channel"])
    assert set(shards[2]) == set(batch)
    micro = micro_batches(shards[1], 2)
    assert [len(m["tokens"]) for m in micro] == [2, 2]
    assert torch.equal(torch.cat([m["tokens"] for m in micro]), shards[1]["tokens"])
    with pytest.raises(ValueError):
        shard(batch, 0, 3)
    with pytest.raises(ValueError):
        shard(batch, 4, 4)
    with pytest.raises(ValueError):
        micro_batches(shards[0], 3)
