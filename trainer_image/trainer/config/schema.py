"""The config file's JSON Schema, generated from the models (for editors and other tools)."""

from __future__ import annotations

from typing import Any

from trainer.config.trainer_config import TrainerConfig


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the config file, every section inlined, no titles."""
    schema = TrainerConfig.model_json_schema()
    definitions = schema.pop("$defs", {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "TrainerConfig",
        **_inline(schema, definitions),
    }


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    """`node` with each `$ref` replaced by its definition; a field's own keys win."""
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = definitions[node["$ref"].rsplit("/", 1)[1]]
        rest = {key: value for key, value in node.items() if key != "$ref"}
        return _inline({**target, **rest}, definitions)
    result = {}
    for key, value in node.items():
        if key == "title":
            continue  # pydantic's titles ("Rope Base") only repeat the property names
        if key == "properties":
            result[key] = {name: _inline(prop, definitions) for name, prop in value.items()}
        elif key in ("default", "const", "enum"):
            result[key] = value
        else:
            result[key] = _inline(value, definitions)
    return result
