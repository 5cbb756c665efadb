"""Data preparation (`trainer.prepare`): text into a Megatron pair that megatron reads back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trainer import prepare
from trainer.prepare import PrepareError, run_data_job
from trainer.tokenizer import load_tokenizer

ENGLISH = "The quick brown fox jumps over the lazy dog. "
CHINESE = "数据准备把文本变成词元。"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str], list[str]]:
    """Two JSONL files (one with empty documents), a text file and a folder, and the documents
    in input order; the second JSONL file is large enough to be split in byte ranges."""
    root = tmp_path_factory.mktemp("corpus")
    first = [f"{ENGLISH * (i % 4 + 1)}#{i}" for i in range(40)] + ["", f"{CHINESE} 🙂"]
    (root / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in first))
    second = [f"{CHINESE * (i % 7 + 1)} {i}\n\twith <|endoftext|> inside" for i in range(300)]
    lines = [json.dumps({"body": t, "id": i}, ensure_ascii=False) for i, t in enumerate(second)]
    (root / "b.jsonl").write_text("\n".join(lines) + "\n\n")  # a blank last line is no document
    (root / "c.txt").write_text("one plain text file,\nwhole, is one document\n")
    folder = root / "more"
    (folder / "sub").mkdir(parents=True)
    (folder / "z.txt").write_text("last in the folder")
    (folder / "sub" / "y.txt").write_text("first in the folder")
    (folder / ".hidden.txt").write_text("never read")
    inputs = [str(root / "a.jsonl"), str(root / "b.jsonl"), str(root / "c.txt"), str(folder)]
    expected = [t for t in first if t] + second
    expected += ["one plain text file,\nwhole, is one document\n", "first in the folder"]
    expected += ["last in the folder"]
    return root, inputs, expected


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> str:
    """A small byte-level BPE trained in a moment (its eos is `<|endoftext|>`)."""
    from trainer.tokenizer import artifact
    from trainer.tokenizer.train import TrainOptions, train_tokenizer

    documents = [ENGLISH * 20, CHINESE * 20, "with <|endoftext|> inside 0123456789"] * 5
    trained = train_tokenizer(documents, TrainOptions(vocab_size=400, spare=0))
    out = tmp_path_factory.mktemp("bpe")
    artifact.save(out, trained.tokenizer, trained.layout)
    return str(out / "tokenizer.json")


def config(inputs, output, **changes):
    return {"inputs": inputs, "output": str(output), "text_field": "text"} | changes


def written(folder: Path, *, hidden: bool = True) -> list[str]:
    """What a run left in `folder` besides its progress records (temporaries only if `hidden`)."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if not p.name.endswith(".progress.jsonl") and (hidden or not p.name.startswith("."))
    )


def read_back(prefix: Path) -> list[np.ndarray]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(str(prefix))
    assert len(dataset.document_indices) - 1 == len(dataset)  # one sequence per document
    return [np.array(dataset[i]) for i in range(len(dataset))]  # copies: the map closes


