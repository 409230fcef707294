import pytest

from cifartune.config.base import flatten, unflatten
from cifartune.config.trial import TrialConfig, build_trial_config, load_trial_config
from cifartune.errors import ConfigError


def test_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\noptim:\n  lr: 0.05\n  name: momentum\n")
    config = load_trial_config(path, ["optim.lr=0.01", "data.augment=crop+flip"])
    assert config.epochs == 5
    assert config.optim.lr == 0.01 and config.optim.name == "momentum"
    assert config.optim.resolved_momentum == 0.9
    assert config.data.augment == ("crop", "flip")
    assert config.batch_size == 128  # default untouched


def test_config_is_frozen():
    config = TrialConfig()
    with pytest.raises(Exception, match="frozen"):
        config.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=0"], r"optim\.lr = 0: Input should be greater than 0"),
        (["optim.lr=abc"], r"optim\.lr = 'abc': Input should be a valid number"),
        (["batch_size=0"], r"batch_size = 0: Input should be greater than or equal to 1"),
        (["epochs=2.5"], r"epochs = 2\.5"),
        (["optim.name=sgdd"], r"optim\.name = 'sgdd': Input should be 'sgd', 'momentum'"),
        (["schedule.name=linear"], r"schedule\.name = 'linear'"),
        (["data.normalize=pca"], r"data\.normalize = 'pca'"),
        (["data.augment=crop+mixup"], r"data\.augment\.1 = 'mixup'"),
        (["data.augment=crop+crop"], "lists an augmentation twice"),
        (["model.dropout=1.0"], r"model\.dropout = 1\.0: Input should be less than 1"),
        (["optim.nmae=sgd"], r"optim\.nmae: unknown key; did you mean 'name'\?"),
        (["epoch=3"], r"epoch: unknown key; did you mean 'epochs'\?"),
        (["optim.name=nesterov", "optim.momentum=0"], "nesterov needs optim.momentum > 0"),
        (["optim.name=adam", "optim.momentum=0.9"], "optim.momentum does not apply"),
        (["data.crop_size=28"], "crop_size < 32 only applies with 'crop'"),
        (
            ["data.augment=crop", "data.crop_size=28", "data.normalize=zca"],
            "needs data.crop_size=32",
        ),
        (["optim.lr"], "expected key=value"),
        (["epochs.x=3"], r"epochs = \{'x': 3\}: Input should be a valid integer"),
    ],
)
def test_bad_values_name_field_value_and_rule(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_trial_config(None, overrides)


def test_several_problems_are_reported_together():
    with pytest.raises(ConfigError) as info:
        load_trial_config(None, ["optim.lr=-1", "batch_size=0"])
    assert "optim.lr" in str(info.value) and "batch_size" in str(info.value)


def test_yaml_syntax_error_gives_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\noptim:\n  lr: [0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+, column \d+: YAML syntax error"):
        load_trial_config(path)


@pytest.mark.parametrize(
    ("text", "message"), [("", "is empty"), ("- 1\n- 2\n", "expected a YAML mapping")]
)
def test_empty_or_non_mapping_file(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_trial_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_trial_config(tmp_path / "nope.yaml")


def test_flatten_round_trips():
    config = build_trial_config({}, {"data.augment": ["crop", "flip"], "optim.lr": 0.3})
    flat = flatten(config)
    assert flat["optim.lr"] == 0.3 and flat["data.augment"] == "crop+flip"
    assert build_trial_config(unflatten(flat)) == config


@pytest.mark.parametrize("value", ["none", "", None, []])
def test_no_augmentation_spellings(value):
    assert build_trial_config({"data": {"augment": value}}).data.augment == ()


@pytest.mark.parametrize(
    "optimizer", ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"]
)
def test_every_optimizer_pairs_with_every_schedule(optimizer):
    # One-cycle does not cycle momentum, so no pair needs a momentum the optimizer lacks.
    for schedule in ("constant", "exponential", "step", "cosine", "onecycle"):
        config = load_trial_config(None, [f"optim.name={optimizer}", f"schedule.name={schedule}"])
        assert (config.optim.name, config.schedule.name) == (optimizer, schedule)
