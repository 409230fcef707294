"""Errors `cifartune validate` catches before anything starts: a YAML key given twice, a boolean
where a number belongs, and a spec asking for more images than its data holds (known from the
data's file headers, without loading an image). In-process CLI calls keep these fast."""

import re
import sys

import numpy as np
import pytest

import cifartune.engine.data
from cifartune.cli.main import main
from cifartune.config.files import load_yaml_text, parse_override
from cifartune.config.trial import DataConfig, load_trial_config
from cifartune.config.validation import build_spec
from cifartune.engine.data import DataSource, describe_source, train_image_count
from cifartune.errors import ConfigError, DataError

from ..support import synthetic_arrays, write_mirror


def _cli(capsys, *args):
    """Exit code and stderr of ``cifartune ARGS`` run in this process."""
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def _spec(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- A key given twice ------------------------------------------------------------------------


def test_a_key_repeated_in_a_spec_names_the_file_the_key_and_both_lines(tmp_path, capsys):
    path = _spec(tmp_path, "name: first\nrepeats: 2\nname: second\n")
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and "Traceback" not in err
    assert f"{path}: key 'name' appears twice (lines 1 and 3)" in err


def test_a_key_repeated_inside_base_is_refused_too(tmp_path, capsys):
    path = _spec(tmp_path, "name: s\nbase:\n  epochs: 2\n  optim: {lr: 0.1}\n  epochs: 3\n")
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and f"{path}: key 'epochs' appears twice (lines 3 and 5)" in err


@pytest.mark.parametrize("command", ["train", "inspect"])
def test_a_key_repeated_in_a_config_file_is_refused(tmp_path, capsys, command):
    path = _spec(tmp_path, "optim:\n  lr: 0.1\n  lr: 0.01\n", "config.yaml")
    with pytest.raises(ConfigError, match=r"config\.yaml: key 'lr' appears twice \(lines 2 and 3"):
        load_trial_config(path)
    extra = ["--out", str(tmp_path / "out")] if command == "train" else []
    code, err = _cli(capsys, command, "--config", str(path), *extra)
    assert code == 2 and "key 'lr' appears twice" in err
    assert not (tmp_path / "out").exists()


def test_a_key_repeated_in_a_set_value_is_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"--set 'x=\{a: 1, a: 2\}': .*key 'a' appears twice"):
        parse_override("x={a: 1, a: 2}")
    path = _spec(tmp_path, "name: s\n")
    code, err = _cli(capsys, "validate", str(path), "--set", "base.optim={lr: 0.1, lr: 0.2}")
    assert code == 2 and "key 'lr' appears twice (line 1, columns 2 and 11)" in err


def test_the_stored_spec_reader_is_as_strict():
    # For `cifartune resume`, which reads the spec stored beside the results.
    with pytest.raises(ConfigError, match=r"r/spec\.yaml: key 'name' appears twice"):
        load_yaml_text("name: a\nname: b\n", "r/spec.yaml")


def test_strict_loading_stays_safe_and_keeps_merge_keys():
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        load_yaml_text("a: !!python/object/apply:os.system ['true']\n", "evil.yaml")
    # Overriding a key merged in from an anchor is YAML's intended use, not a repeat.
    tree = load_yaml_text("d: &d {lr: 0.1, momentum: 0.9}\noptim: {<<: *d, lr: 0.2}\n", "m.yaml")
    assert tree["optim"] == {"lr": 0.2, "momentum": 0.9}
    assert parse_override("space.optim.lr=[0.1, 0.01]") == ("space.optim.lr", [0.1, 0.01])
    assert parse_override("name=a: b: c") == ("name", "a: b: c")  # not YAML: kept as text


# --- A boolean is not a number ----------------------------------------------------------------

