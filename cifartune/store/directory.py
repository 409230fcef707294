"""One study's results directory, and the one owner of its layout (:mod:`.layout`): where each
of its files lives, its stored spec (typed, also when an older version wrote it) and its
metadata. The driver, resume, the claim, replay, scoring and ``read_study`` reach those files
through it rather than joining paths or parsing spec.yaml themselves; the epoch and trial files
are still read by :mod:`.epochs` and :mod:`.trial_states`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cifartune.config.files import load_yaml_text
from cifartune.config.spec import StudySpec
from cifartune.config.validation import build_stored_spec
from cifartune.errors import ConfigError, StudyDirError
from cifartune.storage import Location
from cifartune.store.layout import (
    BEST,
    EPOCHS_DIR,
    LOCK_FILE,
    RAY_DIR,
    SPEC_FILE,
    STUDY_FILE,
    TEST_FILE,
    checkpoint_dir,
)
from cifartune.store.metadata import StudyMetadata
from cifartune.store.snapshot import EPOCHS, has_table
from cifartune.store.tables import atomic_write_text, write_table


class StudyDirectory:
    """A study's results directory: a local path or an object-store prefix (see ``storage``)."""

    def __init__(self, where: str | Path | Location):
        self.location = Location.of(where)

    @classmethod
    def of_study(cls, storage: str, name: str) -> StudyDirectory:
        """``<storage>/<name>``, where `run` puts a study of that name."""
        try:
            return cls(Location.of(storage) / name)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"storage = {storage!r}: {exc}") from None

    @classmethod
    def naming_trial(cls, where: str) -> tuple[StudyDirectory, str | None]:
        """The study in `where`, which may also name one of its trials (RESULTS/TRIAL), and
        that trial (None when `where` is the study itself)."""
        location = Location.of(where)
        if not (location / STUDY_FILE).is_file() and (location.parent / STUDY_FILE).is_file():
            return cls(location.parent), location.name
        return cls(location), None

    def __str__(self) -> str:
        return str(self.location)

    @property
    def name(self) -> str:
        return self.location.name

    def holds_study(self) -> bool:
        """Whether a study was started here (its study.json)."""
        return (self.location / STUDY_FILE).is_file()

    def has_epochs(self) -> bool:
        """Whether any trial has written an epoch."""
        committed = has_table(self.location, EPOCHS)
        return committed or any((self.location / EPOCHS_DIR).files(recursive=True))

    # The study's own files.

    def metadata(self) -> StudyMetadata:
        return StudyMetadata(self.location)

    @property
    def spec_file(self) -> Location:
        """The stored spec: a spec file `cifartune run` takes as it is."""
        return self.location / SPEC_FILE

    def spec_tree(self) -> dict[str, Any]:
        """The stored spec as written (its YAML mapping); empty when there is none."""
        path = self.spec_file
        return load_yaml_text(path.read_text(), str(path)) if path.is_file() else {}

    def spec(self, overrides: tuple[str, ...] | list[str] = ()) -> StudySpec:
        """The stored spec, validated as this version validates a spec, with `overrides`
        (``--set``); keys that an older version wrote and this one retired are dropped."""
        if not self.spec_file.is_file():
            raise StudyDirError(f"{self}: no {SPEC_FILE}; the study never started here")
        return build_stored_spec(self.spec_tree(), overrides)

    def write_spec(self, spec: StudySpec) -> None:
        import yaml

        text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
        atomic_write_text(self.spec_file, text)

    def write_test(self, scores: pd.DataFrame) -> None:
        """The test-set scores of the best configurations, once the search is over."""
        write_table(scores, self.location / TEST_FILE)

    def lock_file(self) -> Path | None:
        """The file lock of one driver at a time; None in an object store (no file locks)."""
        return (self.location / LOCK_FILE).local_path if self.location.local else None

    def ray_state(self) -> tuple[str, str, Any]:
        """Where Ray Tune keeps the study's experiment state: the storage path, the
        experiment's name there, and the pyarrow filesystem to reach it."""
        storage_path, filesystem = self.location.for_ray()
        return storage_path, RAY_DIR, filesystem

    def best_checkpoint(self, trial_id: str) -> Location:
        """A trial's model at its best epoch (what the test set scores)."""
        return checkpoint_dir(self.location, trial_id) / BEST
