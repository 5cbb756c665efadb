"""Multiple-choice sets from the embedded corpora: their shape, and the same items for a seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from trainer.corpora import embedded_documents
from trainer.mc_data import MCItem, main, make_items, write_items


def test_items_have_the_contract_shape_and_distinct_options(tmp_path: Path) -> None:
    path = write_items("en", tmp_path / "en.jsonl", items=12, seed=7, options=5)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12
    for line in lines:
        raw = json.loads(line)
        assert set(raw) == {"question", "options", "answer"}
        item = MCItem.model_validate(raw)
        assert len(item.options) == 5 and 0 <= item.answer < 5
        assert item.question.strip() and all(option.strip() for option in item.options)
        assert len({option.strip() for option in item.options}) == 5


def test_the_right_option_is_the_text_that_follows_the_question_in_its_document() -> None:
    documents = embedded_documents("en")
    for item in make_items("en", items=6, seed=3, options=3):
        right = item.options[item.answer]
        assert any(f"{item.question}" in d and right in d for d in documents)
        assert any(
            d[d.index(item.question) + len(item.question) :].lstrip().startswith(right)
            for d in documents
            if item.question in d
        )


def test_the_same_seed_gives_the_same_file_and_another_seed_other_items(tmp_path: Path) -> None:
    first = write_items("code", tmp_path / "a.jsonl", items=5, seed=11, options=4)
    again = write_items("code", tmp_path / "b.jsonl", items=5, seed=11, options=4)
    other = write_items("code", tmp_path / "c.jsonl", items=5, seed=12, options=4)
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_answers_spread_over_the_option_positions() -> None:
    answers = {item.answer for item in make_items("en", items=40, seed=1, options=4)}
    assert answers == {0, 1, 2, 3}


def test_chinese_items_cut_anywhere_and_still_have_distinct_options() -> None:
    [item] = make_items("zh", items=1, seed=2, options=2, question_chars=30, option_chars=8)
    assert len(set(item.options)) == 2 and all(len(option) == 8 for option in item.options)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"question": "q", "options": ["a", "b"], "answer": 2}, "not an index"),
        ({"question": "q", "options": ["a"], "answer": 0}, "at least 2"),
        ({"question": "", "options": ["a", "b"], "answer": 0}, "at least 1 character"),
        ({"question": "q", "options": ["a", "b"], "answer": -1}, "greater than or equal to 0"),
    ],
)
def test_an_item_outside_the_contract_is_refused(raw: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        MCItem.model_validate(raw)


def test_the_command_refuses_nine_options_in_one_line(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "--corpus",
            "en",
            "--out",
            str(tmp_path / "x.jsonl"),
            "--items",
            "2",
            "--seed",
            "1",
            "--options",
            "9",
        ]
    )
    assert code == 2
    assert capsys.readouterr().err.strip() == "mc_data: options must be 2 to 8, not 9"
    assert not (tmp_path / "x.jsonl").exists()
