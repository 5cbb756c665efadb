"""Pydantic's per-field errors as `Problem`s that name the user's field and quote the value."""

from __future__ import annotations

import difflib
import math
import re
import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from service.spec.fields import IDENTIFIER_PATTERN, KUBERNETES_NAME_PATTERN, NAME_PATTERN
from service.spec.job import JobSpec
from service.spec.problems import Problem, format_loc, kind_of

# A message quotes at most this much of the value it refuses.
MAX_QUOTED_LENGTH = 200

_PATTERN_HINTS = {
    NAME_PATTERN: "use lowercase letters, digits and '-', starting with a letter and ending "
    "with a letter or digit",
    IDENTIFIER_PATTERN: "use lowercase letters, digits, '_' and '-', starting with a letter",
    KUBERNETES_NAME_PATTERN: "a Kubernetes name: lowercase letters, digits and '-', starting and "
    "ending with a letter or digit",
}


def _model_inside(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds, looking through Optional and unions."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for member in get_args(annotation):
            if (model := _model_inside(member)) is not None:
                return model
    return None


def _item_inside(annotation: Any) -> Any:
    """The item type of a list annotation, looking through Optional."""
    if get_origin(annotation) is list:
        return get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        for member in get_args(annotation):
            if get_origin(member) is list:
                return get_args(member)[0]
    return None


def _clean_loc(
    raw_loc: tuple[str | int, ...], error_type: str, root: type[BaseModel] = JobSpec
) -> tuple[list[str | int], type[BaseModel] | None]:
    """The user's field path without pydantic's internal segments, and the model it ends in.

    Pydantic inserts union members and validator tags (`function-before[...]`, `str`) into
    locations; walking the spec's own models keeps exactly the segments that are fields or
    list indexes, plus the offending key of an unknown-field error.
    """
    loc: list[str | int] = []
    annotation: Any = root
    owner: type[BaseModel] | None = root
    for position, segment in enumerate(raw_loc):
        if isinstance(segment, int):
            loc.append(segment)
            annotation = _item_inside(annotation)
            continue
        model = _model_inside(annotation)
        if model is not None and segment in model.model_fields:
            loc.append(segment)
            owner = model
            annotation = model.model_fields[segment].annotation
        elif error_type == "extra_forbidden" and position == len(raw_loc) - 1:
            loc.append(segment)
            owner = model
    return loc, owner


def _quoted(value: Any) -> str:
    """The value as the message quotes it, shortened; never fails on a huge integer.

    Python refuses to print an integer of more than 4,300 digits (and a container holding
    one); such a value is described by its length instead.
    """
    try:
        text = repr(value)
    except ValueError:
        if isinstance(value, int):
            return f"an integer of about {len(format(value, 'x')) * math.log10(16):.0f} digits"
        return f"{kind_of(value)} holding an integer too long to print"
    return text if len(text) <= MAX_QUOTED_LENGTH else text[: MAX_QUOTED_LENGTH - 1] + "…"


def _readable_message(
    error: ErrorDetails, loc: list[str | int], owner: type[BaseModel] | None
) -> str:
    """Pydantic's message rewritten to name the field and quote the value."""
    error_type = error["type"]
    field = format_loc(loc) or "the job spec"
    given = error.get("input")
    if error_type == "missing":
        return f"{field} is required"
    if error_type == "extra_forbidden":
        unknown = str(loc[-1]) if loc else "?"
        allowed = list(owner.model_fields) if owner is not None else []
        section = format_loc(loc[:-1]) or "the top level"
        msg = f"unknown field {unknown!r} in {section}"
        if close := difflib.get_close_matches(unknown, allowed, n=1):
            msg += f"; did you mean {close[0]!r}?"
        return msg + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if error_type in ("model_type", "model_attributes_type", "dict_type"):
        return f"{field} should be a mapping of fields, not {kind_of(given)} ({_quoted(given)})"
    if error_type == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(str(error.get("ctx", {}).get("pattern")), "")
        return f"{field} {_quoted(given)} is not allowed" + (f": {hint}" if hint else "")
    msg = error["msg"].removeprefix("Value error, ")
    msg = re.sub(r"^(Input|Value|String|List)\b", field, msg)
    if (isinstance(given, int | float | str | bool) or given is None) and "got" not in msg:
        msg += f" (got {_quoted(given)})"
    return msg


def problems_from_validation_error(
    error: ValidationError, root: type[BaseModel] = JobSpec
) -> list[Problem]:
    problems = []
    for detail in error.errors(include_url=False):
        loc, owner = _clean_loc(detail["loc"], detail["type"], root)
        problems.append(
            Problem(loc=loc, msg=_readable_message(detail, loc, owner), type=detail["type"])
        )
    return problems
