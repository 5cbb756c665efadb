"""The data pipeline on megatron-core's datasets: prepared pairs, epochs without replacement,
blends within one sample of their weights, held-out documents, skips, options, corruption.

The corpora here are generated: sources of different sizes and document-length spreads, each
document tagged `<source>:<id>|` so a sample's text says which documents it came from. Tests
run over several generator seeds (SEEDS); none of these were used to tune anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import corpora, data
from trainer.data import (
    DataOptions,
    MixtureDataset,
    batch_index,
    micro_batches,
    shard,
)
from trainer.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

SEEDS = [11, 29, 503]
EOD = ByteTokenizer.eos_id
CJK = re.compile("[\u4e00-\u9fff]")
TAG = re.compile(r"#(\w+):(\d+)\|")


@pytest.fixture(scope="module")
def tokenizer() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpora")


def write_source(folder: Path, name: str, *, seed: int, documents: int, short: int, long: int) -> str:
    """A pair of `documents` documents tagged `#<name>:<id>|`, whose lengths are uniform in [short, long] bytes."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", dtype=np.uint8)
    texts = []
    for doc in range(documents):
        body = letters[rng.integers(0, letters.size, int(rng.integers(short, long + 1)))].tobytes().decode()
        texts.append(f"#{name}:{doc}|{body}")
    return str(corpora.write_indexed_dataset(folder / name, texts, ByteTokenizer()))


@pytest.fixture(scope="module", params=SEEDS)
def corpus(request, tmp_path_factory) -> dict:
    """Three sources of unequal sizes and weights, drawn from one generator seed."""
    seed = request.param
    rng = np.random.default_rng(seed)
    folder = tmp_path_factory.mktemp(f"corpus{seed}")
    weights = rng.dirichlet([2, 2, 2]) * 0.8 + 0.2 / 3  # none tiny
    shapes = [(120, 20, 400), (60, 200, 900), (200, 5, 60)]
    sources = [
        (name, write_source(folder, name, seed=seed + i, documents=docs, short=short, long=long), float(w))
        for i, (name, (docs, short, long), w) in enumerate(zip(["alpha", "beta", "gamma"], shapes, weights, strict=True))
    ]
    seq = int(rng.choice([16, 32, 48]))
    return {"seed": seed, "sources": sources, "seq": seq}


def mixture(corpus: dict, **kwargs) -> MixtureDataset:
    return MixtureDataset(
        corpus["sources"], seq_length=corpus["seq"], seed=corpus["seed"], tokenizer=ByteTokenizer(), **kwargs
    )


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def tags(tokens: torch.Tensor) -> set[tuple[str, int]]:
    text = bytes(int(t) for t in tokens if int(t) < 256).decode("utf-8", errors="replace")
    return {(name, int(doc)) for name, doc in TAG.findall(text)}


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



# --------------------------------------------------------------------------- sources


