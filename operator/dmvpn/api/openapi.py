"""Turn pydantic's JSON Schema into a Kubernetes structural OpenAPI v3 schema.

Pydantic emits JSON Schema 2020-12: ``$ref``/``$defs``, ``anyOf [X, null]`` for optional fields,
``const``, titles, ``additionalProperties: false``. A CRD wants the structural subset: everything inline,
a ``type`` on every node, no ``anyOf`` without a structural base, no ``additionalProperties`` next to
``properties`` (unknown fields are pruned, and kubectl's strict field validation rejects them).

Decisions (see docs/api.md, "Defaults"):

* No server-side defaults. Defaults live in the models and are applied when an object is read, so a
  later release can improve a default without rewriting stored objects; the description says
  ``Default: ...`` so ``kubectl explain`` still shows it.
* Optional fields are not ``nullable``: the API server prunes a ``null`` of a non-nullable field, which
  is exactly "unset", and CEL ``has()`` then behaves.
"""

import json
from collections.abc import Mapping
from typing import Any

JsonSchema = dict[str, Any]

#: Keywords a structural schema has no use for (or forbids).
_DROPPED = frozenset({"title", "default", "uniqueItems", "$defs", "examples"})


class SchemaError(ValueError):
    """The models produced a schema that cannot be made structural (fix the model, not the generator)."""


def _normalise_description(text: str) -> str:
    return " ".join(text.split())


def _describe_default(default: Any) -> str | None:
    if default is None or isinstance(default, dict) or default == []:
        return None
    shown = default if isinstance(default, str) else json.dumps(default)
    return f"Default: {shown}."


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> JsonSchema:
    """Inline ``$ref`` / single ``allOf`` / ``anyOf [X, null]``; the outer node's keywords win."""
    outer = dict(node)
    inner: JsonSchema | None = None
    if "$ref" in outer:
        inner = dict(defs[outer.pop("$ref").removeprefix("#/$defs/")])
    elif "allOf" in outer:
        members = outer.pop("allOf")
        if len(members) != 1:
            raise SchemaError(f"allOf with {len(members)} members cannot be inlined")
        inner = dict(members[0])
    elif "anyOf" in outer:
        members = [m for m in outer.pop("anyOf") if m.get("type") != "null"]
        if len(members) != 1:
            raise SchemaError(f"anyOf over {len(members)} types is not structural; restructure the model")
        inner = dict(members[0])
    if inner is None:
        return outer
    resolved = _resolve(inner, defs)
    resolved.update(outer)
    return _resolve(resolved, defs) if any(k in resolved for k in ("$ref", "allOf", "anyOf")) else resolved


def _convert(node: Mapping[str, Any], defs: Mapping[str, Any]) -> JsonSchema:
    resolved = _resolve(node, defs)
    result: JsonSchema = {}
    for key, value in resolved.items():
        if key in _DROPPED:
            continue
        if key == "const":
            result["enum"] = [value]
        elif key == "properties":
            result[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            result[key] = _convert(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, Mapping):
                result[key] = _convert(value, defs)
            # `false` (extra="forbid") is the structural default: unknown fields are pruned/rejected.
        elif key == "description":
            result[key] = _normalise_description(value)
        else:
            result[key] = value
    note = _describe_default(resolved.get("default"))
    if note and "Default:" not in result.get("description", ""):
        result["description"] = f"{result.get('description', '')} {note}".strip()
    return result


def structural_schema(json_schema: Mapping[str, Any]) -> JsonSchema:
    """The structural OpenAPI v3 form of a pydantic ``model_json_schema()``."""
    converted = _convert(json_schema, json_schema.get("$defs", {}))
    problems = structural_problems(converted)
    if problems:
        raise SchemaError("; ".join(problems))
    return converted


def structural_problems(schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Why ``schema`` is not structural, checked the way the API server checks a CRD (subset)."""
    problems: list[str] = []
    here = path or "<root>"
    if "type" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{here}: no type")
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "not", "const", "uniqueItems", "nullable"):
        if forbidden in schema:
            problems.append(f"{here}: {forbidden} is not allowed here")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{here}: properties and additionalProperties are mutually exclusive")
    for name, sub in schema.get("properties", {}).items():
        problems += structural_problems(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), Mapping):
        problems += structural_problems(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        problems += structural_problems(schema["additionalProperties"], f"{path}{{}}")
    return problems