def test_a_prepared_pair_reads_back_as_the_documents_each_ending_with_eod(
    corpus, tmp_path, monkeypatch
):
    root, inputs, expected = corpus
    monkeypatch.setattr(prepare, "MIN_SPLIT_BYTES", 4096)  # b.jsonl in several byte ranges
    (root / "b2.jsonl").write_text((root / "b.jsonl").read_text().replace('"body"', '"text"'))
    inputs = [inputs[0], str(root / "b2.jsonl"), *inputs[2:]]

    one = run_data_job(config(inputs, tmp_path / "w1" / "corpus", workers=1))
    three = run_data_job(config(inputs, tmp_path / "w3" / "corpus", workers=3))

    assert three["stats"]["units"] > len(inputs)  # b2.jsonl was split
    for suffix in (".bin", ".idx"):
        assert (tmp_path / "w1" / f"corpus{suffix}").read_bytes() == (
            tmp_path / "w3" / f"corpus{suffix}"
        ).read_bytes()
    tokenizer = load_tokenizer("byte")
    documents = read_back(tmp_path / "w3" / "corpus")
    assert [tokenizer.decode(d[:-1]) for d in documents] == expected
    assert all(d[-1] == tokenizer.eos_id for d in documents)
    sidecar = json.loads((tmp_path / "w3" / "corpus.json").read_text())
    assert sidecar == three["report"] and one["report"] | {"seconds": 0} == sidecar | {"seconds": 0}
    assert list(sidecar) == list(prepare.SIDECAR_KEYS)
    assert sidecar["format"] == "pretrain-data/1" and sidecar["tokenizer"] == "byte"
    assert (sidecar["vocab_size"], sidecar["eod_id"], sidecar["dtype"]) == (258, 256, "uint16")
    assert sidecar["documents"] == len(expected)
    assert sidecar["tokens"] == sum(len(t.encode()) + 1 for t in expected)
    assert sidecar["inputs"] == inputs
    assert three["stats"]["empty_documents"] == 1
    assert three["path"] == str(tmp_path / "w3" / "corpus")
    progress = [json.loads(line) for line in (tmp_path / "w3" / "corpus.progress.jsonl").open()]
    steps = [record["step"] for record in progress]
    assert steps == sorted(set(steps)) and steps[-1] == three["stats"]["input_bytes"]
    assert progress[-1]["metrics"]["prep/tokens"] == sidecar["tokens"]
    assert progress[-1]["phase"] == "prepare" and progress[-1]["metrics"]["prep/tokens_per_s"] > 0
    assert not list((tmp_path / "w3").glob(".corpus.tmp-*"))  # the temporaries are gone


def test_the_text_field_is_configurable_and_a_bpe_tokenizer_keeps_documents_apart(
    corpus, bpe, tmp_path
):
    root, _, _ = corpus
    second = [json.loads(line)["body"] for line in (root / "b.jsonl").open() if line.strip()]
    result = run_data_job(
        config([str(root / "b.jsonl")], tmp_path / "b", text_field="body", tokenizer=bpe, workers=2)
    )
    tokenizer = load_tokenizer(bpe)
    documents = read_back(tmp_path / "b")
    # The eos text inside a document encodes to eos (decoding drops it), so only the index
    # tells the documents apart.
    assert [tokenizer.decode(d[:-1]) for d in documents] == [
        t.replace("<|endoftext|>", "") for t in second
    ]
    assert all(tokenizer.eos_id in d[:-1] for d in documents)
    assert all(d[-1] == tokenizer.eos_id for d in documents)
    report = result["report"]
    assert report["tokenizer"] == tokenizer.name and report["tokenizer"].startswith("hf-")
    assert (report["vocab_size"], report["eod_id"]) == (tokenizer.vocab_size, tokenizer.eos_id)
    assert report["tokens"] == sum(len(d) for d in documents)


@pytest.mark.parametrize(
    ("line", "why"),
    [("{not json", "not a JSON line"), ('{"text": 3}', 'expected an object with a "text" string')],
)
def test_a_bad_line_is_an_error_naming_its_file_and_line(tmp_path, monkeypatch, line, why):
    monkeypatch.setattr(prepare, "MIN_SPLIT_BYTES", 256)  # the bad line in a later byte range
    lines = [json.dumps({"text": f"document {i}"}) for i in range(60)]
    lines[47] = line
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")

    with pytest.raises(PrepareError, match=f"{bad}:48: {why}"):
        run_data_job(config([str(bad)], tmp_path / "out" / "p", workers=1))
    assert written(tmp_path / "out") == []  # nothing at the prefix, no temporaries


