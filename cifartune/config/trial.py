"""The typed trial configuration: one frozen tree from defaults, YAML file and ``--set`` overrides.

Every field is validated eagerly; an unknown key, a wrong type or an out-of-range value raises
:class:`ConfigError` whose message names the field, the value it got and the rule it broke.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from cifartune.config.base import (
    Section,
    _deep_copy,
    describe_validation_error,
    flatten,
    set_dotted,
    unflatten,
)
from cifartune.config.files import parse_override, read_yaml
from cifartune.errors import ConfigError

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
    normalize: Literal["none", "standardize", "zca"] = Field(
        "none",
        description="none; standardize: per-channel mean and std of the training split; "
        "zca: whitening fitted on the training split",
    )
    zca_epsilon: float = Field(
        0.1, gt=0, description="added to the covariance eigenvalues before ZCA whitening"
    )
    # Written as the spec writes it ("crop+flip", "none"), in YAML and Parquet alike.
    augment: Annotated[
        tuple[Augmentation, ...],
        BeforeValidator(_parse_augment),
        PlainSerializer(lambda value: "+".join(value) or "none", return_type=str),
    ] = Field(
        (),
        description="batched augmentations applied in order, joined by +: crop, flip, rotate, "
        "jitter, cutout (e.g. crop+flip); none for no augmentation",
    )
    crop_padding: int = Field(4, ge=0, le=16, description="pixels of zero padding around a crop")
    crop_size: int = Field(32, ge=8, le=32, description="side of the random crop, in pixels")
    rotate_degrees: float = Field(
        15.0, ge=0, le=180, description="largest random rotation, either way"
    )
    jitter_brightness: float = Field(0.2, ge=0, le=1, description="largest brightness change")
    jitter_contrast: float = Field(0.2, ge=0, le=1, description="largest contrast change")
    jitter_saturation: float = Field(0.2, ge=0, le=1, description="largest saturation change")
    jitter_hue: float = Field(0.05, ge=0, le=0.5, description="largest hue shift (turns)")
    cutout_size: int = Field(8, ge=1, le=32, description="side of the square cut out, in pixels")

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

    name: Literal["seed"] = Field(
        "seed",
        description="the practical work's network: conv 5x5 32/64/64 with 2x2 max-pooling, "
        "fc 1000, fc 10",
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="p before each fully-connected layer")
    batchnorm: bool = Field(False, description="batch norm after each convolution")


class OptimConfig(Section):
    """The optimizer and its hyperparameters."""

    name: OptimizerName = Field(
        "sgd",
        description="sgd, momentum (SGD with momentum), nesterov, adam, adamw, rmsprop, adagrad",
    )
    lr: float = Field(0.1, gt=0, le=100, description="learning rate (the schedule's start)")
    momentum: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="SGD and RMSprop momentum; default 0.9 for momentum and nesterov, else 0",
    )
    weight_decay: float = Field(0.0, ge=0, lt=1, description="L2 weight decay (AdamW: decoupled)")

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

    name: ScheduleName = Field(
        "constant", description="constant, exponential, step, cosine, onecycle"
    )
    gamma: float = Field(0.95, gt=0, le=1, description="decay factor per epoch (step: per step)")
    step_size: int = Field(30, ge=1, description="epochs between decays of the step schedule")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor, as a fraction of lr")
    pct_start: float = Field(0.25, gt=0, lt=1, description="one-cycle warm-up fraction")


class TrialConfig(Section):
    """Everything one training run needs; the unit a study samples."""

    epochs: int = Field(10, ge=1, le=10_000, description="passes over the training split")
    batch_size: int = Field(128, ge=1, le=65_536, description="images per optimizer step")
    seed: int = Field(
        0, description="seed of the weights, the batch order, augmentation and dropout"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when torch sees a GPU, else the CPU"
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32 "
        "(emulated bf16 was 13x slower than fp32 on an AVX2-only CPU)",
    )
    channels_last: bool = Field(
        True, description="NHWC memory layout, which convolutions run fastest in on GPUs"
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: all")
    eval_test: bool = Field(False, description="also score the test set every epoch")
    compile: CompileMode = Field(
        "none",
        description="model: torch.compile the training forward (true = model); cudagraphs: "
        "also replay it as CUDA graphs (CUDA only). Off by default: on a 2-core CPU the "
        "compiled model measured slower than eager (python -m benchmarks.gpu_check measures both)",
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()


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
