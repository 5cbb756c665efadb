"""Data accounting before the run: source sizes (sidecar, .idx, embedded table) and epochs."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from service import sources
from service.admission import plan_spec
from service.embedded_sizes import BYTE_TOKENIZER_SIZES
from service.settings import Settings
from service.sources import source_size


@pytest.fixture(autouse=True)
def _fresh_cache():
    sources.clear_cache()
    yield
    sources.clear_cache()


def megatron_pair(prefix: Path, documents: list[list[list[int]]], dtype=np.uint16) -> Path:
    """A `.bin/.idx` written by megatron-core's own builder; each document is its sequences."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for sequences in documents:
        flat = np.asarray([token for sequence in sequences for token in sequence], dtype=dtype)
        builder.add_document(flat, [len(sequence) for sequence in sequences])
    builder.finalize(f"{prefix}.idx")
    return prefix


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_index_size_matches_megatrons_reader(tmp_path: Path, dtype) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    rng = np.random.default_rng(7)
    documents = [
        [rng.integers(0, 250, size=int(n)).tolist() for n in rng.integers(1, 40, size=int(k))]
        for k in rng.integers(1, 4, size=25)
    ]
    prefix = megatron_pair(tmp_path / "corpus", documents, dtype)

    dataset = IndexedDataset(str(prefix))
    expected = (len(dataset.document_indices) - 1, int(dataset.sequence_lengths.sum()))
    assert sources.index_size(f"{prefix}.idx") == expected == (25, sum(map(len, sum(documents, []))))


def test_a_summed_index_is_cached_by_path_mtime_and_size(tmp_path: Path, monkeypatch) -> None:
    prefix = megatron_pair(tmp_path / "corpus", [[[1, 2, 3]], [[4, 5]]])
    reads = []
    real = sources._read_index
    monkeypatch.setattr(sources, "_read_index", lambda *a: reads.append(1) or real(*a))

    for _ in range(3):
        assert sources.index_size(f"{prefix}.idx") == (2, 5)
    assert len(reads) == 1
    megatron_pair(prefix, [[[1, 2, 3, 4]], [[5, 6]], [[7]]])  # rewritten: new size and mtime
    os.utime(f"{prefix}.idx", ns=(1, 1))
    assert sources.index_size(f"{prefix}.idx") == (3, 7)
    assert len(reads) == 2


def test_the_sidecar_answers_before_the_index(tmp_path: Path) -> None:
    prefix = megatron_pair(tmp_path / "en", [[[1, 2, 3]]])
    sidecar = {"format": "pretrain-data/1", "tokenizer": "bpe-32k@abc", "vocab_size": 32000, "eod_id": 0,
               "documents": 10, "tokens": 12345}
    Path(f"{prefix}.json").write_text(json.dumps(sidecar))

    size = source_size("en", data_root=str(tmp_path), byte_tokenizer=True)
    assert (size.tokens, size.documents, size.basis) == (12345, 10, "sidecar")
    assert "bpe-32k@abc" in size.note
    # Another format's sidecar is not ours to read: the index is counted.
    Path(f"{prefix}.json").write_text(json.dumps({**sidecar, "format": "other/2"}))
    size = source_size(f"indexed://{prefix}.bin", data_root="/elsewhere", byte_tokenizer=True)
    assert (size.tokens, size.basis, size.key) == (3, "index", str(prefix))