RULE = "a boolean is not a number; write a number"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("base: {epochs: true}", "base.epochs = True"),
        ("base: {optim: {lr: false}}", "base.optim.lr = False"),
        ("base: {batch_size: yes}", "base.batch_size = True"),
        ("base: {data: {train_subset: on}}", "base.data.train_subset = True"),
        ("resources: {cpus: true}", "resources.cpus = True"),
        ("scheduler: {name: asha, grace_period: true}", "scheduler.grace_period = True"),
        ("repeats: true", "repeats = True"),
        ("space: {epochs: [2, true]}", "space.epochs = True"),
        ("variants: {a: {optim.lr: true}}", "variants.a: optim.lr = True"),
        (
            "search: {algorithm: random}\nspace: {optim.lr: {type: float, low: true, high: 0.1}}",
            "space.optim.lr.low = True",
        ),
        (
            "search: {algorithm: random}\nspace: {batch_size: {type: int, low: 8, high: true}}",
            "space.batch_size.high = True",
        ),
        (
            "search: {algorithm: random}\nspace: {batch_size: {type: categorical, choices: [yes]}}",
            "space.batch_size = True",
        ),
    ],
)
def test_a_boolean_number_in_a_spec_is_refused(tmp_path, capsys, text, message):
    code, err = _cli(capsys, "validate", str(_spec(tmp_path, f"name: s\n{text}\n")))
    assert code == 2 and "Traceback" not in err
    assert f"{message}: {RULE}" in err


def test_a_boolean_number_in_a_set_or_a_config_file_is_refused(tmp_path, capsys):
    out = str(tmp_path / "out")
    code, err = _cli(capsys, "train", "--set", "epochs=true", "--out", out)
    assert code == 2 and f"epochs = True: {RULE}" in err
    code, err = _cli(capsys, "validate", str(_spec(tmp_path, "name: s\n")), "--set", "repeats=yes")
    assert code == 2 and f"repeats = True: {RULE}" in err
    config = _spec(tmp_path, "epochs: true\noptim: {momentum: false}\n", "config.yaml")
    code, err = _cli(capsys, "inspect", "--config", str(config))
    assert (
        code == 2 and f"epochs = True: {RULE}" in err and f"optim.momentum = False: {RULE}" in err
    )


def test_booleans_stay_valid_where_a_boolean_belongs():
    config = load_trial_config(None, ["model.batchnorm=true", "eval_test=yes", "threads=2"])
    assert config.model.batchnorm is True and config.eval_test is True and config.threads == 2
    spec = build_spec({"name": "s", "space": {"model.batchnorm": [True, False]}})
    assert spec.space["model.batchnorm"] == [True, False]


# --- What the data holds ----------------------------------------------------------------------


def test_a_subset_larger_than_the_bundled_slice_is_refused(tmp_path, capsys):
    path = _spec(tmp_path, "name: s\nbase: {data: {source: bundled, train_subset: 5000000}}\n")
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and "Traceback" not in err
    assert (
        "data.train_subset = 5000000: the bundled slice has 2000 training images; 1800 are left "
        "after the validation split of 200" in err
    )
    assert "use at most 1800" in err
    # The same through --set, and with a validation split of its own.
    set_subset = ("--set", "base.data.train_subset=1901", "--set", "base.data.val_size=100")
    code, err = _cli(capsys, "validate", str(path), *set_subset)
    assert code == 2 and "data.train_subset = 1901" in err and "use at most 1900" in err
    code, err = _cli(capsys, "validate", str(path), "--set", "base.data.train_subset=1800")
    assert code == 0, err


def test_a_validation_split_as_large_as_the_data_is_refused(tmp_path, capsys):
    path = _spec(tmp_path, "name: s\nbase: {data: {source: bundled, val_size: 2000}}\n")
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2
    assert "data.val_size = 2000: the bundled slice has 2000 training images" in err
    assert "use at most 1999" in err


def test_run_refuses_it_before_writing_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # were the check gone: fail, start no Ray
    path = _spec(tmp_path, "name: s\nbase: {data: {source: bundled, train_subset: 5000000}}\n")
    code, err = _cli(capsys, "run", str(path), "--storage", str(tmp_path / "r"))
    assert code == 2 and "data.train_subset = 5000000" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("space: {data.train_subset: [100, 5000000]}", "space.data.train_subset: "),
        (
            "search: {algorithm: random}\n"
            "space: {data.train_subset: {type: int, low: 100, high: 5000000}}",
            "space.data.train_subset: ",
        ),
        ("variants: {small: {}, huge: {data.train_subset: 5000000}}", "variants.huge: "),
    ],
)
def test_every_configuration_of_the_study_is_checked(tmp_path, capsys, text, where):
    path = _spec(tmp_path, f"name: s\nbase: {{data: {{source: bundled}}}}\n{text}\n")
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and f"{where}data.train_subset = 5000000: the bundled slice" in err