def test_embedded_corpora_become_cached_pairs_one_document_a_sequence(
    cache_dir: Path, tokenizer: ByteTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefixes = {name: corpora.embedded_dataset(name, tokenizer, cache_dir) for name in corpora.EMBEDDED_CORPORA}
    for name, prefix in prefixes.items():
        pair = IndexedDataset(str(prefix))
        documents = corpora.embedded_documents(name)
        sidecar = corpora.read_sidecar(prefix)
        assert len(pair) == len(documents) == sidecar["documents"] > 10, name
        assert int(pair.sequence_lengths.sum()) == sidecar["tokens"] > 100_000, name
        assert sidecar["tokenizer"] == "byte" and sidecar["eod_id"] == EOD
        assert all(pair[i][-1] == EOD and (pair[i][:-1] != EOD).all() for i in (0, len(pair) // 2, len(pair) - 1))
        assert tokenizer.decode(pair[1]) == documents[1]
    code, zh = IndexedDataset(str(prefixes["code"])), IndexedDataset(str(prefixes["zh"]))  # alive while read
    assert "def " in tokenizer.decode(code[0])
    assert len(CJK.findall(tokenizer.decode(zh[0]))) > 20

    def no_rebuild(name: str) -> list[str]:
        raise AssertionError(f"{name} was rebuilt instead of read from the cache")

    monkeypatch.setattr(corpora, "embedded_documents", no_rebuild)
    assert corpora.embedded_dataset("en", tokenizer, cache_dir) == prefixes["en"]
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_source_that_cannot_be_opened_names_its_channel(tmp_path: Path, tokenizer: ByteTokenizer) -> None:
    with pytest.raises(corpora.SourceUnavailable, match=r"'web'.*no such file .*nothing\.bin"):
        corpora.prepared_source("web", str(tmp_path / "nothing"), tokenizer, None)
    with pytest.raises(corpora.SourceUnavailable, match=r"'web' \(msc://profile/web\).*only s3://"):
        corpora.prepared_source("web", "msc://profile/web", tokenizer, None)
    with pytest.raises(corpora.SourceUnavailable, match="no embedded corpus 'fr'"):
        corpora.prepared_source("fr", "embedded://fr", tokenizer, None)


def test_a_pair_prepared_with_another_tokenizer_is_refused(tmp_path: Path, tokenizer: ByteTokenizer) -> None:
    prefix = write_source(tmp_path, "web", seed=1, documents=5, short=10, long=20)
    for spelled in (prefix, f"indexed://{prefix}", f"{prefix}.bin", f"{prefix}.idx"):
        assert corpora.prepared_source("web", spelled, tokenizer, None) == prefix
    sidecar = Path(f"{prefix}.json")
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**record, "tokenizer": "hf-0123456789abcdef"}))
    with pytest.raises(corpora.SourceUnavailable, match="prepared with tokenizer 'hf-0123456789abcdef'.*'byte'"):
        MixtureDataset([("web", prefix, 1.0)], seq_length=8, seed=0, tokenizer=tokenizer)


# --------------------------------------------------------------------------- epochs and blends


def test_every_training_sample_of_an_epoch_is_drawn_exactly_once(corpus: dict) -> None:
    stage = mixture(corpus)
    for local, source in enumerate(stage.sources):
        length = source.train.epoch_length
        # Draw blend samples until this source has given one whole epoch.
        needed = int(np.ceil(length / stage._weights[local] * sum(stage._weights))) + 64
        which, within = stage.plan(0, needed)
        picks = within[which == local][:length]
        assert len(picks) == length
        assert sorted(picks.tolist()) == list(range(length))  # the blend asks for each once, in order
        ids = [source.train.locate(int(i))[1] for i in picks]
        assert sorted(ids) == list(range(length))  # megatron's shuffled sample index: a permutation


def test_the_second_epoch_is_reshuffled_and_again_complete(corpus: dict) -> None:
    source = mixture(corpus).sources[0]
    length = source.train.epoch_length
    first = [source.train.locate(i)[1] for i in range(length)]
    second = [source.train.locate(length + i) for i in range(length)]
    assert {epoch for epoch, _ in second} == {1}
    assert sorted(i for _, i in second) == list(range(length))
    assert [i for _, i in second] != first


def test_the_realised_mix_is_within_one_sample_of_the_weights_at_every_prefix(corpus: dict) -> None:
    stage = mixture(corpus)
    which, _ = stage.plan(0, 20_000)
    weights = np.asarray(stage._weights) / sum(stage._weights)
    counts = np.zeros(len(weights))
    for n, source in enumerate(which, start=1):
        counts[source] += 1
        assert (np.abs(counts - weights * n) <= 1 + 1e-9).all(), (n, counts, weights * n)