def test_sizes_the_service_cannot_know_are_unknown_with_the_reason(tmp_path: Path) -> None:
    s3 = source_size("s3://corpus/en", data_root=str(tmp_path), byte_tokenizer=True)
    assert (s3.tokens, s3.basis) == (None, "unknown") and "s3://" in s3.note
    missing = source_size("nowhere/en", data_root=str(tmp_path), byte_tokenizer=True)
    assert missing.tokens is None and "nowhere/en.idx" in missing.note
    (tmp_path / "junk.idx").write_bytes(b"not an index at all, just some text that is long enough")
    junk = source_size("junk", data_root=str(tmp_path), byte_tokenizer=True)
    assert junk.tokens is None and "bad magic" in junk.note
    os.mkfifo(tmp_path / "fifo.idx")  # never opened for a blocking read
    assert source_size("fifo", data_root=str(tmp_path), byte_tokenizer=True).tokens is None
    other_tokenizer = source_size("embedded://en", data_root="/", byte_tokenizer=False)
    assert other_tokenizer.tokens is None and "byte tokenizer" in other_tokenizer.note
    embedded = source_size("embedded:en", data_root="/", byte_tokenizer=True)
    assert (embedded.tokens, embedded.key) == (BYTE_TOKENIZER_SIZES["en"][1], "embedded://en")


def test_the_embedded_table_is_the_byte_tokenizers_real_count() -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "embedded_sizes.py"
    spec = importlib.util.spec_from_file_location("embedded_sizes_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.count() == BYTE_TOKENIZER_SIZES, "run scripts/embedded_sizes.py"


def planned(spec: dict, data_root: Path) -> dict:
    settings = Settings(data_root=str(data_root), state_dir=data_root.parent / "state", environment="development")
    return plan_spec(spec, settings).model_dump(mode="json")


def test_epochs_of_a_tiny_prepared_source_and_the_warning(tiny_spec: dict, tmp_path: Path) -> None:
    data_root = tmp_path / "data"
    megatron_pair(data_root / "small", [[list(range(1000))] for _ in range(10)])  # 10,000 tokens
    stage = tiny_spec["stages"][0]
    stage["data"] = [
        {"channel": "small", "path": "small", "weight": 0.25},
        {"channel": "web", "path": "s3://corpus/web", "weight": 0.75},
    ]
    tiny_spec["stages"][1]["data"] = [{"channel": "again", "path": "small.bin", "weight": 1}]

    plan = planned(tiny_spec, data_root)
    data = plan["data"]
    first, anneal = data["stages"]
    small, web = first["sources"]
    assert small["tokens_planned"] == round(first["tokens"] * 0.25)
    # Epochs are of the training share: the split's train part (Megatron's default 96.9%).
    assert data["train_share"] == pytest.approx(0.969)
    assert (small["size_tokens"], small["size_basis"]) == (10_000, "index")
    assert small["epochs"] == pytest.approx(small["tokens_planned"] / (10_000 * 0.969))
    assert (web["size_tokens"], web["epochs"], web["size_basis"]) == (None, None, "unknown")
    assert anneal["sources"][0]["tokens_planned"] == anneal["tokens"]
    # One source under two channels and two spellings: one total over the run.
    total = next(s for s in data["sources"] if s["path"] == "small")
    assert total["channels"] == ["small", "again"]
    assert total["tokens_planned"] == small["tokens_planned"] + anneal["tokens"]
    assert total["epochs"] == pytest.approx(total["tokens_planned"] / 9_690) == pytest.approx(13.1072 / 0.969)
    assert total["over_limit"]
    assert data["max_source_epochs"] == 4
    [warning] = [w for w in plan["warnings"] if "max_source_epochs" in w]
    assert "'small'" in warning and "Muennighoff" in warning

    relaxed = planned({**tiny_spec, "max_source_epochs": 16}, data_root)
    assert not any("max_source_epochs" in w for w in relaxed["warnings"])
    assert not any(s["over_limit"] for s in relaxed["data"]["sources"])


def test_the_epoch_limit_is_bounded(tiny_spec: dict, tmp_path: Path) -> None:
    from service.spec import SpecInvalid

    for bad in (0, 101, "4"):
        with pytest.raises(SpecInvalid, match="max_source_epochs"):
            planned({**tiny_spec, "max_source_epochs": bad}, tmp_path / "data")


def test_pretrainctl_plan_prints_the_data_table(tiny_spec: dict, tmp_path: Path, capsys) -> None:
    from pretrainctl.output import show_plan

    data_root = tmp_path / "data"
    megatron_pair(data_root / "small", [[list(range(1000))] for _ in range(10)])
    tiny_spec["stages"][0]["data"] = [
        {"channel": "small", "path": "small", "weight": 0.25},
        {"channel": "web", "path": "s3://corpus/web", "weight": 0.75},
    ]
    show_plan(planned(tiny_spec, data_root))
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:5] == ["pretrain", "small", "25.0%", "65.5K", "of"] and "= 6.76 epochs" in line for line in lines)
    assert any(line.split()[:2] == ["pretrain", "web"] and "? (s3:// is not read by the service)" in line for line in lines)
    assert any(line.split()[:2] == ["run", "small"] and "6.76 epochs  OVER LIMIT" in line for line in lines)
    assert any(line.startswith("warning") and "max_source_epochs 4" in line for line in lines)


