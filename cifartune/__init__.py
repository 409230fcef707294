"""cifartune: hyperparameter studies of CIFAR-10 classifiers on Ray Tune.

The package is layered (each subpackage's docstring says what it may import, and
``lint-imports`` checks it): :mod:`cifartune.config` (trial config, specs), the Ray-free
:mod:`cifartune.engine`, the study's files in :mod:`cifartune.store`, the driver in
:mod:`cifartune.study` (the only layer that imports Ray), :mod:`cifartune.views` (status,
dashboard, reports) and :mod:`cifartune.cli`.

Torch-backed names load on first use, so ``cifartune validate`` answers without importing torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import version
from typing import Any

from cifartune.config.spec import StudySpec
from cifartune.config.trial import TrialConfig, load_trial_config
from cifartune.config.validation import load_spec
from cifartune.errors import ConfigError

__version__ = version("cifartune")
_LAZY = {
    "CifarArrays": "cifartune.engine.data",
    "DataError": "cifartune.errors",
    "load_arrays": "cifartune.engine.data",
    "FitResult": "cifartune.engine.loop",
    "fit": "cifartune.engine.loop",
    "SeedNet": "cifartune.engine.model",
    "build_model": "cifartune.engine.model",
    "count_parameters": "cifartune.engine.model",
    "layer_table": "cifartune.engine.model",
    "StudyData": "cifartune.store.study_data",
    "read_study": "cifartune.store.study_data",
}
__all__ = [
    "CifarArrays",
    "ConfigError",
    "DataError",
    "FitResult",
    "SeedNet",
    "StudyData",
    "StudySpec",
    "TrialConfig",
    "__version__",
    "build_model",
    "count_parameters",
    "fit",
    "layer_table",
    "load_arrays",
    "load_spec",
    "load_trial_config",
    "read_study",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cifartune' has no attribute {name!r}")
