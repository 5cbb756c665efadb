"""Reading a config: JSON files, `dotted.key=value` overrides, and problems named by path."""

from __future__ import annotations

import copy
import difflib
import json
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from trainer.config.base import ConfigError, RuleViolations
from trainer.config.trainer_config import SCHEMA_VERSION, TrainerConfig, world_problems

_SCALAR_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}
# pydantic's error types that mean "not the JSON type this field takes".
_TYPE_ERRORS = {
    "bool_type",
    "int_type",
    "float_type",
    "string_type",
    "list_type",
    "model_type",
    "model_attributes_type",
    "literal_error",
}


def load_config(path: str | Path, *, overrides: Iterable[str] = ()) -> TrainerConfig:
    """Read a config JSON file, apply `dotted.key=value` overrides, and parse it strictly."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return config_from_dict(apply_overrides(data, overrides) if overrides else data)


def config_from_dict(data: Mapping[str, Any]) -> TrainerConfig:
    """Parse a mapping into a `TrainerConfig`; every problem is reported at once, by path."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"the config must be a JSON object, got {_json_type(data)}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or version != SCHEMA_VERSION:
        raise ConfigError(
            f"schema_version {version!r} is not supported: this trainer reads version "
            f"{SCHEMA_VERSION}"
        )
    try:
        return TrainerConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(
            problem for error in exc.errors(include_url=False) for problem in _problems(error)
        ) from None


def config_to_dict(config: TrainerConfig) -> dict[str, Any]:
    """The JSON-ready mapping `config_from_dict` turns back into an equal config."""
    return config.model_dump()


def validate(config: TrainerConfig, world_size: int = 1) -> None:
    """Check `config` as it stands and in a world of `world_size`; one `ConfigError`, every problem.

    Parsing already applied the rules, but a config built or changed in code has not been
    through them: they run again here, with the world size, which the file cannot know.
    """
    try:
        config_from_dict(config_to_dict(config))
        problems = []
    except ConfigError as exc:
        problems = exc.problems
    problems += world_problems(config, world_size)
    if problems:
        raise ConfigError(problems)


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of `data` with each `dotted.key=value` set; list items are `stages[0].steps`.

    The value is parsed as JSON when it parses, else taken as a string; a field that holds a
    string keeps the text as written (`job.name=2024` stays "2024"), `null` aside. Keys are
    checked against the schema, so a typo is an error even where the mapping leaves a
    defaulted section out.
    """
    result = copy.deepcopy(dict(data))
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not of the form dotted.key=value")
        _set_path(result, key, raw)
    return result


# ---------------------------------------------------------------- problems, by path


def _problems(error: Mapping[str, Any]) -> list[str]:
    """pydantic's error as this config's problems: the path first, in the file's terms."""
    loc, kind, value = error["loc"], error["type"], error["input"]
    ctx = error.get("ctx", {})
    path = _path(loc)
    if kind == "extra_forbidden":
        known = list(_section_at(loc[:-1]).model_fields)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return [f"unknown key '{path}'{hint}"]
    if kind == "missing":
        return [f"missing required key '{path}'"]
    if kind == "value_error":
        cause = ctx["error"]
        if isinstance(cause, RuleViolations):
            return [f"{path}.{problem}" if path else problem for problem in cause.problems]
        return [f"{path or 'config'}: {cause}"]
    if kind == "finite_number":
        return [f"{path}: must be a finite number, got {value!r}"]
    if kind == "greater_than":
        bound = ctx["gt"]
        rule = "must be positive" if bound == 0 else f"must exceed {bound:g}"
        return [f"{path}: {rule}, got {_number(value)}"]
    if kind == "greater_than_equal":
        bound = ctx["ge"]
        rule = "must not be negative" if bound == 0 else f"must be at least {bound}"
        return [f"{path}: {rule}, got {_number(value)}"]
    if kind == "string_too_short":
        return [f"{path}: must not be empty"]
    if kind in _TYPE_ERRORS:
        return [_type_problem(path or "config", _annotation_at(loc), value)]
    return [f"{path or 'config'}: {error['msg']}"]


