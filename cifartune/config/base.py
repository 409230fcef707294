"""The shape every config and spec section shares: frozen pydantic models whose unknown keys,
wrong types and out-of-range values are errors, and the one-line-per-problem messages that name
the field, the value it got and the rule it broke; dotted keys to and from nested trees.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from cifartune.errors import ConfigError

BOOLEAN_RULE = "a boolean is not a number; write a number"
# Strict mode's errors for a value that is not a number where one is expected.
NUMBER_TYPES = ("int_type", "float_type")


class Section(BaseModel):
    """Base of every config and spec section: unknown keys are errors; values are frozen once
    validated; types are strict (pydantic's strict mode): YAML reads true/yes/on as True, which
    lax mode would take as 1 (``epochs: yes`` would train one epoch), and no string stands for
    a number."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True)


def _section(model: type[BaseModel], name: Any) -> type[BaseModel] | None:
    """The model of `model`'s field `name` when it is a section; None for a value, a free-form
    mapping or no such field."""
    field = model.model_fields.get(str(name))
    annotation = field.annotation if field else None
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    sections = [
        m for m in (annotation, *members) if isinstance(m, type) and issubclass(m, BaseModel)
    ]
    return sections[0] if sections else None


def _fields_at(model: type[BaseModel], loc: Iterable[Any]) -> list[str] | None:
    """The valid field names of the section that `loc` (a pydantic error location) points into;
    None where it leads into a free-form mapping (a spec's space) rather than a section."""
    current: type[BaseModel] | None = model
    for part in loc:
        current = _section(current, part) if current is not None else None
    return list(current.model_fields) if current is not None else None


def _paths_to(model: type[BaseModel], key: str) -> list[str]:
    """Dotted paths to the fields named `key` in `model` and its sections (``optim.lr``)."""
    paths = [key] if key in model.model_fields else []
    for name in model.model_fields:
        section = _section(model, name)
        if section is not None:
            paths += [f"{name}.{path}" for path in _paths_to(section, key)]
    return paths


def _user_location(loc: Iterable[Any]) -> list[str]:
    """A pydantic error location as the user wrote it: without pydantic's names for union
    members and validators (``list[any]``, ``tagged-union[...]``, ``function-after[...]``),
    nor the discriminator value that follows a tagged union (``float`` in a distribution)."""
    parts: list[str] = []
    skip_tag = False
    for part in map(str, loc):
        if skip_tag:
            skip_tag = False
        elif "[" in part or part.startswith("function-"):
            skip_tag = part.startswith("tagged-union[")
        else:
            parts.append(part)
    return parts


def describe_validation_error(
    error: ValidationError,
    model: type[BaseModel],
    prefix: str = "",
    nested: Mapping[str, type[BaseModel]] | None = None,
) -> str:
    """One line per problem: ``field = value: rule``, with a "did you mean" for unknown keys;
    `nested` names the free-form top-level fields that hold another model (a spec's ``base``),
    so that a key of that model given at the top level is pointed there."""
    items = error.errors()
    # A union member rejected only for its type ("should be a valid list" for a distribution's
    # mapping) is noise when another member got far enough to name the real problem.
    named = [_user_location(i["loc"]) for i in items if not i["type"].endswith("_type")]
    lines = []
    for item in items:
        loc = _user_location(item["loc"])
        if item["type"].endswith("_type") and any(n[: len(loc)] == loc for n in named):
            continue
        field = prefix + ".".join(loc) if loc else prefix.rstrip(".") or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in NUMBER_TYPES and isinstance(item["input"], bool):
            message = BOOLEAN_RULE  # "should be a valid integer" would puzzle: true is 1
        if item["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1])
            if valid is None:
                lines.append(f"{field}: unknown key")
                continue
            # The same key deeper down first (`epochs` in a spec: `base.epochs`).
            deeper = [
                ".".join([*loc[:-1], section, path])
                for section, inner in (nested or {}).items()
                if section in valid and not loc[:-1]
                for path in _paths_to(inner, loc[-1])
            ]
            close = deeper or difflib.get_close_matches(loc[-1], valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            lines.append(f"{field}: unknown key{hint} (valid keys: {', '.join(valid)})")
        elif item["type"] in ("value_error", "assertion_error") and not loc:
            lines.append(message)
        else:
            lines.append(f"{field} = {item['input']!r}: {message}")
    return "\n".join(dict.fromkeys(lines))


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for ``key="a.b"``, creating sections as needed."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or a section left out (`budget: null`)
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def flatten(config: BaseModel | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 0.1, ...}``: the flat, JSON-friendly view used for Ray and Parquet columns."""
    tree = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        set_dotted(tree, key, value)
    return tree


def _deep_copy(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in tree.items()}
