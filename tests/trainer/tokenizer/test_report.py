"""Report figures against counts made by hand, and the corpus specs the workshop reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from trainer.tokenizer.corpus import head_bytes, load_corpus, parse_named
from trainer.tokenizer.report import corpus_report, probe, tokenization_report, vocabulary_report
from trainer.tokenizer.train import SPLIT_PATTERN
from trainer.tokenizer.vocab import BanList, byte_level_alphabet, byte_level_text, prune_bpe


@pytest.fixture(scope="module")
def hand_made() -> Tokenizer:
    """Byte-level BPE: the 256 bytes, then merges making "ab" and "中" (not "文")."""
    alphabet = [byte_level_alphabet()[b] for b in range(256)]
    zhong = byte_level_text("中")  # three byte symbols
    merges = [("a", "b"), (zhong[0], zhong[1]), (zhong[:2], zhong[2])]
    vocab = {token: i for i, token in enumerate([*alphabet, "ab", zhong[:2], zhong])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def test_corpus_figures_match_a_hand_count(hand_made: Tokenizer) -> None:
    # "ab中文 7" → ab | 中 | 文 as 3 byte pieces | " " | 7 = 7 tokens; "ab" → 1 token.
    documents = ["ab中文 7", "ab"]
    assert len(hand_made.encode(documents[0]).ids) == 7  # the count the rest relies on
    row = corpus_report(hand_made, documents)
    assert (row["chars"], row["bytes"], row["tokens"]) == (8, 12, 8)
    assert row["chars_per_token"] == pytest.approx(8 / 8)
    assert row["bytes_per_token"] == pytest.approx(12 / 8)
    # 2 ideographs; tokens covering one: 中 and the three pieces of 文.
    assert (row["zh_chars"], row["zh_tokens"]) == (2, 4)
    assert row["zh_chars_per_token"] == pytest.approx(0.5)
    assert row["byte_piece_share"] == pytest.approx(3 / 8)
    assert row["unk_share"] == 0
    # distinct a b 中 文 space 7: all but 文 are one token; of the ideographs, 中 only.
    assert (row["distinct_chars"], row["distinct_zh_chars"]) == (6, 2)
    assert row["char_coverage"] == pytest.approx(5 / 6)
    assert row["zh_char_coverage"] == pytest.approx(1 / 2)


def test_vocabulary_figures_match_a_hand_count(hand_made: Tokenizer) -> None:
    vocab = vocabulary_report(hand_made)
    assert vocab["vocab_size"] == 259
    assert vocab["byte_pieces"] == 128 + 1  # bytes 0x80-0xFF and the first two bytes of 中
    assert vocab["cjk_share"] == pytest.approx(1 / 259)  # 中
    assert vocab["latin_share"] == pytest.approx(53 / 259)  # 52 ASCII letters and "ab"
    assert (vocab["digit_tokens"], vocab["max_digits_in_a_token"]) == (10, 1)


def test_chinese_figure_ignores_punctuation_and_latin_around_it(hand_made: Tokenizer) -> None:
    # "中。ab" → 中 | 。 as 3 pieces | ab: 1 ideograph over the 1 token that covers it.
    row = corpus_report(hand_made, ["中。ab"])
    assert row["tokens"] == 5
    assert row["zh_chars_per_token"] == pytest.approx(1.0)
    assert row["chars_per_token"] == pytest.approx(4 / 5)
    assert corpus_report(hand_made, ["ab"])["zh_chars_per_token"] is None


def test_probes_show_byte_pieces_in_hex(hand_made: Tokenizer) -> None:
    assert probe(hand_made, ["ab中文"])["ab中文"] == ["ab", "中", "\\xe6", "\\x96", "\\x87"]


def test_report_collects_vocabulary_corpora_and_probes(hand_made: Tokenizer) -> None:
    layout = {"domain_tokens": {"中文": 300}, "model": "byte-bpe", "vocab_size": 259}
    report = tokenization_report(hand_made, {"tiny": ["ab"]}, probes=["ab"], layout=layout)
    assert set(report) == {"vocabulary", "layout", "corpora", "digits", "probes"}
    assert report["digits"]["9.11"] == ["9", ".", "1", "1"]
    assert list(report["probes"]) == ["中文", "ab"]
    json.dumps(report)  # JSON-able as is


# --------------------------------------------------------------------------- bans, pruning


def test_ban_lines_are_literals_or_regexes() -> None:
    bans = BanList.from_lines(["# a comment", "", "secret", "re:^\\d{3}$"])
    assert len(bans) == 2
    assert bans.matches("top-secrets") and bans.matches("123")
    assert not bans.matches("1234") and not bans.matches("Secret")
    with pytest.raises(ValueError, match="not a valid regex"):
        BanList.from_lines(["re:("])


def test_pruning_takes_out_orphans_and_keeps_the_alphabet() -> None:
    tokens = ["a", "b", "c", "ab", "abc", "bc", "abcab"]
    merges = [("a", "b"), ("ab", "c"), ("b", "c"), ("abc", "ab")]
    pruned = prune_bpe(tokens, merges, banned=lambda t: t in {"ab", "c"})
    # "ab" goes with every merge producing or using it; "abc" and "abcab" are orphaned; "c"
    # is alphabet and stays, so "bc" stays too.
    assert pruned.tokens == ["a", "b", "c", "bc"]
    assert pruned.merges == [("b", "c")]
    assert pruned.removed == ["ab", "abc", "abcab"]
    assert pruned.kept_alphabet == ["c"]


# --------------------------------------------------------------------------- corpora


def test_corpus_specs_read_files_jsonl_folders_and_embedded(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("first doc", encoding="utf-8")
    (tmp_path / "docs" / "b.jsonl").write_text(
        '{"text": "二"}\n\n{"text": "three"}\n', encoding="utf-8"
    )
    (tmp_path / "docs" / ".hidden").write_text("skip me", encoding="utf-8")
    assert load_corpus(str(tmp_path / "docs")).documents == ("first doc", "二", "three")
    assert load_corpus(str(tmp_path / "docs" / "b.jsonl")).name == "b"
    zh = load_corpus("embedded://zh", max_bytes=1000)
    assert zh.name == "zh" and 997 <= zh.bytes <= 1000
    assert load_corpus("embedded:zh", max_bytes=1000).documents == zh.documents
    assert parse_named("mine=embedded:en") == ("mine", "embedded:en")
    assert parse_named("embedded:en") == ("en", "embedded:en")
    with pytest.raises(ValueError, match="unknown embedded corpus"):
        load_corpus("embedded:fr")
    with pytest.raises(FileNotFoundError):
        load_corpus(str(tmp_path / "missing.txt"))


def test_head_bytes_cuts_on_a_character_boundary() -> None:
    assert head_bytes(["ab", "中文字"], 6) == ("ab", "中")
    assert head_bytes(["ab", "cd"], 4) == ("ab", "cd")
