"""A spec's search-space dimensions, written to mirror Optuna's distributions: ``float`` and
``int`` (with ``log``), ``categorical``; a plain list is a grid axis. Translated to Ray Tune in
:mod:`cifartune.study.search`, to Optuna in :mod:`cifartune.store.optuna_mirror`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from cifartune.config.base import Section


def _check_range(low: float, high: float, log: bool) -> None:
    if not low < high:
        raise ValueError(f"low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise ValueError(f"log: true needs low > 0 (got {low})")


class FloatDistribution(Section):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> FloatDistribution:
        _check_range(self.low, self.high, self.log)
        return self


class IntDistribution(Section):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntDistribution:
        _check_range(self.low, self.high, self.log)
        return self


class CategoricalDistribution(Section):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


Distribution = Annotated[
    FloatDistribution | IntDistribution | CategoricalDistribution, Field(discriminator="type")
]
Dimension = Annotated[list[Any], Field(min_length=1)] | Distribution


def probe_values(dim: Any) -> list[Any]:
    """Values that stand for a dimension when checking it against the trial config."""
    if isinstance(dim, list):
        return dim
    if isinstance(dim, CategoricalDistribution):
        return dim.choices
    return [dim.low, dim.high]