def _path(loc: tuple[int | str, ...]) -> str:
    """('stages', 0, 'data', 1, 'weight') → 'stages[0].data[1].weight'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else part
    return path


def _annotation_at(loc: tuple[int | str, ...]) -> Any:
    """The type the schema declares at `loc`."""
    hint: Any = TrainerConfig
    for part in loc:
        inner = _non_null(hint)[0]
        if isinstance(part, int):
            hint = _strip(get_args(inner)[0])
        else:
            hint = inner.model_fields[part].annotation
    return hint


def _section_at(loc: tuple[int | str, ...]) -> type[BaseModel]:
    return _non_null(_annotation_at(loc))[0]


def _strip(hint: Any) -> Any:
    """`Annotated[X, ...]` → X."""
    return get_args(hint)[0] if get_origin(hint) is Annotated else hint


def _non_null(hint: Any) -> tuple[Any, bool]:
    """The type inside `X | None`, and whether None was allowed."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [arg for arg in get_args(hint) if arg is not type(None)]
        if len(args) != 1:
            raise TypeError(f"only `X | None` unions are supported, not {hint!r}")
        return _strip(args[0]), True
    return _strip(hint), False


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, BaseModel)


def _describe(hint: Any) -> str:
    inner, nullable = _non_null(hint)
    if _is_section(inner):
        text = "object"
    elif get_origin(inner) is list:
        text = f"array of {_describe(get_args(inner)[0])}"
    elif get_origin(inner) is Literal:
        text = "one of " + ", ".join(repr(arg) for arg in get_args(inner))
    else:
        text = _SCALAR_NAMES[inner]
    return f"{text} or null" if nullable else text


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _type_problem(path: str, hint: Any, value: Any) -> str:
    got = _json_type(value)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        shown = repr(value)
        got += f" {shown if len(shown) <= 40 else shown[:37] + '...'}"
    return f"{path}: expected {_describe(hint)}, got {got}"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; write a finite number")


# ---------------------------------------------------------------- overrides

_KEY_PART = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")


def _split_key(key: str) -> list[str | int]:
    """`stages[0].data.1.weight` → ['stages', 0, 'data', 1, 'weight']."""
    segments: list[str | int] = []
    for part in key.split("."):
        match = _KEY_PART.fullmatch(part)
        if not match:
            raise ConfigError(f"override key {key!r} is malformed")
        name, indexes = match.groups()
        segments.append(int(name) if name.isdigit() else name)
        segments += [int(index) for index in re.findall(r"\d+", indexes)]
    return segments


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _set_path(data: dict[str, Any], key: str, raw: str) -> None:
    node: Any = data
    hint: Any = TrainerConfig
    path = ""
    segments = _split_key(key)
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        inner, _ = _non_null(hint)
        if _is_section(inner):
            if not isinstance(segment, str) or segment not in inner.model_fields:
                raise ConfigError(f"unknown key '{_join(path, str(segment))}'")
            child_hint = inner.model_fields[segment].annotation
            path = _join(path, segment)
        elif get_origin(inner) is list:
            if not isinstance(segment, int):
                raise ConfigError(f"unknown key '{path}.{segment}': {path} is a list; index it")
            child_hint = _strip(get_args(inner)[0])
            path = f"{path}[{segment}]"
            if not isinstance(node, list) or segment >= len(node):
                size = len(node) if isinstance(node, list) else 0
                raise ConfigError(f"override {key!r}: {path} is out of range ({size} items)")
        else:
            raise ConfigError(f"unknown key '{path}.{segment}': {path} is not an object")
        if last:
            node[segment] = _override_value(raw, child_hint)
            return
        child_inner = _non_null(child_hint)[0]
        if not (_is_section(child_inner) or get_origin(child_inner) is list):
            raise ConfigError(f"unknown key '{key}': {path} is not an object")
        child = node[segment] if isinstance(node, list) else node.get(segment)
        if child is None:
            if not _is_section(child_inner):
                raise ConfigError(f"override {key!r}: {path} is not set, so it cannot be indexed")
            child = node[segment] = {}
        if not isinstance(child, dict | list):
            raise ConfigError(f"override {key!r}: {path} is not an object")
        node, hint = child, child_hint


def _override_value(raw: str, hint: Any) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    inner, nullable = _non_null(hint)
    takes_text = inner is str or (
        get_origin(inner) is Literal and all(isinstance(a, str) for a in get_args(inner))
    )
    if takes_text and not isinstance(value, str) and not (value is None and nullable):
        return raw
    return value
