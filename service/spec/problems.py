"""What is wrong with a spec: `Problem`, the `SpecInvalid` that carries them, and their wording."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field

from service.errors import ServiceError


class Problem(BaseModel):
    """One thing wrong (or worth a warning) in a spec: the field path and what to do about it."""

    loc: list[str | int] = Field(description='Path of the field, e.g. ["stages", 1, "seq_length"].')
    msg: str = Field(description="What is wrong and how to fix it, quoting the numbers.")
    type: str = Field(
        "value_error", description="Kind of problem: a pydantic error type, value_error or warning."
    )

    @property
    def path(self) -> str:
        """The loc as a person writes it: `stages[1].seq_length`."""
        return format_loc(self.loc)

    def __str__(self) -> str:
        return f"{self.path}: {self.msg}" if self.loc else self.msg


class SpecInvalid(ServiceError):
    """The spec cannot run; `problems` lists every reason, each with its field path."""

    status_code = 422

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        count = f"{len(problems)} problems" if len(problems) != 1 else "1 problem"
        super().__init__(f"invalid job spec ({count}): " + "; ".join(map(str, problems)))

    def __reduce__(self) -> tuple:
        """Rebuilt from its problems, not its message: it comes back from spec worker processes."""
        return type(self), (self.problems,)


def format_loc(loc: Iterable[str | int]) -> str:
    """`["stages", 1, "seq_length"]` → `stages[1].seq_length`."""
    text = ""
    for segment in loc:
        text += f"[{segment}]" if isinstance(segment, int) else f".{segment}" if text else segment
    return text


def problem(loc: list[str | int], msg: str) -> Problem:
    return Problem(loc=loc, msg=msg)


def body_problem(msg: str, problem_type: str = "value_error") -> SpecInvalid:
    return SpecInvalid([Problem(loc=["body"], msg=msg, type=problem_type)])


def kind_of(value: Any) -> str:
    """`a list`, `an integer`: what a value is, for messages."""
    kinds = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "a list"),
    )
    return next(
        (kind for cls, kind in kinds if isinstance(value, cls)), f"a {type(value).__name__}"
    )
