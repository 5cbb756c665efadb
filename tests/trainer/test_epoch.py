"""The trainer on a small multi-source corpus for one epoch: what it trained on, sample by sample.

The trainer's data trace (`data.trace_dir`) records, per step and data-parallel rank, each row's
channel, its sample within its source, the epoch and the sum of its token ids; the test rebuilds
the same megatron-core datasets in-process and holds the trace to them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.test_data import write_source
from tests.trainer.test_train import records, run_trainer, tiny_config
from trainer.data import DataOptions, MixtureDataset
from trainer.tokenizer import ByteTokenizer

SEQ, BATCH, SPLIT, SEED = 32, 8, "90,10,0", 77
# Sources of different sizes and document lengths; weights not proportional to their sizes.
SHAPES = {"alpha": (60, 20, 200, 0.5), "beta": (30, 100, 300, 0.3), "gamma": (90, 5, 40, 0.2)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[tuple[str, str, float]]:
    folder = tmp_path_factory.mktemp("epoch-corpus")
    return [
        (name, write_source(folder, name, seed=i + 5, documents=docs, short=short, long=long), weight)
        for i, (name, (docs, short, long, weight)) in enumerate(SHAPES.items())
    ]


def stage_of(corpus) -> MixtureDataset:
    return MixtureDataset(corpus, seq_length=SEQ, seed=SEED, tokenizer=ByteTokenizer(), options=DataOptions(split=SPLIT))


def config_for(tmp: Path, corpus, steps: int, **sections) -> dict:
    config = tiny_config(tmp, steps=steps, **sections)
    config["stages"][0]["seq_length"] = SEQ
    config["stages"][0]["data"] = [{"channel": n, "path": p, "weight": w} for n, p, w in corpus]
    config["batch"] = {"micro_batch_size": 2, "global_batch_size": BATCH}
    config["data"].update(seed=SEED, split=SPLIT, trace_dir=str(tmp / "trace"))
    return config


def trace(tmp: Path) -> dict[int, list[dict]]:
    """Per step, the rows every rank trained on, in row order."""
    by_step: dict[int, list] = {}
    for path in sorted((tmp / "trace").glob("rank-*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            by_step.setdefault(record["step"], []).append(record)
    rows = {}
    for step, parts in by_step.items():
        parts.sort(key=lambda r: r["rows"][0])
        rows[step] = [
            {"channel": c, "sample": s, "epoch": e, "token_sum": t}
            for part in parts
            for c, s, e, t in zip(part["channels"], part["samples"], part["epochs"], part["token_sums"], strict=True)
        ]
        assert [r for p in parts for r in range(*p["rows"])] == list(range(BATCH))
    return rows


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, corpus) -> dict:
    """A run long enough for every source to finish its first epoch, checkpointed half way."""
    stage = stage_of(corpus)
    total = sum(w for _, _, w in corpus)
    steps = max(math.ceil(s.train.epoch_length / (w / total) / BATCH) for s, (_, _, w) in zip(stage.sources, corpus, strict=True)) + 1
    tmp = tmp_path_factory.mktemp("one-epoch")
    half = steps // 2
    run_trainer(tmp, config_for(tmp, corpus, steps, checkpoint={"interval_steps": half}))
    return {"tmp": tmp, "steps": steps, "half": half, "stage": stage}


def test_one_epoch_trains_every_sample_of_every_source_exactly_once(one_epoch, corpus):
    stage, rows = one_epoch["stage"], trace(one_epoch["tmp"])
    assert sorted(rows) == list(range(one_epoch["steps"]))
    flat = [row for step in sorted(rows) for row in rows[step]]
    for local, (name, _, _) in enumerate(corpus):
        length = stage.sources[local].train.epoch_length
        first_epoch = [r["sample"] for r in flat if r["channel"] == name and r["epoch"] == 0]
        assert sorted(first_epoch) == list(range(length)), name  # each once, none missing
    # What the trace says was trained is what the datasets hold: the token sums agree.
    for step in (0, one_epoch["steps"] // 3, one_epoch["steps"] - 1):
        batch = stage.batch(step, BATCH)
        assert [r["token_sum"] for r in rows[step]] == batch["tokens"].sum(dim=1).tolist()


def test_the_realised_mix_stays_within_one_sample_of_the_weights(one_epoch, corpus):
    rows = trace(one_epoch["tmp"])
    names = [n for n, _, _ in corpus]
    weights = np.asarray([w for _, _, w in corpus]) / sum(w for _, _, w in corpus)
    counts = np.zeros(len(names))
    for n, row in enumerate((r for step in sorted(rows) for r in rows[step]), start=1):
        counts[names.index(row["channel"])] += 1
        assert (np.abs(counts - weights * n) <= 1 + 1e-9).all(), (n, counts)
    consumed = records(one_epoch["tmp"], "train")[-1]["metrics"]
    assert [consumed[f"data/tokens/{n}"] for n in names] == (counts * SEQ).tolist()


def test_no_trained_sample_holds_a_held_out_document(one_epoch, corpus):
    stage, rows = one_epoch["stage"], trace(one_epoch["tmp"])
    for local, (name, _, _) in enumerate(corpus):
        held_out = set(stage.held_out_documents(name).tolist())
        assert held_out
        source = stage.sources[local].train
        for row in (r for step in rows.values() for r in step if r["channel"] == name):
            epoch = source.epoch(row["epoch"])
            offset = row["sample"] - row["epoch"] * source.epoch_length
            _, documents = epoch._query_document_sample_shuffle_indices(offset)
            assert not set(documents.tolist()) & held_out


def test_a_resume_at_another_data_parallel_size_trains_the_identical_batches(one_epoch, corpus, tmp_path):
    checkpoint = one_epoch["tmp"] / "ckpt" / f"step-{one_epoch['half']:08d}"
    config = config_for(tmp_path, corpus, one_epoch["steps"], checkpoint={"resume_from": str(checkpoint)})
    run_trainer(tmp_path, config, nproc=2)
    first, resumed = trace(one_epoch["tmp"]), trace(tmp_path)
    assert sorted(resumed) == list(range(one_epoch["half"], one_epoch["steps"]))
    assert len(list((tmp_path / "trace").glob("rank-*.jsonl"))) == 2  # two ranks each read half
    assert all(resumed[step] == first[step] for step in resumed)


def test_a_source_the_trainer_cannot_open_ends_the_run_as_bad_config_naming_it(tmp_path, corpus):
    missing = [*corpus[:2], ("gamma", str(tmp_path / "nowhere" / "gamma"), 0.2)]
    result = run_trainer(tmp_path, config_for(tmp_path, missing, 4), check=False)
    assert result.returncode == 2  # bad_config: not worth another attempt
    [ending] = [json.loads(line) for line in (tmp_path / "result.jsonl").read_text().splitlines()]
    assert ending["outcome"] == "bad_config"
    assert "data source 'gamma'" in ending["message"] and "nowhere/gamma.bin" in ending["message"]
