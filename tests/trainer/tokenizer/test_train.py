"""Training: digits split, domain tokens whole, bans enforced, layout padded, HF-loadable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from tests.trainer.tokenizer.conftest import BANNED, DOMAIN_TOKENS, PAD_MULTIPLE, SPARE
from trainer.tokenizer import artifact
from trainer.tokenizer.train import Trained, TrainOptions, train_tokenizer
from trainer.tokenizer.vocab import BanList, merges_of, surface_decoder, token_surfaces

NUMBERS = "9.11 > 9.9, 3.14159, 1234567 and 2024年3月15日; x = 10**18 + 42"
BANNED_TEXT = "from os import path\n    return 中国人民 self.returned  # 中国的 returnable\n"


def spec_of(tokenizer: Tokenizer) -> dict:
    return json.loads(tokenizer.to_str())


def texts_by_id(tokenizer: Tokenizer) -> dict[int, str]:
    return {
        i: data.decode("utf-8", errors="replace")
        for i, data in token_surfaces(spec_of(tokenizer)).items()
    }


def learned_texts(tokenizer: Tokenizer) -> list[str]:
    """Texts of the model's own tokens: no special, domain or reserved tokens."""
    added = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    surface = surface_decoder(spec_of(tokenizer))
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    return [surface(t).decode("utf-8", errors="replace") for t in vocab if t not in added]


@pytest.fixture(scope="module")
def saved(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return artifact.save(tmp_path_factory.mktemp("tok"), trained.tokenizer, trained.layout)


# --------------------------------------------------------------------------- digits


def test_every_digit_is_its_own_token(trained: Trained) -> None:
    tokenizer = trained.tokenizer
    texts = texts_by_id(tokenizer)
    encoding = tokenizer.encode(NUMBERS)
    digit_pieces = [texts[i] for i in encoding.ids if re.search(r"\d", texts[i])]
    assert digit_pieces == re.findall(r"\d", NUMBERS)
    assert tokenizer.decode(encoding.ids) == NUMBERS


def test_no_vocabulary_entry_holds_two_digits(trained: Trained) -> None:
    texts = learned_texts(trained.tokenizer)
    assert [t for t in texts if len(re.findall("[0-9]", t)) > 1] == []
    digits = [t for t in texts if re.search("[0-9]", t)]
    assert sorted(digits) == list("0123456789")


# --------------------------------------------------------------------------- domain tokens


def test_each_domain_token_is_one_token_even_inside_longer_text(trained: Trained) -> None:
    tokenizer = trained.tokenizer
    text = "患者服用阿莫西林胶囊，对青霉素过敏者慎用 amoxicillin。阿莫西林阿莫西林"
    ids = tokenizer.encode(text).ids
    for token in DOMAIN_TOKENS:
        token_id = tokenizer.token_to_id(token)
        assert tokenizer.encode(token).ids == [token_id]
        assert ids.count(token_id) == text.count(token)
        assert trained.layout["domain_tokens"][token] == token_id
    assert tokenizer.decode(ids) == text


def test_domain_token_that_matches_a_ban_is_refused(mixed: list[str]) -> None:
    with pytest.raises(ValueError, match="match a banned pattern"):
        train_tokenizer(
            mixed[:5],
            TrainOptions(vocab_size=400, domain_tokens=("return value",), banned=("return",)),
        )


# --------------------------------------------------------------------------- bans


def test_bans_remove_tokens_the_unbanned_tokenizer_learned(
    trained: Trained, unbanned: Trained
) -> None:
    bans = BanList.from_lines(BANNED)
    learned = [t for t in texts_by_id(unbanned.tokenizer).values() if bans.matches(t)]
    assert any("return" in t for t in learned) and any("中国" in t for t in learned)
    assert " import" in learned  # so each kind of pattern had something to remove
    assert [t for t in texts_by_id(trained.tokenizer).values() if bans.matches(t)] == []
    assert trained.layout["banned"]["removed_tokens"] >= len(learned)


def test_no_merge_produces_or_uses_a_banned_token(trained: Trained) -> None:
    spec = spec_of(trained.tokenizer)
    surface = surface_decoder(spec)
    bans = BanList.from_lines(BANNED)
    vocab = spec["model"]["vocab"]
    merges = merges_of(spec["model"])
    assert merges
    for a, b in merges:
        assert a in vocab and b in vocab and a + b in vocab  # the merge table is closed
        for token in (a, b, a + b):
            assert not bans.matches(surface(token).decode("utf-8", errors="replace"))


def test_text_with_banned_words_round_trips_in_smaller_pieces(trained: Trained) -> None:
    tokenizer = trained.tokenizer
    encoding = tokenizer.encode(BANNED_TEXT)
    assert tokenizer.decode(encoding.ids) == BANNED_TEXT
    texts = texts_by_id(tokenizer)
    assert all("return" not in texts[i] and "中国" not in texts[i] for i in encoding.ids)


def test_ids_run_from_zero_without_gaps_specials_first(trained: Trained) -> None:
    vocab = trained.tokenizer.get_vocab(with_added_tokens=True)
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert [vocab[t] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")] == [
        0,
        1,
        2,
        3,
    ]


# --------------------------------------------------------------------------- layout


def test_spare_tokens_and_padding_are_as_requested(trained: Trained) -> None:
    layout = trained.layout
    tokenizer = trained.tokenizer
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    assert layout["vocab_size"] == size
    assert layout["padded_vocab_size"] % PAD_MULTIPLE == 0
    assert size <= layout["padded_vocab_size"] < size + PAD_MULTIPLE
    reserved = [f"<|reserved_{i}|>" for i in range(SPARE)]
    ids = [tokenizer.token_to_id(t) for t in reserved]
    assert ids == list(range(size - SPARE, size))  # the last ids, in order
    assert tokenizer.token_to_id(f"<|reserved_{SPARE}|>") is None
    assert layout["spare_rows"] == {
        "reserved": SPARE,
        "padding": layout["padded_vocab_size"] - size,
        "total": SPARE + layout["padded_vocab_size"] - size,
    }
    assert tokenizer.decode(tokenizer.encode("hi<|reserved_3|>").ids) == "hi"  # special: skipped


def test_model_vocabulary_is_the_requested_size_less_the_bans(
    trained: Trained, unbanned: Trained
) -> None:
    assert unbanned.layout["model_vocab_size"] == 3000
    removed = trained.layout["banned"]["removed_tokens"]
    assert trained.layout["model_vocab_size"] == 3000 - removed
    assert trained.layout["vocab_size"] == 3000 - removed + len(DOMAIN_TOKENS) + SPARE


# --------------------------------------------------------------------------- loading


def test_loads_with_pretrained_tokenizer_fast_from_file_and_directory(
    trained: Trained, saved: Path
) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    text = "def f(x):\n    return x + 1  # 阿莫西林 9.11"
    expected = trained.tokenizer.encode(text).ids
    from_file = PreTrainedTokenizerFast(tokenizer_file=str(saved / "tokenizer.json"))
    from_dir = PreTrainedTokenizerFast.from_pretrained(saved)
    auto = AutoTokenizer.from_pretrained(saved)
    for hf in (from_file, from_dir, auto):
        assert hf.encode(text, add_special_tokens=False) == expected
        assert hf.decode(expected) == text
        assert len(hf) == trained.layout["vocab_size"]
    assert (from_dir.eos_token, from_dir.eos_token_id) == ("<|endoftext|>", 0)
    assert (from_dir.pad_token, from_dir.pad_token_id) == ("<|pad|>", 3)
    chat = from_dir.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False)
    assert chat == "<|im_start|>user\n你好<|im_end|>\n"


