"""JSON Schema (as OpenAI clients write it) reduced to what the Gemini API accepts.

Berry sends tool parameters as ``FunctionDeclaration.parametersJsonSchema`` and structured
output as ``GenerationConfig.responseJsonSchema``: both take JSON Schema itself (v1beta API
reference; the November 2025 "expanded JSON Schema support" covers every current model),
so unions, ``$ref`` and ``additionalProperties`` keep their meaning. The older ``parameters`` /
``responseSchema`` fields take Gemini's ``Schema`` proto, an OpenAPI 3.0 subset where any
JSON-Schema-only keyword is a 400 and recursion cannot be expressed at all.

Gemini still understands only a documented subset of JSON Schema, so each schema is reduced
to it: keywords outside the subset are dropped (``$schema``, ``$comment``, ``not``,
``patternProperties``...), and the ones with an equivalent are rewritten (``oneOf`` ->
``anyOf``, ``const`` -> a one-value ``enum``, ``allOf`` -> its members merged, a ``type`` list
-> ``anyOf`` of one schema per type, ``definitions`` -> ``$defs``). A dropped keyword only
loosens the constraint on the model's output; the client's own code still validates it.
"""

from __future__ import annotations

from typing import Any

# Gemini's JSON Schema subset (structured-output guide, "JSON Schema support") plus the
# constraints its own Schema object has always had (minLength, pattern, default...).
KEPT_KEYWORDS = frozenset(
    {
        "$id",
        "$anchor",
        "$ref",
        "type",
        "format",
        "title",
        "description",
        "enum",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "properties",
        "required",
        "additionalProperties",
        "minProperties",
        "maxProperties",
        "propertyOrdering",
        "default",
        "anyOf",
        "$defs",
    }
)
# The formats Gemini documents (the rest only ever were hints, and some are rejected).
KEPT_FORMATS = frozenset({"date-time", "date", "time", "int32", "int64", "float", "double"})
JSON_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object", "null"})
# Keywords that describe a schema rather than constrain it: kept outside an anyOf split.
ANNOTATIONS = ("title", "description", "default", "$id", "$anchor", "$defs", "definitions")
# Deeper than this is not a real tool schema; the rest is cut rather than recursed into.
MAX_DEPTH = 32


def reduce_schema(schema: Any) -> dict[str, Any]:
    """``schema`` reduced to Gemini's JSON Schema subset (a new dict; the input is untouched)."""
    if not isinstance(schema, dict):
        return {}
    return _reduce(schema, 0)


def _reduce(schema: dict[str, Any], depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        return {}
    if "allOf" in schema:
        schema = _merge_all_of(schema)
    kind = schema.get("type")
    if isinstance(kind, list) and "anyOf" not in schema and "oneOf" not in schema:
        schema = _split_type_list(schema, kind)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions"):
            if isinstance(value, dict):
                target = "properties" if key == "properties" else "$defs"
                out[target] = {
                    name: _reduce(child, depth + 1) if isinstance(child, dict) else {}
                    for name, child in value.items()
                }
        elif key in ("anyOf", "oneOf", "prefixItems"):
            if isinstance(value, list):
                members = [_reduce(m, depth + 1) for m in value if isinstance(m, dict)]
                if members:
                    target = "prefixItems" if key == "prefixItems" else "anyOf"
                    out[target] = out.get(target, []) + members
        elif key in ("items", "additionalProperties"):
            if isinstance(value, dict):
                out[key] = _reduce(value, depth + 1)
            elif isinstance(value, bool):
                out[key] = value
            elif key == "items" and isinstance(value, list):
                # Draft 4-7 tuple form: Gemini's equivalent is prefixItems.
                out["prefixItems"] = [_reduce(m, depth + 1) for m in value if isinstance(m, dict)]
        elif key == "$ref":
            if isinstance(value, str):
                out[key] = value.replace("#/definitions/", "#/$defs/", 1)
        elif key == "const":
            if _enum_value(value):
                out["enum"] = [value]
        elif key == "enum":
            # Gemini takes enums of strings and numbers; others are only dropped.
            if isinstance(value, list) and value and all(_enum_value(v) for v in value):
                out[key] = value
        elif key == "format":
            if value in KEPT_FORMATS:
                out[key] = value
        elif key == "type":
            if isinstance(value, str) and value in JSON_TYPES:
                out[key] = value
        elif key in KEPT_KEYWORDS:
            out[key] = value
    return out


def _enum_value(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _split_type_list(schema: dict[str, Any], types: list[Any]) -> dict[str, Any]:
    """``"type": ["string", "null"]`` (OpenAI strict mode's nullable) as ``anyOf`` with one
    member per type, each keeping the type's own keywords; annotations stay outside."""
    kinds = [t for t in types if isinstance(t, str) and t in JSON_TYPES]
    rest = {k: v for k, v in schema.items() if k != "type"}
    if len(kinds) <= 1:
        return {**rest, "type": kinds[0]} if kinds else rest
    outer = {k: rest.pop(k) for k in ANNOTATIONS if k in rest}
    members = [{"type": "null"} if kind == "null" else {**rest, "type": kind} for kind in kinds]
    return {**outer, "anyOf": members}


def _merge_all_of(schema: dict[str, Any]) -> dict[str, Any]:
    """``allOf`` folded into its schema: properties and required lists joined, any other
    keyword taken from the first member that has it (the parent's own keywords win)."""
    members = (
        [m for m in schema["allOf"] if isinstance(m, dict)]
        if isinstance(schema["allOf"], list)
        else []
    )
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for member in members:
        if "allOf" in member:
            member = _merge_all_of(member)
        for key, value in member.items():
            if key == "properties" and isinstance(value, dict):
                own = merged.get("properties")
                merged["properties"] = {**value, **own} if isinstance(own, dict) else value
            elif key == "required" and isinstance(value, list):
                own_required = merged.get("required")
                base = own_required if isinstance(own_required, list) else []
                merged["required"] = base + [r for r in value if r not in base]
            else:
                merged.setdefault(key, value)
    return merged