def test_a_variant_and_a_space_value_are_checked_together(tmp_path, capsys):
    # Each is fine alone (1800 with the default split; a split of 500), not the pair.
    text = (
        "name: s\nbase: {data: {source: bundled}}\nspace: {data.train_subset: [100, 1800]}\n"
        "variants: {plain: {}, wide_val: {data.val_size: 500}}\n"
    )
    code, err = _cli(capsys, "validate", str(_spec(tmp_path, text)))
    assert code == 2
    assert (
        "variants.wide_val with space.data.train_subset: data.train_subset = 1800: the bundled "
        "slice has 2000 training images; 1500 are left after the validation split of 500" in err
    )
    assert "variants.plain" not in err


def test_a_variant_and_a_space_value_that_only_clash_together_are_refused(tmp_path, capsys):
    # A crop of 24 is fine with base's crop, the no-crop variant fine with base's size 32; the
    # trial that pairs them could not start.
    text = (
        "name: s\nbase: {data: {source: bundled, augment: crop}}\n"
        "space: {data.crop_size: [24, 32]}\nvariants: {crop: {}, plain: {data.augment: none}}\n"
    )
    code, err = _cli(capsys, "validate", str(_spec(tmp_path, text)))
    assert code == 2
    assert "variants.plain with space.data.crop_size: data = " in err
    assert "data.crop_size < 32 only applies with 'crop'" in err and "variants.crop" not in err


def _no_image_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the images were loaded")

    monkeypatch.setattr(np, "load", refuse)
    monkeypatch.setattr(cifartune.engine.data, "_parse_npz", refuse)


@pytest.mark.parametrize("compressed", [False, True])
def test_a_mirror_knows_its_size_from_the_array_header(tmp_path, monkeypatch, compressed):
    arrays = synthetic_arrays(400, 100)
    mirror = write_mirror(tmp_path / "mirror", arrays)
    if compressed:
        np.savez_compressed(
            mirror / "train.npz", images=arrays.train_images, labels=arrays.train_labels
        )
    _no_image_loads(monkeypatch)
    assert train_image_count(DataSource("mirror", str(mirror), False)) == 400
    data = {"source": "mirror", "dir": str(mirror), "val_size": 100}
    described = describe_source(DataConfig(**data, train_subset=300))
    assert described == f"CIFAR-10 read from {mirror} (mirror)"
    message = f"train_subset = 301: the mirror {mirror} has 400 training images; 300 are left"
    with pytest.raises(DataError, match=re.escape(message)):
        describe_source(DataConfig(**data, train_subset=301))


def test_an_object_store_mirror_is_sized_through_a_random_access_file(tmp_path, monkeypatch):
    # file:// goes through pyarrow.fs like s3:// does: the header is read with ranged reads.
    mirror = write_mirror(tmp_path / "mirror", synthetic_arrays(400, 100))
    _no_image_loads(monkeypatch)
    uri = f"file://{mirror}"
    assert train_image_count(DataSource("mirror", uri, False)) == 400
    with pytest.raises(DataError, match=r"data\.val_size = 400: the mirror file://"):
        describe_source(DataConfig(dir=uri, val_size=400))