def test_samples_pack_documents_back_to_back_with_eod_between(corpus: dict) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    stage = mixture(corpus)
    source = stage.sources[1]
    epoch = source.train.epoch(0)
    pair = IndexedDataset(source.prefix)
    stream = np.concatenate([pair[int(d)] for d in epoch.document_index])
    seq = corpus["seq"]
    for j in range(0, len(epoch), max(1, len(epoch) // 25)):
        sample = int(epoch.shuffle_index[j])
        window = stream[sample * seq : sample * seq + seq + 1]
        item = epoch[j]
        assert torch.equal(item["tokens"], torch.from_numpy(window[:-1].astype(np.int64)))
        assert torch.equal(item["labels"], torch.from_numpy(window[1:].astype(np.int64)))
    # Every document's EOD is in the epoch's samples once, but for those in the last partial
    # sample, which megatron drops: at most `seq` tokens' worth of (>= 6-token) documents.
    gamma = stage.sources[2]
    epoch = gamma.train.epoch(0)
    eods = sum(int((epoch[j]["tokens"] == EOD).sum()) for j in range(len(epoch)))
    documents = len(stage.train_documents(gamma.channel))
    assert documents - seq // 6 - 1 <= eods <= documents


def test_no_training_sample_holds_a_held_out_document(corpus: dict) -> None:
    stage = mixture(corpus)
    for source in stage.sources:
        held_out = {(source.channel, int(d)) for d in stage.held_out_documents(source.channel)}
        trained = {(source.channel, int(d)) for d in stage.train_documents(source.channel)}
        assert held_out and not held_out & trained
        epoch, seen, read = source.train.epoch(0), set(), set()
        for j in range(len(epoch)):
            seen |= tags(epoch[j]["tokens"])
            _, documents = epoch._query_document_sample_shuffle_indices(j)  # megatron's own account
            read |= {(source.channel, int(d)) for d in documents}
        assert not seen & held_out and not read & held_out
        assert read <= trained and len(read) >= len(trained) - 2  # the epoch reads them all
        assert seen <= trained  # the text agrees (a tag cut by a sample boundary is not seen)
        evaluated = set()
        for j in range(len(source.held_out(stage.seed))):
            evaluated |= tags(source.held_out(stage.seed)[j]["tokens"])
        assert evaluated and evaluated <= held_out


def test_eval_samples_are_fixed_across_stages_and_attempts(corpus: dict) -> None:
    first = mixture(corpus).eval_batch(4)
    again = mixture(corpus, stage_index=1).eval_batch(4)  # a later stage, or another attempt
    assert torch.equal(first["tokens"], again["tokens"]) and torch.equal(first["channel"], again["channel"])
    assert first["channel"].tolist() == [0] * 4 + [1] * 4 + [2] * 4


# --------------------------------------------------------------------------- batches, resumes, skips


def test_a_batch_is_a_pure_function_of_batch_index_whatever_was_asked_before(corpus: dict) -> None:
    ahead, fresh = mixture(corpus), mixture(corpus)
    far = ahead.batch(3_000, 8)  # grows the blend far past what `fresh` builds
    for k in (0, 1, 57):
        assert same(ahead.batch(k, 8), fresh.batch(k, 8))
    assert same(far, fresh.batch(3_000, 8))


def test_rows_read_per_data_parallel_rank_make_the_global_batch(corpus: dict) -> None:
    stage = mixture(corpus)
    whole = stage.batch(9, 8)
    for ranks in (2, 4, 8):
        per = 8 // ranks
        parts = [stage.batch(9, 8, rows=range(r * per, (r + 1) * per)) for r in range(ranks)]
        for key in whole:
            assert torch.equal(torch.cat([p[key] for p in parts]), whole[key])
        assert all(torch.equal(shard(whole, r, ranks)["tokens"], parts[r]["tokens"]) for r in range(ranks))


def test_skipped_batches_samples_are_never_trained_and_the_rest_follow_in_order(corpus: dict) -> None:
    stage = mixture(corpus)
    size, steps, skips = 8, 60, [(10, 14), (30, 31)]
    consumed = [batch_index(t, skips) for t in range(steps)]
    trained = [s for k in consumed for s in range(k * size, (k + 1) * size)]
    skipped = {s for a, b in skips for k in range(a, b) for s in range(k * size, (k + 1) * size)}
    assert not set(trained) & skipped
    assert trained == sorted(set(range(trained[-1] + 1)) - skipped)  # nothing else left out
    which, within = stage.plan(0, trained[-1] + 1)
    trained_samples = {(int(which[s]), int(within[s])) for s in trained}
    assert not trained_samples & {(int(which[s]), int(within[s])) for s in skipped}


def test_a_stage_begins_at_its_first_batch_and_draws_in_its_own_order(corpus: dict) -> None:
    later = mixture(corpus, stage_index=1)
    assert torch.equal(later.batch(40, 8, first_batch=40)["tokens"], later.batch(0, 8)["tokens"])
    assert not torch.equal(later.batch(0, 8)["tokens"], mixture(corpus).batch(0, 8)["tokens"])
    with pytest.raises(ValueError, match="before the stage's first batch"):
        later.batch(39, 8, first_batch=40)


def test_channel_counts_match_the_batch_without_reading_it(corpus: dict) -> None:
    stage = mixture(corpus)
    for k in (0, 5, 77):
        batch = stage.batch(k, 16, first_batch=0)
        assert stage.channel_counts(k, 16).tolist() == torch.bincount(batch["channel"], minlength=3).tolist()


def test_channel_ids_follow_the_run_registry(corpus: dict) -> None:
    registry = ["zeta", *[s[0] for s in corpus["sources"]][::-1]]
    stage = mixture(corpus, channel_names=registry)
    which, _ = stage.plan(0, 32)
    assert stage.batch(0, 32)["channel"].tolist() == [registry.index(corpus["sources"][w][0]) for w in which]


def test_resume_with_skip_ranges_consumes_exactly_the_other_batches() -> None:
    ranges = [(30, 45), (40, 50), (70, 71)]
    steps = 200
    consumed = [batch_index(t, ranges) for t in range(steps)]
    skipped = {i for a, b in ranges for i in range(a, b)}
    assert consumed == sorted(consumed) and len(set(consumed)) == steps
    assert set(consumed) == set(range(consumed[-1] + 1)) - skipped
    # A resume at step 120 maps each later step exactly as the uninterrupted run did.
    assert [batch_index(t, ranges) for t in range(120, steps)] == consumed[120:]


# --------------------------------------------------------------------------- options


def test_eod_options_reset_positions_mask_attention_and_loss(tmp_path: Path) -> None:
    prefix = write_source(tmp_path, "short", seed=3, documents=400, short=3, long=12)
    options = DataOptions(reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=True)
    stage = MixtureDataset([("short", prefix, 1.0)], seq_length=32, seed=5, tokenizer=ByteTokenizer(), options=options)
    plain = MixtureDataset([("short", prefix, 1.0)], seq_length=32, seed=5, tokenizer=ByteTokenizer())
    batch, base = stage.batch(0, 4), plain.batch(0, 4)
    assert torch.equal(batch["tokens"], base["tokens"]) and "attention_mask" not in base
    assert (base["position_ids"] == torch.arange(32)).all() and (base["loss_mask"] == 1).all()
    for row in range(4):
        tokens, positions = batch["tokens"][row], batch["position_ids"][row]
        eods = (tokens == EOD).nonzero().flatten().tolist()
        assert eods  # short documents: several per sample
        assert (batch["loss_mask"][row][tokens == EOD] == 0).all() and (batch["loss_mask"][row][tokens != EOD] == 1).all()
        first = eods[0]
        assert positions[first + 1] == 0 and positions[first] == first
        mask = batch["attention_mask"][row, 0]  # True hides
        assert mask[first + 1, first] and not mask[first, first] and not mask[first + 1, first + 1]
        assert mask[first, first + 1]  # still causal


def test_options_are_checked(tmp_path: Path) -> None:
    prefix = write_source(tmp_path, "few", seed=4, documents=3, short=10, long=20)
    with pytest.raises(corpora.SourceUnavailable, match="valid part no document"):
        MixtureDataset([("few", prefix, 1.0)], seq_length=8, seed=0, tokenizer=ByteTokenizer()).eval_batch(2)
    with pytest.raises(corpora.SourceUnavailable, match="not one sample of 1025"):
        MixtureDataset([("few", prefix, 1.0)], seq_length=1024, seed=0, tokenizer=ByteTokenizer(),
                       options=DataOptions(split="1,0,0"))  # fmt: skip
    with pytest.raises(ValueError, match="positive and finite"):
        MixtureDataset([("few", prefix, 0.0)], seq_length=8, seed=0, tokenizer=ByteTokenizer())


# --------------------------------------------------------------------------- corruption


def test_corrupt_range_replaces_only_that_channels_samples(corpus: dict) -> None:
    clean = mixture(corpus)
    name = corpus["sources"][1][0]
    sources = [s if s[0] != name else (*s, [[10, 12]]) for s in corpus["sources"]]
    corrupted = MixtureDataset(sources, seq_length=corpus["seq"], seed=corpus["seed"], tokenizer=ByteTokenizer())
    saw_garbage = False
    for k in range(8, 14):
        a, b = clean.batch(k, 32), corrupted.batch(k, 32)
        assert torch.equal(a["channel"], b["channel"])
        for row in range(32):
            if k in (10, 11) and int(a["channel"][row]) == 1:
                saw_garbage = True
                assert not torch.equal(a["tokens"][row], b["tokens"][row])
                assert torch.equal(b["tokens"][row, 1:], b["labels"][row, :-1])
            else:
                assert torch.equal(a["tokens"][row], b["tokens"][row])
    assert saw_garbage
    big = corrupted.batch(10, 512)
    garbage = big["tokens"][big["channel"] == 1].flatten()
    assert int(garbage.min()) >= 0 and int(garbage.max()) < 258
    assert torch.bincount(garbage, minlength=258).count_nonzero() > 250  # uniform over the vocab
    with pytest.raises(ValueError, match="bad range"):
        MixtureDataset([(name, sources[1][1], 1.0, [[5, 3]])], seq_length=8, seed=1, tokenizer=ByteTokenizer())


def test_a_newlines_corruption_fills_that_channels_samples_with_one_newline_id(corpus: dict) -> None:
    clean = mixture(corpus)
    name = corpus["sources"][1][0]
    sources = [s if s[0] != name else (*s, [[10, 11]], "newlines") for s in corpus["sources"]]
    corrupted = MixtureDataset(sources, seq_length=corpus["seq"], seed=corpus["seed"], tokenizer=ByteTokenizer())
    bad, good = corrupted.batch(10, 32), clean.batch(10, 32)
    hit = bad["channel"] == 1
    assert hit.any() and (~hit).any()
    assert (bad["tokens"][hit] == ord("\n")).all() and (bad["labels"][hit] == ord("\n")).all()
    assert torch.equal(bad["tokens"][~hit], good["tokens"][~hit])
    with pytest.raises(ValueError, match="corrupt kinds must be among"):
        MixtureDataset([(name, sources[1][1], 1.0, [[5, 6]], "zeros")], seq_length=8, seed=1, tokenizer=ByteTokenizer())


def test_micro_batches_and_shards_split_exactly(corpus: dict) -> None:
    batch = mixture(corpus).batch(5, 16)
    shards = [shard(batch, rank, 4) for rank in range(4)]
    assert torch.equal(torch.cat([s["tokens"] for s in shards]), batch["tokens"])
    micro = micro_batches(shards[1], 2)
    assert [len(m["tokens"]) for m in micro] == [2, 2] and set(micro[0]) == set(batch)
    with pytest.raises(ValueError):
        shard(batch, 0, 3)
    with pytest.raises(ValueError):
        micro_batches(shards[0], 3)


def test_indices_are_built_in_memory_and_nothing_is_written_beside_the_data(corpus: dict) -> None:
    # Megatron's default caches indices in <data>/cache/, which may be a read-only volume and
    # makes every rank but 0 wait for rank 0's files.
    stage = mixture(corpus)
    stage.batch(2_000, 8)
    stage.eval_batch(2)
    folder = Path(corpus["sources"][0][1]).parent
    assert not (folder / "cache").exists()
    assert sorted(p.suffix for p in folder.iterdir()) == [".bin"] * 3 + [".idx"] * 3 + [".json"] * 3
