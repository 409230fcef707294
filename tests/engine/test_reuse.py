"""A reused trial process (Ray's reuse_actors) trains each trial as a fresh process would."""

import json
import subprocess
import sys

import torch

from cifartune.config.spec import trial_config
from cifartune.config.validation import build_spec
from cifartune.engine.data import load_bundled
from cifartune.engine.loop import fit
from cifartune.engine.splits import device_data

from ..support import REPO, without_timings

SPEC = build_spec(
    {
        "name": "reuse",
        "base": {"epochs": 2, "batch_size": 32, "data": {"source": "bundled", "train_subset": 200}},
        "space": {"optim.lr": [0.05, 0.01]},
    }
)
# Trial A leaves everything a process carries changed: another thread count, seeds, dropout
# and batch-norm state; trial B then sets none of it itself (threads: default).
TRIAL_A = {"optim.lr": 0.05, "seed": 7, "threads": 1, "model.dropout": 0.5, "model.batchnorm": True}
TRIAL_B = {"optim.lr": 0.01}
FRESH = """
import json, sys
from cifartune.config.spec import trial_config
from cifartune.config.validation import build_spec
from cifartune.engine.data import load_bundled
from cifartune.engine.loop import fit
from cifartune.engine.splits import device_data
spec = build_spec(json.loads(sys.argv[1]))
config = trial_config(spec, json.loads(sys.argv[2])).model_copy(update={"threads": None})
result = fit(config, device_data(load_bundled(), config))
import torch
print(json.dumps({"history": result.history, "threads": torch.get_num_threads()}))
"""


def _b_config():
    return trial_config(SPEC, TRIAL_B).model_copy(update={"threads": None})


def test_a_reused_process_trains_the_second_trial_as_a_fresh_one():
    arrays = load_bundled()
    first = trial_config(SPEC, TRIAL_A)
    fit(first, device_data(arrays, first))
    torch.manual_seed(123)  # whatever else a previous trial left in the global generators
    reused = fit(_b_config(), device_data(arrays, _b_config())).history
    threads = torch.get_num_threads()
    fresh = subprocess.run(
        [sys.executable, "-c", FRESH, SPEC.model_dump_json(), json.dumps(TRIAL_B)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    expected = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert without_timings(reused) == without_timings(expected["history"])
    assert threads == expected["threads"]  # not trial A's one thread


def test_the_device_copy_is_made_once_per_data_split():
    arrays = load_bundled()
    a, b = trial_config(SPEC, TRIAL_A), _b_config()
    assert device_data(arrays, a) is device_data(arrays, b)  # same split: the same tensors
    other = trial_config(SPEC, {**TRIAL_B, "data.train_subset": 100})
    assert len(device_data(arrays, other).train_y) == 100
