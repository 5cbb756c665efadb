"""The building blocks of every spec section: bounded numbers, names, and the section base."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Becomes the Kubernetes name `<name>-a<attempt>`: a DNS-1123 label, with room for the suffix.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX_LENGTH = 48
# Stage and channel names end up in metric labels and file names.
IDENTIFIER_PATTERN = r"^[a-z][a-z0-9_-]*$"
IDENTIFIER_MAX_LENGTH = 32


# Upper bounds keep every derived figure finite and every count inside a database bigint;
# nothing real comes near them (2**53 tokens is ~9e15).
MAX_COUNT = 2**53
MAX_REAL = 1e18
# Linux's PATH_MAX; a longer "path" names nothing and only costs the service to check.
MAX_PATH_LENGTH = 4096
PositiveInt = Annotated[int, Field(gt=0, le=MAX_COUNT)]
NonNegativeInt = Annotated[int, Field(ge=0, le=MAX_COUNT)]
PositiveFloat = Annotated[float, Field(gt=0, le=MAX_REAL)]
NonNegativeFloat = Annotated[float, Field(ge=0, le=MAX_REAL)]
# A local path or URI a job reads or writes; where it may point is `paths.PathPolicy`'s rule.
SpecPath = Annotated[str, Field(min_length=1, max_length=MAX_PATH_LENGTH)]


class Section(BaseModel):
    """Base of every spec section: unknown keys, NaN/inf and NUL characters are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul_characters(cls, value: Any) -> Any:
        # Postgres cannot store U+0000 in text or JSONB; refuse it here, with the field's path.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL (\\x00) characters")
        return value


def mapping_from_shorthand(field_name: str) -> Callable[[Any], Any]:
    """A before-validator that reads `section: value` as `section: {field_name: value}`."""

    def expand(value: Any) -> Any:
        return {field_name: value} if isinstance(value, str) else value

    return expand