def test_a_plan_stored_before_the_data_accounting_still_loads(tiny_spec: dict, tmp_path: Path) -> None:
    from service.jobspec import load_plan

    stored = {k: v for k, v in planned(tiny_spec, tmp_path / "data").items() if k != "data"}
    assert load_plan(stored).data is None


def test_an_index_linked_from_outside_the_roots_is_not_read(tiny_spec: dict, tmp_path: Path) -> None:
    outside = megatron_pair(tmp_path / "outside" / "secret", [[[1, 2, 3]]])
    data_root = tmp_path / "data"
    data_root.mkdir()
    (data_root / "inside.idx").symlink_to(f"{outside}.idx")  # the prefix itself is not a link
    tiny_spec["stages"][0]["data"] = [{"channel": "en", "path": "inside", "weight": 1}]

    [source] = planned(tiny_spec, data_root)["data"]["stages"][0]["sources"]
    assert (source["size_tokens"], source["size_basis"]) == (None, "unknown")
    assert "outside the allowed roots" in source["size_note"]


def test_a_submission_naming_a_pair_the_trainer_could_not_open_is_refused(tiny_spec: dict, tmp_path: Path) -> None:
    import json

    from service.admission import OverMemory, admit
    from service.spec import SpecInvalid

    data_root = tmp_path / "data"
    megatron_pair(data_root / "web", [[list(range(100))] for _ in range(10)])
    settings = Settings(data_root=str(data_root), state_dir=tmp_path / "state", environment="development")
    tiny_spec["stages"][0]["data"] = [
        {"channel": "web", "path": "web", "weight": 0.5},
        {"channel": "gone", "path": "nowhere/gone", "weight": 0.5},
    ]
    with pytest.raises(SpecInvalid) as refused:
        admit(tiny_spec, settings=settings, over_memory=OverMemory.REFUSE)
    [missing] = refused.value.problems
    assert missing.loc == ["stages", 0, "data", 1, "path"] and "gone.bin" in missing.msg
    assert "kind: data" in missing.msg
    planned_anyway = plan_spec(tiny_spec, settings)  # a plan before the data exists is fine
    assert planned_anyway.model_dump(mode="json")["data"]["stages"][0]["sources"][1]["size_basis"] == "unknown"

    tiny_spec["stages"][0]["data"] = [{"channel": "web", "path": "web", "weight": 1.0}]
    assert admit(tiny_spec, settings=settings, over_memory=OverMemory.REFUSE).plan is not None
    (data_root / "web.json").write_text(json.dumps({"format": "pretrain-data/1", "tokenizer": "hf-0123456789abcdef", "tokens": 1000}))
    with pytest.raises(SpecInvalid, match="prepared with tokenizer 'hf-0123456789abcdef', but this job uses 'byte'"):
        admit(tiny_spec, settings=settings, over_memory=OverMemory.REFUSE)
    # Where the service does not see the data volume, the trainer is left to find out.
    elsewhere = Settings(data_root=str(tmp_path / "not-mounted"), state_dir=tmp_path / "state", environment="development")
    tiny_spec["stages"][0]["data"] = [{"channel": "gone", "path": "nowhere/gone", "weight": 1.0}]
    assert admit(tiny_spec, settings=elsewhere, over_memory=OverMemory.REFUSE).plan is not None