def test_inputs_with_no_document_or_a_missing_file_are_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n')
    with pytest.raises(PrepareError, match="no non-empty document"):
        run_data_job(config([str(empty)], tmp_path / "p"))
    with pytest.raises(PrepareError, match="no such file or folder"):
        run_data_job(config([str(tmp_path / "nowhere.jsonl")], tmp_path / "p"))
    with pytest.raises(PrepareError, match="unknown keys"):
        run_data_job(config([str(empty)], tmp_path / "p", shards=4))


def test_a_run_killed_mid_write_leaves_no_pair_at_the_prefix(tmp_path):
    big = tmp_path / "big.jsonl"
    with big.open("w") as out:
        for i in range(20_000):
            out.write(json.dumps({"text": f"{ENGLISH * 8} {i}"}) + "\n")
    prefix = tmp_path / "out" / "p"
    (tmp_path / "config.json").write_text(json.dumps(config([str(big)], prefix, workers=1)))
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer.prepare", "--config", str(tmp_path / "config.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"RAYON_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "out").glob(".p.tmp-*/part-*")):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    assert written(tmp_path / "out", hidden=False) == []
    # The next run clears what the killed one left and writes the whole pair.
    result = run_data_job(config([str(big)], prefix, workers=1))
    assert written(tmp_path / "out") == ["p.bin", "p.idx", "p.json"]
    assert result["report"]["documents"] == 20_000


def test_parquet_row_groups_are_split_among_workers_and_read_in_order(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(prepare, "MIN_SPLIT_BYTES", 512)  # a unit or two of row groups each
    texts = [f"{CHINESE * (i % 5)} parquet row {i}" for i in range(400)]
    texts[7], texts[300] = "", None
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": list(range(400)), "body": texts}), path, row_group_size=50)

    one = run_data_job(config([str(path)], tmp_path / "p1", text_field="body", workers=1))
    two = run_data_job(config([str(path)], tmp_path / "p2", text_field="body", workers=2))

    assert two["stats"]["units"] > 1 and two["stats"]["empty_documents"] == 2
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"p1{suffix}").read_bytes() == (tmp_path / f"p2{suffix}").read_bytes()
    tokenizer = load_tokenizer("byte")
    assert [tokenizer.decode(d[:-1]) for d in read_back(tmp_path / "p2")] == [t for t in texts if t]
    assert one["report"]["documents"] == 398

    with pytest.raises(PrepareError, match="no column 'text'"):
        run_data_job(config([str(path)], tmp_path / "p3"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(PrepareError, match="not a Parquet file"):
        run_data_job(config([str(tmp_path / "bad.parquet")], tmp_path / "p4"))


def test_a_prepared_pair_trains_and_a_run_with_another_tokenizer_refuses_it(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from trainer.corpora import SourceUnavailable
    from trainer.data import MixtureDataset

    lines = [json.dumps({"text": f"document {i}: " + "words and more words " * (i % 7 + 1)}) for i in range(300)]
    (tmp_path / "web.jsonl").write_text("\n".join(lines) + "\n")
    run_data_job(config([str(tmp_path / "web.jsonl")], tmp_path / "out" / "web", workers=2))
    prefix = str(tmp_path / "out" / "web")

    stage = MixtureDataset([("web", prefix, 1.0)], seq_length=16, seed=3, tokenizer=load_tokenizer("byte"))
    text = load_tokenizer("byte").decode(stage.batch(0, 4)["tokens"].flatten().tolist())
    assert "words" in text

    rust = Tokenizer(models.BPE(unk_token="<unk>"))
    rust.pre_tokenizer = pre_tokenizers.ByteLevel()
    rust.train_from_iterator(["words and more words"] * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|endoftext|>"]))
    rust.save(str(tmp_path / "tokenizer.json"))
    other = load_tokenizer(str(tmp_path / "tokenizer.json"))
    with pytest.raises(SourceUnavailable, match=f"prepared with tokenizer 'byte', but this run uses '{other.name}'"):
        MixtureDataset([("web", prefix, 1.0)], seq_length=16, seed=3, tokenizer=other)
