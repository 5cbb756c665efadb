"""`pretrain-tokenizer` train, expand and report, and the job config behind them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.tokenizer.cli import byte_size, main
from trainer.tokenizer.job import run_tokenizer_job


@pytest.fixture(scope="module")
def workshop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer trained and then expanded through the command line."""
    root = tmp_path_factory.mktemp("cli")
    (root / "domain.txt").write_text("阿莫西林\n青霉素\n\n", encoding="utf-8")
    (root / "banned.txt").write_text("# no keywords\nre:^ ?(def|class)$\n", encoding="utf-8")
    (root / "med.jsonl").write_text(
        "\n".join(json.dumps({"text": "患者服用阿莫西林后体温下降。" * 5}) for _ in range(40)),
        encoding="utf-8",
    )
    trained = main(
        [
            "train", "--corpus", "embedded:code", "embedded:en", "--corpus", "embedded:zh",
            "--max-bytes-per-corpus", "120K", "--vocab-size", "1500", "--out", str(root / "tok"),
            "--domain-tokens", str(root / "domain.txt"), "--banned", str(root / "banned.txt"),
            "--spare", "16", "--pad-to-multiple-of", "256",
        ]
    )  # fmt: skip
    assert trained == 0
    expanded = main(
        [
            "expand", "--base", str(root / "tok"), "--corpus", str(root / "med.jsonl"),
            "embedded:zh", "--max-bytes-per-corpus", "150K", "--add", "200",
            "--out", str(root / "tok-med"), "--json",
        ]
    )  # fmt: skip
    assert expanded == 0
    return root


def test_train_writes_a_padded_layout_with_domain_and_spare_tokens(workshop: Path) -> None:
    directory = workshop / "tok"
    names = {p.name for p in directory.iterdir()}
    assert {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab_layout.json",
    } <= names
    layout = json.loads((directory / "vocab_layout.json").read_text())
    assert layout["padded_vocab_size"] % 256 == 0 and layout["reserved"]["count"] == 16
    assert list(layout["domain_tokens"]) == ["阿莫西林", "青霉素"]
    assert layout["banned"]["removed_tokens"] >= 2  # " def" and " class"
    assert layout["training"]["corpora"] == ["embedded:code", "embedded:en", "embedded:zh"]


def test_expand_writes_the_embedding_resize_mapping(workshop: Path) -> None:
    mapping = json.loads((workshop / "tok-med" / "vocab_expansion.json").read_text())
    base_layout = json.loads((workshop / "tok" / "vocab_layout.json").read_text())
    assert mapping["old_vocab_size"] == base_layout["vocab_size"]
    assert mapping["new_vocab_size"] == mapping["old_vocab_size"] + 200
    assert [e["id"] for e in mapping["added"]] == list(
        range(mapping["old_vocab_size"], mapping["new_vocab_size"])
    )
    assert mapping["padded_vocab_size"] % 256 == 0  # the base's multiple carries over


def test_report_prints_json_through_the_console_script(workshop: Path) -> None:
    script = Path(sys.executable).with_name("pretrain-tokenizer")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "trainer.tokenizer.cli"]
    done = subprocess.run(
        [
            *command, "report", str(workshop / "tok-med"), "--corpus", str(workshop / "domain.txt"),
            f"med={workshop / 'med.jsonl'}", "--probe", "9.11", "--json",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["corpora"]) == {"domain", "med"}
    assert report["corpora"]["domain"]["tokens"] == 4  # 阿莫西林 | \n | 青霉素 | \n\n
    assert report["corpora"]["med"]["zh_chars_per_token"] > 1
    assert report["probes"]["阿莫西林"] == ["阿莫西林"]
    assert report["probes"]["9.11"] == ["9", ".", "1", "1"]
    assert report["layout"]["padded_vocab_size"] % 256 == 0


def test_report_without_json_prints_a_table(
    workshop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "report",
                str(workshop / "tok"),
                "--corpus",
                "embedded:en",
                "--max-bytes-per-corpus",
                "20K",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "chars/tok" in out and "\nen " in out and "'9.11'" in out


def test_job_config_rejects_unknown_keys_and_missing_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        run_tokenizer_job(
            {"mode": "train", "corpora": ["embedded:en"], "out": str(tmp_path), "vocab": 9}
        )
    with pytest.raises(ValueError, match="needs 'add'"):
        run_tokenizer_job(
            {"mode": "expand", "corpora": ["embedded:en"], "out": str(tmp_path), "base": "x"}
        )
    with pytest.raises(ValueError, match="mode must be"):
        run_tokenizer_job({"mode": "merge"})


def test_job_command_runs_a_json_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {
        "mode": "train",
        "corpora": ["embedded:en"],
        "max_bytes_per_corpus": 60_000,
        "out": str(tmp_path / "tok"),
        "vocab_size": 600,
        "spare": 0,
        "report_corpora": {"en": "embedded:en"},
    }
    (tmp_path / "job.json").write_text(json.dumps(config), encoding="utf-8")
    assert main(["job", str(tmp_path / "job.json")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["path"] == str(tmp_path / "tok")
    assert result["report"]["layout"]["vocab_size"] == 600
    assert result["report"]["compression"]["corpora"]["en"]["chars_per_token"] > 1.5
    assert (tmp_path / "tok" / "tokenizer.json").is_file()


def test_cli_errors_are_short_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            "--corpus",
            str(tmp_path / "nope.txt"),
            "--vocab-size",
            "600",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "error: corpus" in capsys.readouterr().err


def test_sizes_take_decimal_units() -> None:
    assert [byte_size(s) for s in ("500", "120K", "20M", "1.5G", "2MB")] == [
        500,
        120_000,
        20_000_000,
        1_500_000_000,
        2_000_000,
    ]
