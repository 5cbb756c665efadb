"""What every section of the trainer config shares: strict fields, rules, ranges, the error."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator


class ConfigError(ValueError):
    """A trainer config that cannot be used; `problems` lists every reason, each with its path."""

    def __init__(self, problems: str | Iterable[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class RuleViolations(ValueError):
    """The rules one section breaks, each message's path relative to that section."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class Section(BaseModel):
    """A config section: typed as JSON types it, unknown keys refused, fields described.

    Strict: JSON `true` is no integer and `"4"` no number (an integer is a number). Each
    field's description is the docstring right below it. A section's cross-field rules live
    in its `problems()`, checked once its fields parse.
    """

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        allow_inf_nan=False,
        use_attribute_docstrings=True,
    )

    def problems(self) -> Iterator[str]:
        """This section's broken cross-field rules, as `field: message`; none by default."""
        return iter(())

    @model_validator(mode="after")
    def _follow_rules(self) -> Self:
        problems = list(self.problems())
        if problems:
            raise RuleViolations(problems)
        return self


def _check_range(bounds: list[int]) -> list[int]:
    if len(bounds) != 2:
        raise ValueError(f"a range is [start, end], got {bounds}")
    if not 0 <= bounds[0] < bounds[1]:
        raise ValueError(f"needs 0 <= start < end, got {bounds}")
    return bounds


Range = Annotated[list[int], AfterValidator(_check_range)]
"""A half-open `[start, end)` range of steps or batch indices, 0 <= start < end."""
