import pytest

from cifartune.config.expand import expected_asha_epochs, grid_points
from cifartune.config.resolved import plan, resolve
from cifartune.config.spec import spec_hash, trial_config, trial_count
from cifartune.config.validation import build_spec, load_spec
from cifartune.errors import ConfigError

BASE = {"name": "t", "base": {"epochs": 4}}


def spec(**extra):
    return build_spec({**BASE, **extra})


def test_grid_with_variants_and_repeats_multiplies():
    s = spec(
        space={"optim.lr": [0.1, 0.01], "batch_size": [32, 64, 128]},
        variants={"a": {}, "b": {"model.dropout": 0.5}},
        repeats=3,
    )
    assert trial_count(s) == 2 * 3 * 2 * 3
    points = list(grid_points(s))
    assert len(points) == 36 and {p["seed"] for p in points} == {0, 1, 2}


def test_variants_extend_each_other_and_sampled_keys_win():
    s = spec(
        variants={
            "baseline": {},
            "std": {"extends": "baseline", "data.normalize": "standardize"},
            "aug": {"extends": "std", "data.augment": "crop+flip", "optim.lr": 0.05},
        }
    )
    config = trial_config(s, {"variant": "aug", "optim.lr": 0.01})
    assert config.data.normalize == "standardize" and config.data.augment == ("crop", "flip")
    assert config.optim.lr == 0.01
    assert trial_config(s, {"variant": "baseline"}).data.normalize == "none"


def test_trials_get_cpu_and_threads_from_resources():
    s = spec(resources={"cpus": 3})
    config = trial_config(s, {})
    assert config.device == "cpu" and config.threads == 3
    assert trial_config(spec(resources={"cpus": 1, "gpus": 0.25}), {}).device == "auto"


def test_random_search_counts_samples_times_grid():
    s = spec(
        space={
            "optim.lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
            "batch_size": [64, 128],
        },
        search={"algorithm": "random", "samples": 5},
    )
    assert trial_count(s) == 10


def test_optuna_counts_samples_and_accepts_lists_as_choices():
    s = spec(
        space={
            "optim.lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
            "batch_size": [64, 128],
        },
        search={"algorithm": "optuna", "samples": 7},
    )
    assert trial_count(s) == 7


def test_asha_expected_epochs_is_below_the_worst_case():
    s = spec(
        base={"epochs": 27},
        space={"optim.lr": {"type": "float", "low": 1e-3, "high": 1}},
        search={"algorithm": "optuna", "samples": 27},
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 3},
    )
    # rungs 1, 3, 9: 27 trials x 1 + 9 x 2 + 3 x 6 + 1 x 18 epochs
    assert expected_asha_epochs([1, 3, 9], 27, 3, 27) == pytest.approx(27 + 18 + 18 + 18)
    p = plan(resolve(s), cpus=4, gpus=0)
    assert p.expected_epochs == pytest.approx(27 + 18 + 18 + 18)
    assert p.worst_case_epochs == 27 * 27 and p.rungs == [1, 3, 9]


def test_plan_packs_fractional_gpus():
    s = spec(space={"optim.lr": [0.1, 0.2, 0.3, 0.4, 0.5]}, resources={"cpus": 2, "gpus": 0.25})
    p = plan(resolve(s), cpus=16, gpus=1)
    assert p.concurrent == 4 and p.bottleneck == "GPUs" and p.waves == 2
    assert plan(resolve(s), cpus=4, gpus=1).bottleneck == "CPUs"


def test_hash_ignores_storage_but_not_the_design():
    assert spec_hash(spec(storage="/a")) == spec_hash(spec(storage="/b"))
    assert spec_hash(spec()) != spec_hash(spec(repeats=2))


