"""A population-based training spec: what it may mutate, what it cannot run with, and the epochs
at which its population meets."""

import pytest

from cifartune.config.resolved import resolve
from cifartune.config.validation import build_spec
from cifartune.errors import ConfigError

LR = {"optim.lr": {"type": "float", "low": 0.001, "high": 0.2, "log": True}}
PBT = {"name": "pbt", "perturbation_interval": 2, "mutations": LR}


def pbt_spec(scheduler=None, **extra):
    return build_spec({
        "name": "p",
        "base": {"epochs": 6},
        "search": {"algorithm": "random", "samples": 4},
        "scheduler": {**PBT, **(scheduler or {})},
        **extra,
    })  # fmt: skip


@pytest.mark.parametrize(
    ("scheduler", "extra", "message"),
    [
        ({"mutations": {"batch_size": [32, 64]}}, {}, "batch_size cannot change while a trial"),
        ({"mutations": {"model.batchnorm": [True, False]}}, {}, "model.batchnorm cannot change"),
        ({"mutations": {}}, {}, "scheduler.mutations: PBT needs a key to explore"),
        ({"perturbation_interval": 6}, {}, "perturbation_interval = 6: trials run base.epochs = 6"),
        ({"quantile_fraction": 0.7}, {}, "scheduler.quantile_fraction = 0.7"),
        ({}, {"search": {"algorithm": "optuna", "samples": 4}}, "PBT explores by itself"),
        ({}, {"search": {"algorithm": "random", "samples": 1}}, "population of at least 2"),
        ({}, {"space": {"epochs": [4, 6]}}, "space.epochs: the population steps together"),
        ({}, {"space": {"optim.lr": [0.1, 0.01]}}, "space.optim.lr: PBT draws its first values"),
        (
            {},
            {"base": {"epochs": 6, "schedule": {"name": "cosine"}}},
            "base.schedule.name = 'cosine': PBT changes optim.lr itself",
        ),
        ({"max_epochs": 4}, {}, "scheduler.max_epochs: ASHA's"),
    ],
)
def test_a_pbt_spec_that_cannot_run_is_refused_naming_the_field(scheduler, extra, message):
    with pytest.raises(ConfigError, match=message):
        pbt_spec(scheduler, **extra)


def test_mutations_without_pbt_are_refused():
    with pytest.raises(ConfigError, match=r"only scheduler\.name pbt explores"):
        build_spec({"name": "p", "scheduler": {"name": "asha", "mutations": LR}})


def test_a_variant_setting_a_mutated_key_is_refused_as_dead():
    with pytest.raises(ConfigError, match=r"variants\.a\.optim\.lr: scheduler\.mutations sets"):
        pbt_spec(variants={"a": {"optim.lr": 0.1}})


@pytest.mark.parametrize(
    ("interval", "epochs", "meets"),
    [(2, 6, {2, 4}), (3, 6, {3}), (1, 3, {1, 2}), (4, 10, {4, 8})],
)
def test_the_population_meets_every_interval_before_its_last_epoch(interval, epochs, meets):
    spec = pbt_spec({"perturbation_interval": interval}, base={"epochs": epochs})
    resolved = resolve(spec)
    assert resolved.perturbation_epochs == meets
    assert resolved.scheduler_stops == meets  # checkpoints kept where a member may be taken


def test_other_schedulers_have_no_perturbation_epochs():
    assert resolve(build_spec({"name": "p", "base": {"epochs": 6}})).perturbation_epochs == set()
