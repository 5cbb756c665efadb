"""Multiple-choice sets made from the embedded corpora, for benchmark evaluation without downloads.

`python -m trainer.mc_data --corpus NAME --out FILE.jsonl --items N --seed S [--options K]`

Each item asks which continuation follows a passage: the question is a passage of one
document, the right option the text that follows it there, the distractors as long a piece of
other documents. One JSON object a line, the shape `trainer.benchmarks` reads:

    {"question": str, "options": [str, ...], "answer": int}   (answer indexes options)

The same corpus, seed and sizes give the same file, byte for byte. For `en` and `code` passages
and options start at word starts and options end at word ends, so that no option gives itself
away by a cut word; `zh` has no spaces and is cut anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from trainer.corpora import EMBEDDED_CORPORA, embedded_documents

MIN_OPTIONS, MAX_OPTIONS = 2, 8
DEFAULT_OPTIONS = 4
DEFAULT_QUESTION_CHARS = 200
DEFAULT_OPTION_CHARS = 40
_ATTEMPTS_PER_ITEM = 100


class MCItem(BaseModel):
    """One multiple-choice item: the JSONL line `trainer.benchmarks` and lm-eval's task read."""

    question: str = Field(min_length=1, description="the prompt the options continue")
    options: list[str] = Field(
        min_length=MIN_OPTIONS, max_length=MAX_OPTIONS, description="the candidate answers"
    )
    answer: int = Field(ge=0, description="index of the right option in `options`")

    @model_validator(mode="after")
    def _answer_is_an_option(self) -> MCItem:
        if self.answer >= len(self.options):
            raise ValueError(f"answer {self.answer} is not an index of {len(self.options)} options")
        return self


def make_items(
    corpus: str,
    *,
    items: int,
    seed: int,
    options: int = DEFAULT_OPTIONS,
    question_chars: int = DEFAULT_QUESTION_CHARS,
    option_chars: int = DEFAULT_OPTION_CHARS,
) -> list[MCItem]:
    """`items` continuation questions from one embedded corpus, the same for the same arguments."""
    if corpus not in EMBEDDED_CORPORA:
        raise ValueError(f"no embedded corpus {corpus!r}; one of {', '.join(EMBEDDED_CORPORA)}")
    if not MIN_OPTIONS <= options <= MAX_OPTIONS:
        raise ValueError(f"options must be {MIN_OPTIONS} to {MAX_OPTIONS}, not {options}")
    if items < 1 or question_chars < 1 or option_chars < 1:
        raise ValueError("items, question_chars and option_chars must be positive")
    by_words = corpus != "zh"
    documents = [
        d for d in embedded_documents(corpus) if len(d) > 2 * (question_chars + option_chars)
    ]
    if len(documents) < options:
        raise ValueError(
            f"corpus {corpus!r} has too few documents long enough for {options} options"
        )
    rng = random.Random(f"mc-data/{corpus}/{seed}")
    made = []
    for _ in range(items):
        for _ in range(_ATTEMPTS_PER_ITEM):
            item = _draw_item(rng, documents, options, question_chars, option_chars, by_words)
            if item is not None:
                made.append(item)
                break
        else:
            raise ValueError(f"corpus {corpus!r}: no item with {options} distinct options found")
    return made


def write_items(
    corpus: str,
    path: str | Path,
    *,
    items: int,
    seed: int,
    options: int = DEFAULT_OPTIONS,
    question_chars: int = DEFAULT_QUESTION_CHARS,
    option_chars: int = DEFAULT_OPTION_CHARS,
) -> Path:
    """`make_items` written as JSONL through a temporary file and a rename."""
    made = make_items(
        corpus,
        items=items,
        seed=seed,
        options=options,
        question_chars=question_chars,
        option_chars=option_chars,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as out:
            for item in made:
                out.write(json.dumps(item.model_dump(), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- drawing


def _draw_item(
    rng: random.Random,
    documents: list[str],
    options: int,
    question_chars: int,
    option_chars: int,
    by_words: bool,
) -> MCItem | None:
    """One item, or None when its options came out empty or alike (the caller draws again)."""
    source, *others = rng.sample(range(len(documents)), options)
    text = documents[source]
    cut = _boundary(text, rng.randrange(question_chars, len(text) - option_chars), by_words)
    question = text[max(0, cut - question_chars) : cut]
    if by_words:
        question = _from_word_start(question)
    right = _option_at(text, cut, option_chars, by_words)
    wrong = []
    for other in others:
        distractor = documents[other]
        start = rng.randrange(0, len(distractor) - option_chars)
        wrong.append(
            _option_at(distractor, _boundary(distractor, start, by_words), option_chars, by_words)
        )
    question = question.rstrip()
    candidates = [right, *wrong]
    if not question or not all(candidates) or len({c.strip() for c in candidates}) < options:
        return None
    answer = rng.randrange(options)
    wrong.insert(answer, right)
    return MCItem(question=question, options=wrong, answer=answer)


def _boundary(text: str, index: int, by_words: bool) -> int:
    """The first word start at or after `index` (any index when not cutting by words)."""
    if not by_words:
        return index
    while index < len(text) and not (text[index - 1].isspace() and not text[index].isspace()):
        index += 1
    return index


def _from_word_start(text: str) -> str:
    """`text` without its first, possibly cut, word."""
    for index, char in enumerate(text):
        if char.isspace():
            return text[index:].lstrip()
    return text


def _option_at(text: str, start: int, chars: int, by_words: bool) -> str:
    """About `chars` characters of `text` from `start`, ended at a word end when cutting by words."""
    piece = text[start : start + chars]
    if by_words and start + chars < len(text) and not text[start + chars].isspace():
        space = max(piece.rfind(" "), piece.rfind("\n"), piece.rfind("\t"))
        piece = piece[:space] if space > 0 else piece
    return piece.rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.mc_data", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--corpus", required=True, choices=EMBEDDED_CORPORA)
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--items", type=int, required=True, help="how many items")
    parser.add_argument("--seed", type=int, required=True, help="the same seed, the same items")
    parser.add_argument(
        "--options", type=int, default=DEFAULT_OPTIONS, help="options per item (2-8)"
    )
    parser.add_argument(
        "--question-chars", type=int, default=DEFAULT_QUESTION_CHARS, help="passage length"
    )
    parser.add_argument(
        "--option-chars", type=int, default=DEFAULT_OPTION_CHARS, help="option length (at most)"
    )
    args = parser.parse_args(argv)
    try:
        path = write_items(
            args.corpus,
            args.out,
            items=args.items,
            seed=args.seed,
            options=args.options,
            question_chars=args.question_chars,
            option_chars=args.option_chars,
        )
    except (ValueError, OSError) as exc:
        print(f"mc_data: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