def test_trainer_loads_the_directory_and_finds_eos(trained: Trained, saved: Path) -> None:
    from trainer.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(saved))
    assert tokenizer.eos_id == 0
    assert tokenizer.vocab_size == trained.layout["vocab_size"]
    assert tokenizer.decode(tokenizer.encode("阿莫西林 12")) == "阿莫西林 12"


# --------------------------------------------------------------------------- other models


@pytest.mark.parametrize("model", ["bpe", "wordpiece"])
def test_other_models_split_digits_and_keep_domain_tokens_whole(
    model: str, slices: dict[str, list[str]]
) -> None:
    documents = [*slices["code"][:20], *slices["zh"][:100]]
    options = TrainOptions(
        vocab_size=1200, model=model, domain_tokens=("青霉素",), spare=3, banned=("self",)
    )
    trained = train_tokenizer(documents, options)
    tokenizer = trained.tokenizer
    texts = learned_texts(tokenizer)
    assert [t for t in texts if len(re.findall("[0-9]", t)) > 1] == []
    assert tokenizer.encode("服用青霉素 2024").ids.count(tokenizer.token_to_id("青霉素")) == 1
    assert not [t for t in texts if "self" in t]
    assert trained.layout["padded_vocab_size"] % 128 == 0
    if model == "bpe":  # byte fallback: characters it never saw still round-trip
        text = "self.x = 42  # ünïcödé ☃ 𝄞"
        assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_too_small_a_vocabulary_is_refused() -> None:
    with pytest.raises(ValueError, match="leaves no room"):
        TrainOptions(vocab_size=200)
    with pytest.raises(ValueError, match="model must be one of"):
        TrainOptions(model="unigram")
