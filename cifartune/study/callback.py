"""The driver's Ray callback: the trial table and the Optuna mirror, kept up to date from Ray's
trial events as the study runs.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.progress_reporter import TrialProgressCallback

from cifartune.config.base import flatten
from cifartune.config.resolved import ResolvedSpec
from cifartune.storage import Location
from cifartune.store.checkpoints import set_aside_orphans
from cifartune.store.committer import commit_trials, uncommitted_finished
from cifartune.store.optuna_mirror import OptunaMirror
from cifartune.study.pbt import REPEATED
from cifartune.study.recorder import StudyRecorder, TrialEvent

log = logging.getLogger(__name__)
# Seconds between two updates of the Optuna mirror while the study runs.
MIRROR_EVERY_S = 5.0
# Seconds between two commits of finished trials to the study's tables (store.snapshot): a
# commit costs a few requests whatever its size, and readers read the files until then.
COMMIT_EVERY_S = 10.0


class RayTrialLinesToLog(TrialProgressCallback):
    """Ray's own trial lines ("Trial X completed. Last result: ...", printed whatever the
    verbosity, empty for a trial stopped before it reported) go to the debug log: the study's
    lines are StudyCallback's. Ray adds its own printer only when the callbacks hold none."""

    def _print(self, msg: str) -> None:
        log.debug("%s", msg)


class StudyCallback(tune.Callback):
    """Keeps the trial rows and the Optuna mirror up to date as the study runs (driver side).

    The recorder is built in ``setup``, which Ray calls on every start, also after
    ``Tuner.restore`` (which unpickles this object as it was before any trial ran): its state is
    read from the results directory, never from that pickle.
    """

    def __init__(
        self, directory: Location, spec: ResolvedSpec, optuna_storage: str | None = None
    ) -> None:
        self.directory, self.spec, self.optuna_storage = directory, spec, optuna_storage
        self.recorder: StudyRecorder | None = None
        self.mirror: OptunaMirror | None = None
        self._changed: dict[str, dict[str, Any]] = {}  # rows not mirrored yet, by trial
        self._mirrored_at = -float("inf")
        self._to_commit: set[str] = set()  # finished trials whose files are not committed
        self._committed_at = -float("inf")

    def setup(self, *args: Any, **info: Any) -> None:
        spec = self.spec
        resources = spec.spec.resources
        self.recorder = StudyRecorder(
            self.directory,
            lambda sample: flatten(spec.trial_config(sample)),
            spec.metric,
            spec.mode,
            resources.cpus,
            resources.gpus,
            group_by_trial=spec.spec.scheduler.name == "pbt",
        )
        self.mirror = self._open_mirror()
        self._changed = {}
        self._mirrored_at = -float("inf")
        self._to_commit = set()
        self._committed_at = time.monotonic()

    def _open_mirror(self) -> OptunaMirror | None:
        """The study's Optuna mirror (optuna.journal beside the results, or --optuna-storage);
        an object store holds no journal file, so there it needs --optuna-storage."""
        if not self.directory.local and self.optuna_storage is None:
            log.info("no Optuna mirror: results in an object store need --optuna-storage URL")
            return None
        local = self.directory.local_path if self.directory.local else Path(".")
        try:
            return OptunaMirror(local, self.spec.spec.model_dump(mode="json"), self.optuna_storage)
        except Exception as exc:  # a view of the results: it must not stop the study
            log.warning("Optuna mirror unavailable (%s); rebuild it with export-optuna", exc)
            return None

    @property
    def _recorder(self) -> StudyRecorder:
        if self.recorder is None:
            self.setup()
        assert self.recorder is not None
        return self.recorder

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        self._sync(trials, trial)
        if result.get(REPEATED):  # told again at a barrier: its line was printed
            return
        log.info(
            "trial %s epoch %d: val/top1 %.2f val/loss %.3f (%.1fs)%s",
            trial.trial_id,
            result["epoch"],
            result["val/top1"],
            result["val/loss"],
            result["time/epoch_s"],
            "  diverged" if result.get("diverged") else "",
        )

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._recorder.record_start(trial.trial_id)
        self._sync(trials, trial)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        finished = self._recorder.record_complete(trial.trial_id)
        self._sync(trials, trial)
        if finished:
            self._to_commit.add(trial.trial_id)
        if self._to_commit and time.monotonic() - self._committed_at >= COMMIT_EVERY_S:
            self._commit()
        if "epoch" in (trial.last_result or {}):
            log.info("trial %s finished", trial.trial_id)
        else:  # stopped before it started: the study's budget was spent
            log.info("trial %s ends without training: the study stops", trial.trial_id)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._sync(trials, trial)
        log.warning(
            "trial %s errored: %s (details: %s)",
            trial.trial_id,
            _error_text(trial),
            trial.error_file,
        )

    def on_trial_recover(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._recorder.record_retry(trial.trial_id, _error_text(trial))
        self._sync(trials, trial)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._sync(trials)
        self._update_mirror()
        set_aside_orphans(self.directory, {t.trial_id for t in trials})
        # Every finished trial's files, a killed predecessor's included.
        self._to_commit |= uncommitted_finished(self.directory)
        self._commit(final=True)

    def _commit(self, final: bool = False) -> None:
        """Commit the finished trials' files (the mirror has read their rows first)."""
        self._update_mirror()
        trial_ids, self._to_commit = self._to_commit, set()
        self._committed_at = time.monotonic()
        try:
            commit_trials(self.directory, trial_ids, final=final)
        except Exception as exc:  # the files stay the truth: the next commit takes them
            log.warning("finished trials not committed to the study's tables yet (%s)", exc)
            self._to_commit |= trial_ids

    def _sync(self, trials: list[Trial], touched: Trial | None = None) -> None:
        """The trial rows, for the trial the event is about and, when a scan is due, any trial
        whose state changed (a dictionary lookup per trial: per event, that would grow with
        the study; each change Ray makes to a running trial has an event of its own); the
        mirror follows at most every MIRROR_EVERY_S seconds (each Optuna journal write is a
        synced disk write, several per epoch otherwise)."""
        recorder = self._recorder
        touched_id = touched.trial_id if touched is not None else None
        candidates = trials if touched is None or recorder.scan_due() else [touched]
        events = [
            TrialEvent(t.trial_id, t.status, t.config, functools.partial(_error_text, t))
            for t in candidates
            if t.trial_id == touched_id or recorder.needs_update(t.trial_id, t.status)
        ]
        self._changed.update(
            {row["trial_id"]: row for row in recorder.record_events(events, touched_id)}
        )
        if time.monotonic() - self._mirrored_at >= MIRROR_EVERY_S:
            self._update_mirror()

    def _update_mirror(self) -> None:
        """The mirror, for the trials that changed since its last update."""
        changed, self._changed = self._changed, {}
        self._mirrored_at = time.monotonic()
        if self.mirror is None:
            return
        try:  # in trial-id order, so a mirror rebuilt from Parquet numbers its trials the same
            for trial_id in sorted(changed):
                self.mirror.update(changed[trial_id], self._recorder.trial_epochs(trial_id))
        except Exception as exc:  # the Parquet files stay the truth; the mirror is rebuilt later
            log.warning("Optuna mirror stopped (%s); rebuild it with export-optuna", exc)
            self.mirror = None


def _error_text(trial: Trial) -> str | None:
    path = trial.error_file
    if not path or not Path(path).is_file():
        return None
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:500] if lines else None
