"""YAML in and out, strictly: a syntax error names its line, a repeated key both of its lines,
Python tags are refused; ``--set key=value`` overrides are parsed as YAML values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
)

from cifartune.errors import ConfigError


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that gives one key twice: plain YAML would keep the last value silently."""

    def __init__(self, key: Any, first: yaml.Mark, second: yaml.Mark) -> None:
        super().__init__("while constructing a mapping", first, f"found key {key!r} again", second)
        self.key, self.first, self.second = key, first, second

    def describe(self) -> str:
        first, second = self.first, self.second
        if first.line == second.line:  # a one-line flow mapping, e.g. a --set value
            lines = f"line {first.line + 1}, columns {first.column + 1} and {second.column + 1}"
        else:
            lines = f"lines {first.line + 1} and {second.line + 1}"
        return f"key {self.key!r} appears twice ({lines}); keep one"


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags) that refuses a key repeated in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Checked on the node's own pairs, before the merge keys (<<: *anchor) are flattened
        # in: overriding a merged key is YAML's intended use, not a repeat.
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first is not key_node.start_mark:
                raise DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep)


# YAML 1.1 (PyYAML) reads 1e-3 and 1.0e3 as strings, YAML 1.2 and every other tool as floats:
# a strictly typed config would refuse `lr: 1e-3`. Scientific notation is read as a float.
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


# A config or spec is a few levels deep and a few hundred values; past these bounds a file is
# not one (deep nesting overflows Python's stack, aliases of aliases expand exponentially).
MAX_DEPTH = 32
MAX_VALUES = 100_000


class ShapeError(ValueError):
    """YAML nested too deeply, or holding too many values once its aliases are expanded."""


def _check_shape(content: Any) -> None:
    """Walk `content` as the code that reads it will (aliases expanded), within the bounds."""
    stack: list[tuple[Any, int]] = [(content, 1)]
    values = 0
    while stack:
        node, depth = stack.pop()
        values += 1
        if values > MAX_VALUES:
            raise ShapeError(f"more than {MAX_VALUES:,} values (aliases expanded)")
        if depth > MAX_DEPTH:
            raise ShapeError(f"nested more than {MAX_DEPTH} levels deep")
        children = node.values() if isinstance(node, dict) else node
        if isinstance(node, dict | list):
            stack.extend((child, depth + 1) for child in children)


def _load_strict(text: str) -> Any:
    """Parse `text` (a SafeLoader: no Python tags) and check its shape (see MAX_DEPTH)."""
    try:
        content = yaml.load(text, Loader=StrictLoader)
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise ShapeError(f"nested more than {MAX_DEPTH} levels deep") from None
    _check_shape(content)
    return content


def load_yaml_text(text: str, where: str) -> dict[str, Any]:
    """The YAML mapping in `text` read from `where` (a path, for messages), strictly: a syntax
    error names its line, a repeated key both of its lines; Python tags are refused."""
    try:
        content = _load_strict(text)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{where}: {exc.describe()}") from None
    except ShapeError as exc:
        raise ConfigError(f"{where}: {exc}; a config or spec is a few levels deep") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}:{at}: YAML syntax error: {problem}") from None
    if content is None:
        raise ConfigError(f"{where}: the file is empty; expected a YAML mapping")
    if not isinstance(content, dict):
        raise ConfigError(
            f"{where}: expected a YAML mapping at top level, got {type(content).__name__}"
        )
    return content


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=0.01"`` -> ``("optim.lr", 0.01)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set optim.lr=0.01")
    try:
        value = _load_strict(raw) if raw.strip() else ""
    except DuplicateKeyError as exc:
        raise ConfigError(f"--set {text!r}: in the value, {exc.describe()}") from None
    except ShapeError as exc:
        raise ConfigError(f"--set {key.strip()}: the value is {exc}") from None
    except yaml.YAMLError:
        value = raw  # not YAML: the plain string (a bad one is then named by the field's rule)
    return key.strip(), value


def read_yaml(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path`, read by :func:`load_yaml_text`."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return load_yaml_text(text, str(path))


def dump_yaml(config: BaseModel, path: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Write the resolved config (every default made explicit) next to the results, with
    `extra` sections after it (what the run really ran with)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = {**config.model_dump(mode="json"), **(extra or {})}
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