def test_a_torchvision_root_holds_the_50000_cifar_images(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()  # nothing in it is read
    data = {"source": "torchvision", "dir": str(tmp_path), "download": False}
    assert "torchvision" in describe_source(DataConfig(**data, train_subset=45000))
    with pytest.raises(DataError, match="has 50000 training images; 45000 are left"):
        describe_source(DataConfig(**data, train_subset=45001))


def test_an_unreadable_mirror_is_refused_before_the_start(tmp_path):
    mirror = write_mirror(tmp_path / "mirror", synthetic_arrays(40, 10))
    (mirror / "train.npz").write_bytes(b"PK not a zip")
    with pytest.raises(DataError, match=r"train\.npz: unreadable or truncated npz"):
        describe_source(DataConfig(dir=str(mirror)))


def test_the_real_mirror_is_sized_without_loading(monkeypatch):
    from ..support import MIRROR

    if not (MIRROR / "train.npz").is_file():
        pytest.skip(f"no CIFAR-10 mirror at {MIRROR}")
    _no_image_loads(monkeypatch)
    assert train_image_count(DataSource("mirror", str(MIRROR), False)) == 50_000


def test_distribution_errors_name_the_key_as_written(tmp_path):
    tree = {"name": "s", "search": {"algorithm": "random"}}
    bad = {"optim.lr": {"type": "float", "low": 0.1, "high": 0.5, "lo": 1}}
    with pytest.raises(ConfigError) as caught:
        build_spec({**tree, "space": bad})
    assert str(caught.value) == "space.optim.lr.lo: unknown key"


# --- What run cannot do, refused by validate ---------------------------------------------------


def _refused(tmp_path, capsys, text, *sets):
    """`validate`'s exit code and its one message (no traceback) for the spec `text`."""
    code, err = _cli(capsys, "validate", str(_spec(tmp_path, text)), *sets)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


def test_a_grid_too_large_to_ever_run_is_refused(tmp_path, capsys):
    axis = "[" + ", ".join(str(i) for i in range(1, 1001)) + "]"
    text = f"name: s\nspace: {{seed: [0], batch_size: {axis}, epochs: {axis}, threads: {axis}}}\n"
    message = _refused(tmp_path, capsys, text.replace("seed: [0], ", ""))
    assert "1,000,000,000 trials" in message and "at most 100,000" in message
    assert "search.algorithm random" in message  # the fix
    # A random search of the same space is fine: it draws samples, not the product.
    small = "name: s\nspace: {batch_size: {type: int, low: 1, high: 1000}}\n"
    small += "search: {algorithm: random, samples: 50}\n"
    assert _cli(capsys, "validate", str(_spec(tmp_path, small)))[0] == 0


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("''", "storage = '': empty; give a directory"),
        ("'   '", "storage = '   ': empty"),
        ("ftp://host/results", "no filesystem resolves the scheme 'ftp'"),
        ("foo://bucket", "no filesystem resolves the scheme 'foo'; use a directory or one of"),
    ],
)
def test_a_storage_nothing_can_write_to_is_refused(tmp_path, capsys, storage, expected):
    message = _refused(tmp_path, capsys, f"name: s\nstorage: {storage}\n")
    assert expected in message
    for fine in ("results", "/abs/results", "s3://bucket/prefix", "gs://bucket/x"):
        assert build_spec({"name": "s", "storage": fine}).storage == fine


def test_a_variant_value_the_space_overrides_is_refused(tmp_path, capsys):
    text = "name: s\nspace: {optim.lr: [0.1, 0.01]}\nvariants: {base: {}, fast: {optim.lr: 0.5}}\n"
    message = _refused(tmp_path, capsys, text)
    assert message.startswith("cifartune validate: error: variants.fast.optim.lr: space sets")
    assert "never applies" in message and "remove it from the variant or from space" in message
    seeds = "name: s\nrepeats: 3\nvariants: {a: {seed: 4}}\n"
    assert "variants.a.seed: repeats sets seed" in _refused(tmp_path, capsys, seeds)
    # A variant key the space does not sample stays valid.
    ok = "name: s\nspace: {optim.lr: [0.1]}\nvariants: {a: {}, b: {model.dropout: 0.5}}\n"
    assert _cli(capsys, "validate", str(_spec(tmp_path, ok)))[0] == 0


def test_deeply_nested_yaml_is_refused_not_a_traceback(tmp_path, capsys):
    deep = "name: s\nbase: " + "[" * 5000 + "]" * 5000 + "\n"
    assert "nested more than 32 levels deep" in _refused(tmp_path, capsys, deep)
    moderately = "name: s\ndescription: x\nbase: " + "{a: " * 40 + "1" + "}" * 40 + "\n"
    assert "nested more than 32 levels deep" in _refused(tmp_path, capsys, moderately)
    # In a --set value too.
    code, err = _cli(capsys, "validate", str(_spec(tmp_path, "name: s\n")), "--set",
                     "base.x=" + "[" * 3000 + "]" * 3000)  # fmt: skip
    assert code == 2 and "--set base.x: the value is nested" in err and "Traceback" not in err


def test_neighbours_an_alias_bomb_and_a_long_extends_chain(tmp_path, capsys):
    # Aliases of aliases: nine levels of ten expand to 10^9 values (hangs, if expanded).
    lines = ["name: s", "x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    message = _refused(tmp_path, capsys, "\n".join(lines) + "\n")
    assert "more than 100,000 values (aliases expanded)" in message
    # A chain of 1,100 variants (past Python's recursion limit), each extending the one
    # before: no RecursionError.
    chain = "\n".join(f"  v{i}: {{extends: v{i - 1}}}" for i in range(1, 1100))
    text = f"name: s\nsearch: {{algorithm: random}}\nvariants:\n  v0: {{}}\n{chain}\n"
    code, err = _cli(capsys, "validate", str(_spec(tmp_path, text)))
    assert "Traceback" not in err and code == 0, err[-500:]
