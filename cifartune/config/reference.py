"""The configuration reference (docs/config.md), generated from the config and spec models'
field descriptions, so that it cannot drift from the code: ``python -m
cifartune.config.reference > docs/config.md`` writes it, and a test fails when it is stale.
"""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from cifartune.config.spec import StudySpec
from cifartune.config.trial import TrialConfig

HEADER = """# Configuration reference

Generated from the code by `python -m cifartune.config.reference > docs/config.md`; a test
fails when this page and the code disagree. Every key is validated when a config or spec is
loaded: an unknown key (with a "did you mean"), a wrong type or an out-of-range value is an
error that names the key, the value and the rule. Types are strict: a boolean is not a number,
and a quoted number is a string (`1e-3` is a number).

A trial config is layered: these defaults, then a YAML file (`cifartune train --config`, or a
study spec's `base`), then `--set key=value` overrides (values parsed as YAML). Nested
sections and dotted keys (`optim.lr: 0.01`) are the same.
"""


def _type(annotation: Any) -> str:
    """An annotation as a reader says it."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{v}`" for v in get_args(annotation))
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        text = " or ".join(_type(m) for m in members)
        return f"{text} or null" if len(members) < len(get_args(annotation)) else text
    if origin is not None and getattr(annotation, "__metadata__", None):  # Annotated
        return _type(get_args(annotation)[0])
    if origin in (tuple, list):
        return "list"
    if origin is dict:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _section(annotation: Any) -> type[BaseModel] | None:
    """The section model an annotation holds, optional or not; None for a value."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else ()
    for member in (annotation, *members):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else "`{}`"
    value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if value is None:
        return "null"
    if value == "":
        return '`""`'
    if isinstance(value, tuple):
        return f"`{'+'.join(map(str, value)) or 'none'}`"
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def _range(field: Any) -> str:
    bounds = []
    for item in field.metadata:
        if isinstance(item, Ge):
            bounds.append(f">= {item.ge}")
        elif isinstance(item, Gt):
            bounds.append(f"> {item.gt}")
        elif isinstance(item, Le):
            bounds.append(f"<= {item.le}")
        elif isinstance(item, Lt):
            bounds.append(f"< {item.lt}")
    return ", ".join(bounds)


def _rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    """The model's fields as table rows; sections recurse with their key as prefix."""
    rows: list[str] = []
    sections = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        text = (field.description or "").replace("|", "\\|")
        section = _section(annotation)
        if section is not None:
            sections.append((f"{prefix}{name}.", section))
            if section is not annotation:  # an optional section: its own row says so
                rows.append(f"| `{prefix}{name}` | section or null | null |  | {text} |")
            continue
        rows.append(
            f"| `{prefix}{name}` | {_type(annotation)} | {_default(field)} | {_range(field)} "
            f"| {text} |"
        )
    for section_prefix, section in sections:
        rows += _rows(section, section_prefix)
    return rows


def _table(title: str, model: type[BaseModel], intro: str) -> str:
    head = ["| key | type | default | range | meaning |", "|---|---|---|---|---|"]
    return "\n".join([f"## {title}", "", intro, "", *head, *_rows(model), ""])


def config_reference() -> str:
    """docs/config.md."""
    trial = _table(
        "Trial config",
        TrialConfig,
        "What one training run needs: `cifartune train`'s config, a study spec's `base`, and "
        "what a study's search space and variants set (by the same dotted keys).",
    )
    spec = _table(
        "Study spec",
        StudySpec,
        "A study as written in `studies/*.yaml`; see [studies.md](studies.md) for how the "
        "keys combine.",
    )
    return "\n".join([HEADER, trial, spec])


if __name__ == "__main__":
    print(config_reference(), end="")