def test_overrides_reach_space_variants_and_base():
    s = build_spec(
        {**BASE, "variants": {"a": {}}},
        ["space.optim.lr=[0.1, 0.2]", "variants.a.model.dropout=0.2", "base.epochs=2"],
    )
    assert s.space["optim.lr"] == [0.1, 0.2] and s.variants["a"]["model.dropout"] == 0.2
    assert trial_config(s, {"variant": "a"}).epochs == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"nmae": "x"}, "nmae: unknown key; did you mean 'name'"),
        # A trial-config key at the spec's top level: pointed into base, not to a look-alike.
        ({"epochs": 2}, "epochs: unknown key; did you mean 'base.epochs'?"),
        ({"lr": 0.1}, "lr: unknown key; did you mean 'base.optim.lr'?"),
        ({"repeats": "three"}, "repeats = 'three'"),
        ({"space": {"optim.lr": []}}, "space.optim.lr"),
        (
            {"space": {"optim.lr": [0.1, 0]}},
            r"space\.optim\.lr = 0: Input should be greater than 0",
        ),
        ({"space": {"batch_size": [0]}}, "batch_size = 0"),
        (
            {"space": {"optim.lr": {"type": "float", "low": 0.0, "high": 1, "log": True}}},
            "log: true needs low > 0",
        ),
        (
            {"space": {"optim.lr": {"type": "float", "low": 1, "high": 0.1}}},
            r"low \(1\.0\) must be < high",
        ),
        (
            {
                "space": {
                    "optim.lr": {"type": "float", "low": -1, "high": 0.1},
                },
                "search": {"algorithm": "random"},
            },
            "optim.lr = -1",
        ),
        ({"space": {"optim.lrr": [0.1]}}, "did you mean 'lr'"),
        ({"space": {"optim.lr": {"type": "gaussian", "low": 1, "high": 2}}}, "space.optim.lr"),
        (
            {"space": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1}}},
            "needs search.algorithm random or optuna",
        ),
        ({"space": {"seed": [1, 2]}}, "space.seed: reserved"),
        ({"space": {"data.dir": ["/a"]}}, "loaded once per study"),
        ({"resources": {"gpus": 1.5}}, "resources.gpus = 1.5: .*trains on one device"),
        ({"resources": {"gpus": -0.5}}, "resources.gpus = -0.5"),
        ({"resources": {"cpus": 0}}, "resources.cpus = 0"),
        ({"search": {"algorithm": "hyperopt"}}, "search.algorithm = 'hyperopt'"),
        ({"scheduler": {"name": "pbt"}}, "scheduler.mutations: PBT needs a key to explore"),
        (
            {"scheduler": {"name": "asha", "grace_period": 5}},
            "grace_period = 5: must be <= max epochs \\(4\\)",
        ),
        (
            {"scheduler": {"name": "asha", "max_epochs": 9}},
            "max_epochs = 9: trials only run base.epochs = 4",
        ),
        ({"metric": "val/accuracy"}, "metric = 'val/accuracy': not reported by the engine"),
        ({"metric": "test/top1"}, "selecting on the test set biases it"),
        ({"metric": "val/loss", "mode": "max"}, "use mode: min"),
        (
            {
                "search": {"algorithm": "optuna", "samples": 3},
                "repeats": 2,
                "space": {"optim.lr": [0.1]},
            },
            "Optuna samples one seed",
        ),
        ({"search": {"algorithm": "optuna"}}, "Optuna needs something to search"),
        ({"variants": {"a": {"extends": "zz"}}}, "no such variant"),
        ({"variants": {"a": {"extends": "b"}, "b": {"extends": "a"}}}, "cycle"),
        ({"variants": {"a": {"optim.lr": -1}}}, r"variants\.a: optim\.lr = -1"),
        ({"name": "bad name!"}, "name = 'bad name!'"),
        ({"base": {"optim": {"lr": 0}}}, r"base\.optim\.lr = 0"),
    ],
)
def test_bad_specs_name_the_field(extra, message):
    with pytest.raises(ConfigError, match=message):
        spec(**extra)


@pytest.mark.parametrize("gpus_per_trial", [2, 1.5, 8])
def test_a_trial_is_refused_more_than_one_gpu(tmp_path, gpus_per_trial):
    # A trial trains on one device: a second GPU would be reserved by Ray and sit idle.
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nresources: {{gpus: {gpus_per_trial}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert f"resources.gpus = {gpus_per_trial}" in message
    assert "trains on one device" in message and "use 1" in message and "0.25" in message
    for fine in (1, 0.25):
        assert load_spec(path, [f"resources.gpus={fine}"]).resources.gpus == fine
