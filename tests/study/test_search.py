"""The search: spec dimensions translated to Ray Tune's space, and the test-set scoring of the
best configurations (ranked by the mean over repeats, each repeat from its best checkpoint)."""

import numpy as np
import pandas as pd
import pytest
from ray.tune.search.sample import Categorical, Float, Integer

from cifartune.config.base import flatten
from cifartune.config.resolved import resolve
from cifartune.config.spec import trial_config
from cifartune.config.validation import build_spec
from cifartune.engine.model import build_model
from cifartune.storage import Location
from cifartune.store.checkpoints import save_state
from cifartune.store.columns import trial_keys
from cifartune.store.directory import StudyDirectory
from cifartune.study.epoch_search import EpochOptunaSearch
from cifartune.study.scoring import score_best_on_test
from cifartune.study.search import search_algorithm, search_space

from ..support import synthetic_arrays

SPACE = {
    "batch_size": {"type": "int", "low": 16, "high": 18},
    "optim.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "optim.name": {"type": "categorical", "choices": ["sgd", "adam"]},
}


def test_distributions_become_their_tune_namesakes_with_inclusive_int_bounds():
    spec = build_spec({"name": "s", "space": SPACE, "search": {"algorithm": "random"}})
    space = search_space(spec)
    ints = space["batch_size"]
    assert isinstance(ints, Integer)
    draws = {ints.sample() for _ in range(300)}
    assert draws == {16, 17, 18}  # Optuna's (and the spec's) high is inclusive; Tune's is not
    lr = space["optim.lr"]
    assert isinstance(lr, Float) and lr.lower == 0.001 and lr.upper == 0.1
    samples = np.array([lr.sample() for _ in range(2000)])
    # Log-uniform: as many draws below 0.01 (the geometric middle) as above.
    assert 0.45 < (samples < 0.01).mean() < 0.55
    dropout = space["model.dropout"]
    assert isinstance(dropout, Float)
    assert 0.2 < (np.array([dropout.sample() for _ in range(2000)]) < 0.125).mean() < 0.3
    assert isinstance(space["optim.name"], Categorical)
    assert space["optim.name"].categories == ["sgd", "adam"]


def test_lists_are_grid_axes_except_under_optuna_and_repeats_are_a_seed_grid():
    tree = {"name": "s", "space": {"optim.lr": [0.1, 0.01]}, "variants": {"a": {}, "b": {}}}
    grid = search_space(build_spec({**tree, "repeats": 3, "base": {"seed": 5}}))
    assert grid["optim.lr"] == {"grid_search": [0.1, 0.01]}
    assert grid["variant"] == {"grid_search": ["a", "b"]}
    assert grid["seed"] == {"grid_search": [5, 6, 7]}
    optuna = search_space(build_spec({**tree, "search": {"algorithm": "optuna", "samples": 4}}))
    assert isinstance(optuna["optim.lr"], Categorical) and isinstance(
        optuna["variant"], Categorical
    )
    assert "seed" not in optuna


def test_max_concurrent_reaches_every_searcher(tmp_path):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    for algorithm in ("grid", "random"):
        spec = build_spec(
            {"name": "s", "search": {"algorithm": algorithm}, "resources": {"max_concurrent": 3}}
        )
        generator = search_algorithm(resolve(spec), Location.of(tmp_path))
        assert isinstance(generator, BasicVariantGenerator) and generator.max_concurrent == 3
    optuna = build_spec(
        {
            "name": "s",
            "space": SPACE,
            "search": {"algorithm": "optuna"},
            "resources": {"max_concurrent": 3},
        }
    )
    limited = search_algorithm(resolve(optuna), Location.of(tmp_path))
    assert isinstance(limited, ConcurrencyLimiter) and limited.max_concurrent == 3
    assert isinstance(limited.searcher, EpochOptunaSearch)  # told by epoch, best value


@pytest.mark.parametrize(
    ("test_best", "scored_groups"), [(1, ["steady"]), (2, ["steady", "lucky"])]
)
def test_best_configurations_by_mean_over_repeats_scored_from_their_best_checkpoint(
    tmp_path, test_best, scored_groups
):
    spec = build_spec(
        {
            "name": "s",
            "base": {"epochs": 3, "device": "cpu", "data": {"source": "bundled"}},
            "variants": {"lucky": {}, "steady": {"model.dropout": 0.1}},
            "repeats": 2,
            "test_best": test_best,
        }
    )
    study = StudyDirectory(tmp_path)
    # lucky has the single best trial (90) but the worse mean (50 < 60).
    best = {("lucky", 0): 90.0, ("lucky", 1): 10.0, ("steady", 0): 60.0, ("steady", 1): 60.0}
    rows, group_of = [], {}
    for n, ((variant, seed), value) in enumerate(best.items()):
        sample = {"variant": variant, "seed": seed}
        config = trial_config(spec, sample)
        keys = trial_keys(f"t{n}", flatten(config), sample, study="s")
        group_of[variant] = keys["group"]
        model = build_model(config.model, image_size=32)
        state = {"epoch": n + 1, "metric": value, "model": model.state_dict(), "sample": sample}
        save_state(state, study.best_checkpoint(f"t{n}"))
        rows.append({**keys, "best_metric": value, "best_epoch": 3})
    test = score_best_on_test(resolve(spec), synthetic_arrays(), pd.DataFrame(rows), study)
    assert test["group"].drop_duplicates().tolist() == [group_of[v] for v in scored_groups]
    assert test["rank"].tolist() == [r for r in range(1, test_best + 1) for _ in range(2)]
    # Each repeat once, from its own best checkpoint (the epoch stored in best.pt).
    assert sorted(test["trial_id"]) == sorted(
        r["trial_id"] for r in rows if r["variant"] in scored_groups
    )
    for row in test.itertuples():
        assert row.epoch == int(row.trial_id[1:]) + 1
    assert test["test/top1"].between(0, 100).all() and len(test) == 2 * test_best
