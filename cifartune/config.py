"""The typed trial configuration: one frozen tree from defaults, YAML file and ``--set`` overrides.

Every field is validated eagerly; an unknown key, a wrong type or an out-of-range value raises
:class:`ConfigError` whose message names the field, the value it got and the rule it broke.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError

AUGMENTATIONS = ("crop", "flip", "rotate", "jitter", "cutout")
Augmentation = Literal["crop", "flip", "rotate", "jitter", "cutout"]
OptimizerName = Literal["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"]
ScheduleName = Literal["constant", "exponential", "step", "cosine", "onecycle"]

# Momentum used when the spec leaves `optim.momentum` unset: plain SGD and the adaptive methods
# get none, the momentum variants the usual 0.9.
DEFAULT_MOMENTUM: dict[str, float] = {"momentum": 0.9, "nesterov": 0.9}
# The section of a `train` run's config.yaml that says what it really ran with (written by the
# run, ignored as input).
EFFECTIVE_KEY = "effective"


def _parse_augment(value: Any) -> Any:
    """Accept ``"crop+flip"``, ``"none"``, ``""`` or a list (a search space samples strings)."""
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none"):
            return ()
        return tuple(part.strip() for part in text.split("+"))
    if isinstance(value, list | tuple):
        return tuple(value)
    return value


def _parse_compile(value: Any) -> Any:
    """``compile: true`` / ``false`` (YAML booleans) stand for ``model`` / ``none``."""
    if isinstance(value, bool):
        return "model" if value else "none"
    return value


CompileMode = Annotated[Literal["none", "model", "cudagraphs"], BeforeValidator(_parse_compile)]


BOOLEAN_RULE = "a boolean is not a number; write a number"


def reject_boolean_number(value: Any, annotation: Any) -> Any:
    """`value`, unless it is a bool given to a field of `annotation` that takes numbers.

    YAML reads true/yes/on as True, and pydantic's lax mode would take it as 1 (false as 0):
    ``epochs: yes`` would train one epoch. The rule holds for int and float fields, optional
    or not, but not for a field that also takes bools.
    """
    union = get_origin(annotation) in (Union, types.UnionType)
    members = get_args(annotation) if union else (annotation,)
    if isinstance(value, bool) and bool not in members and any(m in (int, float) for m in members):
        raise ValueError(BOOLEAN_RULE)
    return value


class FrozenModel(BaseModel):
    """Unknown keys are errors; values are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Section(FrozenModel):
    """Base of the config and spec sections: unknown keys are errors, values are frozen, and
    no number field takes a boolean."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        return reject_boolean_number(value, field.annotation if field else None)


class DataConfig(Section):
    """Where the images come from, how they are split, normalized and augmented."""

    source: Literal["auto", "bundled", "mirror", "torchvision"] = Field(
        "auto",
        description="auto: a mirror if the data location holds train.npz, else a torchvision "
        "root; bundled: the small slice shipped in the package",
    )
    dir: str | None = Field(
        None,
        description="data location: a directory or an object-store URI (s3://bucket/prefix); "
        "default $CIFARTUNE_DATA, else ~/.cache/cifartune/cifar10",
    )
    download: bool = Field(
        True, description="let torchvision download CIFAR-10 into a location that has none"
    )
    val_size: int | None = Field(
        None, ge=10, description="images held out for validation; default 10% of the train set"
    )
    split_seed: int = Field(0, description="seed of the validation split and subset draw")
    train_subset: int | None = Field(
        None, ge=10, description="stratified number of training images kept (after validation)"
    )
    normalize: Literal["none", "standardize", "zca"] = "none"
    zca_epsilon: float = Field(0.1, gt=0, description="added to covariance eigenvalues")
    # Written as the spec writes it ("crop+flip", "none"), in YAML and Parquet alike.
    augment: Annotated[
        tuple[Augmentation, ...],
        BeforeValidator(_parse_augment),
        PlainSerializer(lambda value: "+".join(value) or "none", return_type=str),
    ] = ()
    crop_padding: int = Field(4, ge=0, le=16)
    crop_size: int = Field(32, ge=8, le=32, description="side of the random crop, in pixels")
    rotate_degrees: float = Field(15.0, ge=0, le=180)
    jitter_brightness: float = Field(0.2, ge=0, le=1)
    jitter_contrast: float = Field(0.2, ge=0, le=1)
    jitter_saturation: float = Field(0.2, ge=0, le=1)
    jitter_hue: float = Field(0.05, ge=0, le=0.5)
    cutout_size: int = Field(8, ge=1, le=32)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if len(set(self.augment)) != len(self.augment):
            raise ValueError(f"data.augment lists an augmentation twice: {'+'.join(self.augment)}")
        if self.crop_size < 32 and "crop" not in self.augment:
            raise ValueError("data.crop_size < 32 only applies with 'crop' in data.augment")
        if self.crop_size < 32 and self.normalize == "zca":
            raise ValueError(
                "data.normalize=zca whitens whole 32x32 images; it needs data.crop_size=32"
            )
        return self


class ModelConfig(Section):
    """The seed network and its two options."""

    name: Literal["seed"] = "seed"
    dropout: float = Field(0.0, ge=0, lt=1, description="p before each fully-connected layer")
    batchnorm: bool = Field(False, description="batch norm after each convolution")


class OptimConfig(Section):
    name: OptimizerName = "sgd"
    lr: float = Field(0.1, gt=0, le=100)
    momentum: float | None = Field(
        None, ge=0, lt=1, description="default: 0.9 for momentum/nesterov"
    )
    weight_decay: float = Field(0.0, ge=0, lt=1)

    @property
    def resolved_momentum(self) -> float:
        if self.momentum is not None:
            return self.momentum
        return DEFAULT_MOMENTUM.get(self.name, 0.0)

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        if self.name == "nesterov" and self.resolved_momentum == 0:
            raise ValueError("optim.name=nesterov needs optim.momentum > 0")
        if self.momentum is not None and self.name in ("adam", "adamw", "adagrad"):
            raise ValueError(f"optim.momentum does not apply to optim.name={self.name}; remove it")
        return self


class ScheduleConfig(Section):
    """Learning-rate schedule, stepped per epoch (one-cycle: per batch).

    ``onecycle`` rises from lr/25 to ``optim.lr`` over the first ``pct_start`` of the steps,
    then anneals to lr/2.5e5. It does not cycle momentum: every optimizer keeps
    ``optim.momentum`` (Adam's betas stay torch's defaults), so every optimizer, Adagrad
    included, works with every schedule.
    """

    name: ScheduleName = "constant"
    gamma: float = Field(0.95, gt=0, le=1, description="decay factor per epoch (step: per step)")
    step_size: int = Field(30, ge=1, description="epochs between decays of the step schedule")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor, as a fraction of lr")
    pct_start: float = Field(0.25, gt=0, lt=1, description="one-cycle warm-up fraction")


class TrialConfig(Section):
    """Everything one training run needs; the unit a study samples."""

    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32 "
        "(emulated bf16 was 13x slower than fp32 on an AVX2-only CPU)",
    )
    channels_last: bool = True
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: all")
    eval_test: bool = Field(False, description="also score the test set every epoch")
    compile: CompileMode = Field(
        "none",
        description="model: torch.compile the training forward (true = model); cudagraphs: "
        "also replay it as CUDA graphs (CUDA only). Off by default: on a 2-core CPU the "
        "compiled model measured slower than eager (benchmarks/gpu_check.py measures both)",
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()


def _fields_at(model: type[BaseModel], loc: Iterable[Any]) -> list[str] | None:
    """The valid field names of the section that `loc` (a pydantic error location) points into;
    None where it leads into a free-form mapping (a spec's space) rather than a section."""
    current: type[BaseModel] = model
    for part in loc:
        field = current.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        current = annotation
    return list(current.model_fields)


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
    error: ValidationError, model: type[BaseModel], prefix: str = ""
) -> str:
    """One line per problem: ``field = value: rule``, with a "did you mean" for unknown keys."""
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
        if item["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1])
            if valid is None:
                lines.append(f"{field}: unknown key")
                continue
            close = difflib.get_close_matches(loc[-1], valid, n=1)
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
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


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


def _load_strict(text: str) -> Any:
    return yaml.load(text, Loader=StrictLoader)  # a SafeLoader: no Python tags


def load_yaml_text(text: str, where: str) -> dict[str, Any]:
    """The YAML mapping in `text` read from `where` (a path, for messages), strictly: a syntax
    error names its line, a repeated key both of its lines; Python tags are refused."""
    try:
        content = _load_strict(text)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{where}: {exc.describe()}") from None
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


def build_trial_config(
    tree: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, *, prefix: str = ""
) -> TrialConfig:
    """Validate a nested mapping (plus dotted overrides) into a TrialConfig."""
    merged = _deep_copy(tree)
    for key, value in (overrides or {}).items():
        set_dotted(merged, key, value)
    try:
        return TrialConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, TrialConfig, prefix)) from None


def load_trial_config(path: Path | None = None, overrides: Iterable[str] = ()) -> TrialConfig:
    """Defaults, then the YAML file at `path` (nested sections or dotted keys, as a spec's
    ``base`` takes them), then ``key=value`` overrides."""
    tree = unflatten(flatten(read_yaml(path))) if path is not None else {}
    tree.pop(EFFECTIVE_KEY, None)  # what a run's config.yaml says really ran: not an input
    return build_trial_config(tree, dict(parse_override(o) for o in overrides))


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


def dump_yaml(config: BaseModel, path: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Write the resolved config (every default made explicit) next to the results, with
    `extra` sections after it (what the run really ran with)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = {**config.model_dump(mode="json"), **(extra or {})}
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
