"""The building blocks of every spec section: bounded numbers, names, and the section base."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, field_validator
from pydantic_core import PydanticCustomError

# Becomes the Kubernetes name `<name>-a<attempt>`: a DNS-1123 label, with room for the suffix.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX_LENGTH = 48
# Kueue's queue-name and priority-class labels carry these names, so they must be label values
# as well as object names: DNS-1123 labels (lowercase letters, digits, '-'), at most 63 characters.
KUBERNETES_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
KUBERNETES_NAME_MAX_LENGTH = 63
# Stage and channel names end up in metric labels and file names.
IDENTIFIER_PATTERN = r"^[a-z][a-z0-9_-]*$"
IDENTIFIER_MAX_LENGTH = 32


# Upper bounds keep every derived figure finite and every count inside a database bigint;
# nothing real comes near them (2**53 tokens is ~9e15). Fields with a realistic bound of their
# own (docs/job-spec.md, "Bounds and types") are declared with it: `integer(gt=0, le=...)`.
MAX_COUNT = 2**53
MAX_REAL = 1e18
# Linux's PATH_MAX; a longer "path" names nothing and only costs the service to check.
MAX_PATH_LENGTH = 4096

# Realistic bounds, far above today's largest models and clusters; every divisibility rule
# quotes divisors at most as large as these, so no rule's work grows with a number's size.
MAX_LAYERS = 1024
MAX_HEADS = 1024  # attention heads and key/value groups
MAX_HIDDEN_SIZE = 2**20
MAX_FFN_HIDDEN_SIZE = 2**22
MAX_VOCAB_SIZE = 2**24
MAX_SEQUENCE_LENGTH = 2**24  # seq_length and max_position_embeddings
MAX_EXPERTS = 16_384  # routed experts per layer, and expert parallelism
MAX_PARALLEL_SIZE = 1024  # tensor, pipeline, context and virtual-pipeline sizes
MAX_NODES = 100_000
MAX_GPUS_PER_NODE = 1024
MAX_GPU_MEMORY_GIB = 65_536.0
MAX_PEAK_TFLOPS = 1_000_000.0
MAX_MICRO_BATCH_SIZE = 65_536
MAX_GLOBAL_BATCH_SIZE = 2**24
MAX_TOKENS = 10**16
MAX_STEPS = 10**9


def _integer_not_boolean_or_text(value: Any) -> Any:
    """Refuse `true` and `"2"` for a count; pydantic's lax mode would read them as 1 and 2.

    An integral float stays accepted: YAML reads `tokens: 2e12` as one.
    """
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be an integer, not a boolean")
    if isinstance(value, str):
        raise PydanticCustomError("int_type", "Input should be an integer, not a string")
    return value


def _number_not_boolean_or_text(value: Any) -> Any:
    """Refuse `true` and `"3e-4"` for a real number; an integer is one."""
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "Input should be a number, not a boolean")
    if isinstance(value, str):
        raise PydanticCustomError("float_type", "Input should be a number, not a string")
    return value


def integer(**bounds: int) -> Any:
    """An integer field's type within `bounds` (gt, ge, le), refusing booleans and text.

    Like pydantic's `conint`, for use in annotations. The bounds sit inside the type, before
    the validator, so that the JSON Schema still shows them as minimum and maximum.
    """
    return Annotated[int, Field(**bounds), BeforeValidator(_integer_not_boolean_or_text)]


def real(**bounds: float) -> Any:
    """A real-number field's type within `bounds` (gt, ge, lt, le), refusing booleans and text."""
    return Annotated[float, Field(**bounds), BeforeValidator(_number_not_boolean_or_text)]


# A flag is JSON's true or false (YAML's true/false/yes/no), never "true" or 1.
Flag = Annotated[bool, Strict()]
PositiveInt = integer(gt=0, le=MAX_COUNT)
NonNegativeInt = integer(ge=0, le=MAX_COUNT)
PositiveFloat = real(gt=0, le=MAX_REAL)
NonNegativeFloat = real(ge=0, le=MAX_REAL)
# Steps of a run, intervals in steps, and counts of per-step things (checkpoints, rollbacks).
PositiveSteps = integer(gt=0, le=MAX_STEPS)
NonNegativeSteps = integer(ge=0, le=MAX_STEPS)
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
