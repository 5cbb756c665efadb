"""Expansion: old ids never move, old text encodes as before, Chinese compresses better."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from trainer.tokenizer import artifact
from trainer.tokenizer.expand import Expanded, ExpandOptions, expand_tokenizer
from trainer.tokenizer.report import corpus_report
from trainer.tokenizer.train import Trained
from trainer.tokenizer.vocab import CJK

ADD = 800


@pytest.fixture(scope="module")
def expanded(base: Trained, zh_new: list[str]) -> Expanded:
    return expand_tokenizer(
        base.tokenizer, zh_new, ExpandOptions(add=ADD), base_layout=base.layout, base_name="base"
    )


@pytest.fixture(scope="module")
def reloaded(expanded: Expanded, tmp_path_factory: pytest.TempPathFactory) -> Path:
    extra = {artifact.EXPANSION_FILE: expanded.expansion}
    return artifact.save(
        tmp_path_factory.mktemp("grown"), expanded.tokenizer, expanded.layout, extra
    )


def test_every_old_token_keeps_its_id_after_saving_and_loading(
    base: Trained, reloaded: Path
) -> None:
    from transformers import PreTrainedTokenizerFast

    old = base.tokenizer.get_vocab(with_added_tokens=True)
    rust = Tokenizer.from_file(str(reloaded / "tokenizer.json"))
    hf = PreTrainedTokenizerFast.from_pretrained(reloaded)
    assert {t: rust.token_to_id(t) for t in old} == old
    assert {t: hf.convert_tokens_to_ids(t) for t in old} == old
    assert rust.token_to_id("<|reserved_9|>") == old["<|reserved_9|>"]
    assert rust.encode("阿莫西林").ids == [old["阿莫西林"]]


def test_new_tokens_follow_the_old_vocabulary_in_order(base: Trained, expanded: Expanded) -> None:
    old_size = base.tokenizer.get_vocab_size(with_added_tokens=True)
    mapping = expanded.expansion
    ids = [entry["id"] for entry in mapping["added"]]
    assert mapping["added_count"] == ADD == len(ids)
    assert ids == list(range(old_size, old_size + ADD))
    assert mapping["old_vocab_size"] == old_size
    assert mapping["new_vocab_size"] == old_size + ADD == expanded.tokenizer.get_vocab_size()
    assert mapping["padded_vocab_size"] % 128 == 0
    assert (
        mapping["new_vocab_size"] <= mapping["padded_vocab_size"] < mapping["new_vocab_size"] + 128
    )
    assert mapping["old_padded_vocab_size"] == base.layout["padded_vocab_size"]
    assert expanded.layout["padded_vocab_size"] == mapping["padded_vocab_size"]
    chinese = [entry for entry in mapping["added"] if CJK.search(entry["text"])]
    assert len(chinese) > ADD / 2  # learned on Chinese: mostly Chinese words and characters


def test_old_merges_stay_first_and_new_ones_follow(base: Trained, expanded: Expanded) -> None:
    old_merges = json.loads(base.tokenizer.to_str())["model"]["merges"]
    new_merges = json.loads(expanded.tokenizer.to_str())["model"]["merges"]
    assert new_merges[: len(old_merges)] == old_merges
    assert len(new_merges) > len(old_merges)


def test_text_encodes_as_before_unless_a_new_token_applies(
    base: Trained, expanded: Expanded, slices: dict[str, list[str]]
) -> None:
    old_size = base.tokenizer.get_vocab_size(with_added_tokens=True)
    documents = slices["code"] + slices["en"] + slices["zh"][:50]
    old = base.tokenizer.encode_batch(documents)
    new = expanded.tokenizer.encode_batch(documents)
    changed = 0
    for before, after in zip(old, new, strict=True):
        if max(after.ids, default=0) < old_size:
            assert after.ids == before.ids
        else:
            changed += 1
    assert changed >= 50  # every Chinese document uses a new token
    ascii_docs = [i for i, doc in enumerate(documents) if doc.isascii()]
    assert len(ascii_docs) > 10
    assert all(new[i].ids == old[i].ids for i in ascii_docs)


def test_chinese_characters_per_token_rise(
    base: Trained, expanded: Expanded, zh_held_out: list[str]
) -> None:
    before = corpus_report(base.tokenizer, zh_held_out)["zh_chars_per_token"]
    after = corpus_report(expanded.tokenizer, zh_held_out)["zh_chars_per_token"]
    assert after > 1.5 * before
    text = "".join(zh_held_out[:3])
    assert expanded.tokenizer.decode(expanded.tokenizer.encode(text).ids) == text


def test_banned_candidates_are_not_added(base: Trained, zh_new: list[str]) -> None:
    grown = expand_tokenizer(base.tokenizer, zh_new, ExpandOptions(add=300, banned=("的",)))
    texts = [entry["text"] for entry in grown.expansion["added"]]
    assert len(texts) == 300
    assert not [t for t in texts if "的" in t]
    assert grown.tokenizer.decode(grown.tokenizer.encode("我的书").ids) == "我的书"


def test_expanding_a_wordpiece_tokenizer_is_refused(slices: dict[str, list[str]]) -> None:
    from trainer.tokenizer.train import TrainOptions, train_tokenizer

    wordpiece = train_tokenizer(
        slices["en"][:5], TrainOptions(vocab_size=600, model="wordpiece", spare=0)
    )
    with pytest.raises(ValueError, match="needs a BPE"):
        expand_tokenizer(wordpiece.tokenizer, ["x"], ExpandOptions(add=5))


def test_a_byte_fallback_base_gains_the_characters_it_lacked(
    slices: dict[str, list[str]], zh_new: list[str], zh_held_out: list[str]
) -> None:
    from trainer.tokenizer.train import TrainOptions, train_tokenizer

    english = train_tokenizer(slices["en"], TrainOptions(vocab_size=1000, model="bpe", spare=4))
    # Characters the base lacks come first, most frequent first, then merges of them; with
    # min_frequency 80 the corpus has fewer than 600 such tokens, and the mapping says so.
    grown = expand_tokenizer(english.tokenizer, zh_new, ExpandOptions(add=600, min_frequency=80))
    old = english.tokenizer.get_vocab(with_added_tokens=True)
    assert {t: grown.tokenizer.token_to_id(t) for t in old} == old
    texts = [entry["text"] for entry in grown.expansion["added"]]
    counts = Counter("".join(zh_new))
    lacking = [ch for ch, n in counts.items() if n >= 80 and not ch.isspace() and ch not in old]
    assert sorted(texts[: len(lacking)]) == sorted(lacking)
    assert texts[0] == max(lacking, key=counts.__getitem__)
    merged = texts[len(lacking) :]
    assert merged and all(len(t) > 1 for t in merged)
    assert grown.expansion["added_count"] == len(texts) < grown.expansion["requested"] == 600
    before = corpus_report(english.tokenizer, zh_held_out)
    after = corpus_report(grown.tokenizer, zh_held_out)
    assert after["byte_piece_share"] < before["byte_piece_share"]
    assert after["zh_chars_per_token"] > 1.5 * before["zh_chars_per_token"]
    text = zh_held_out[0]
    assert grown.tokenizer.decode(grown.tokenizer.encode(text).ids) == text
