"""Ray Tune adapter: search space translation, the trainable, the Parquet callback, the Tuner.

This is the only module (with ``study``) that imports Ray. The trainable is a thin shell around
:func:`cifartune.engine.fit`: sampled flat config in, typed config built by the spec, per-epoch
``tune.report``; checkpoints and epoch rows go to the results directory (``trial_store``), not
through Ray, so resuming never depends on which checkpoints Ray's snapshot remembers.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path
from typing import Any

# Quiet by default: no token-auth warning, no Ray progress tables (cifartune prints its own
# lines), no "snapshotting may become a bottleneck" warning for checkpoint-every-epoch studies.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# No per-trial result.json/progress.csv/TensorBoard files from Ray's default loggers: the epoch
# Parquet files are the results, and Ray's files cost a write per result and, in an object
# store, an upload per trial at every experiment snapshot (requests that grow with the study).
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import (
    BasicVariantGenerator,
    ConcurrencyLimiter,
    SearchAlgorithm,
    Searcher,
)
from ray.tune.search.optuna import OptunaSearch

from .config import TrialConfig, flatten
from .data import CifarArrays, DeviceData, to_device
from .effective import effective_settings
from .engine import Metrics, StateThunk, fit, resolve_device
from .errors import CifartuneError
from .optuna_mirror import OptunaMirror
from .recorder import StudyRecorder, TrialEvent
from .results import trial_keys
from .spec import (
    SEED_KEY,
    VARIANT_KEY,
    CategoricalDistribution,
    FloatDistribution,
    StudySpec,
    asha_rungs,
    max_epochs,
    trial_config,
)
from .storage import Location
from .trial_store import CpuClock, TrialWriter, record_failure, set_aside_orphans

log = logging.getLogger(__name__)


def search_space(spec: StudySpec) -> dict[str, Any]:
    """The Ray ``param_space``: lists become grid axes (categorical choices under Optuna, which
    cannot take ``grid_search``), distributions their Tune namesakes, repeats a seed grid."""
    optuna = spec.search.algorithm == "optuna"

    def axis(values: list[Any]) -> Any:
        return tune.choice(values) if optuna else tune.grid_search(values)

    space: dict[str, Any] = {}
    if spec.variants:
        space[VARIANT_KEY] = axis(list(spec.variants))
    for key, dim in spec.space.items():
        if isinstance(dim, list):
            space[key] = axis(dim)
        elif isinstance(dim, CategoricalDistribution):
            space[key] = tune.choice(dim.choices)
        elif isinstance(dim, FloatDistribution):
            space[key] = (tune.loguniform if dim.log else tune.uniform)(dim.low, dim.high)
        else:  # Tune's integer ranges exclude `high`; Optuna's (and ours) include it
            space[key] = (tune.lograndint if dim.log else tune.randint)(dim.low, dim.high + 1)
    if spec.repeats > 1:
        base_seed = int(spec.base.get(SEED_KEY, 0))
        space[SEED_KEY] = tune.grid_search([base_seed + i for i in range(spec.repeats)])
    return space


def search_algorithm(spec: StudySpec) -> SearchAlgorithm | Searcher:
    """The searcher, with ``resources.max_concurrent`` applied to it: Ray ignores the Tuner's
    ``max_concurrent_trials`` for a variant generator built by hand, so it is given here."""
    limit = spec.resources.max_concurrent or 0
    if spec.search.algorithm == "optuna":
        searcher = OptunaSearch(metric=spec.metric, mode=spec.resolved_mode, seed=spec.search.seed)
        return ConcurrencyLimiter(searcher, max_concurrent=limit) if limit else searcher
    # constant_grid_search: one random draw per sample, shared by every grid point of it, so
    # the seeds of a repeated configuration really repeat it (Ray's default draws anew for each
    # seed, turning "mean over repeats" into a best-of-N).
    return BasicVariantGenerator(
        max_concurrent=limit,
        random_state=spec.search.seed,
        constant_grid_search=spec.search.algorithm == "random",
    )


def scheduler(spec: StudySpec) -> TrialScheduler:
    sched = spec.scheduler
    if sched.name == "asha":
        # Our epoch, not Ray's training_iteration: a trial resumed from our own checkpoint
        # starts a new Ray iteration count, but its epochs go on.
        return ASHAScheduler(
            time_attr="epoch",
            max_t=max_epochs(spec),
            grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor,
        )
    return FIFOScheduler()


def scheduler_stops(spec: StudySpec) -> frozenset[int]:
    """Epochs after which the scheduler may end a trial before its last: ASHA's rungs and its
    max_t (below the trial's epochs when ``scheduler.max_epochs`` says so); FIFO: none."""
    if spec.scheduler.name == "asha":
        return frozenset([*asha_rungs(spec), max_epochs(spec)])
    return frozenset()


def _ray_safe(metrics: Metrics, metric: str, mode: str) -> Metrics:
    """A non-finite selection metric (a diverged trial's loss) becomes the worst possible value,
    so ASHA ranks it last and Optuna records a bad trial instead of failing it on NaN."""
    value = metrics.get(metric)
    if isinstance(value, float) and not math.isfinite(value):
        return {**metrics, metric: -math.inf if mode == "max" else math.inf}
    return metrics


# The device copy of the data, kept across the trials a reused trial process runs (Ray's
# reuse_actors): one entry, for the last data configuration and device.
_device_data: dict[tuple[Any, ...], DeviceData] = {}


def trial_data(arrays: CifarArrays, config: TrialConfig) -> DeviceData:
    """`arrays` split and copied to the trial's device, once per process and data split (the
    trials of a study differ in what they train, rarely in which images)."""
    device = resolve_device(config.device)
    cfg = config.data
    key = (arrays.origin, arrays.train_images.shape, cfg.val_size, cfg.split_seed,
           cfg.train_subset, str(device))  # fmt: skip
    if key not in _device_data:
        _device_data.clear()
        _device_data[key] = to_device(arrays, cfg, device)
    return _device_data[key]


def train_trial(
    sample: dict[str, Any], *, arrays: CifarArrays, spec: StudySpec, directory: str
) -> None:
    """The Ray trainable: one trial of `spec` on the shared `arrays`.

    It resumes from its own latest checkpoint in the results directory (a retry after a crash,
    or a resumed study), writes its checkpoints and epoch rows there, and reports each epoch to
    Ray for the scheduler and searcher. A config or data error (no retry can fix it) ends the
    trial at once: it is recorded in the trial's files and the trial returns, so Ray does not
    retry it; the driver reads it back as the trial's error.
    """
    trial_id = tune.get_context().get_trial_id()
    location = Location.of(directory)
    reported = False
    try:
        config = trial_config(spec, sample)
        flat = flatten(config)
        data = trial_data(arrays, config)
        writer = TrialWriter(
            location,
            trial_id,
            sample=sample,
            flat_config=flat,
            keys=trial_keys(trial_id, flat, sample, study=spec.name),
            metric=spec.metric,
            mode=spec.resolved_mode,
            every=spec.checkpoint.every,
            stops_at=scheduler_stops(spec),
            extras={
                "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(),
                **effective_settings(config, data),
            },
        )
        cpu = CpuClock()

        def report(metrics: Metrics, state: StateThunk) -> None:
            nonlocal reported
            cpu.measure(metrics)
            writer.record(metrics, state)
            tune.report(_ray_safe(metrics, spec.metric, spec.resolved_mode))
            reported = True

        with writer:
            result = fit(config, data, report=report, resume=writer.resume())
    except CifartuneError as exc:
        log.error("trial %s cannot run: %s", trial_id, exc)
        record_failure(location, trial_id, f"{type(exc).__name__}: {exc}")
        return
    if not reported and result.history:
        # Resumed from a checkpoint of its last epoch (it finished after Ray's last snapshot):
        # nothing left to train, but the scheduler and searcher still get its final result.
        tune.report(_ray_safe(result.history[-1], spec.metric, spec.resolved_mode))


class StudyCallback(tune.Callback):
    """Keeps ``trials.parquet`` up to date as the study runs (driver side).

    The recorder is built in ``setup``, which Ray calls on every start, also after
    ``Tuner.restore`` (which unpickles this object as it was before any trial ran): its state is
    read from the results directory, never from that pickle.
    """

    def __init__(self, directory: Location, spec: StudySpec, optuna_storage: str | None = None):
        self.directory, self.spec, self.optuna_storage = directory, spec, optuna_storage
        self.recorder: StudyRecorder | None = None
        self.mirror: OptunaMirror | None = None
        self._changed: dict[str, dict[str, Any]] = {}  # rows not mirrored yet, by trial

    def setup(self, *args: Any, **info: Any) -> None:
        spec = self.spec
        self.recorder = StudyRecorder(
            self.directory,
            lambda sample: flatten(trial_config(spec, sample)),
            spec.metric,
            spec.resolved_mode,
            spec.resources.cpus,
            spec.resources.gpus,
        )
        self.mirror = self._open_mirror()
        self._changed = {}

    def _open_mirror(self) -> OptunaMirror | None:
        """The study's Optuna mirror (optuna.journal beside the results, or --optuna-storage);
        an object store holds no journal file, so there it needs --optuna-storage."""
        if not self.directory.local and self.optuna_storage is None:
            log.info("no Optuna mirror: results in an object store need --optuna-storage URL")
            return None
        local = self.directory.local_path if self.directory.local else Path(".")
        try:
            return OptunaMirror(local, self.spec.model_dump(mode="json"), self.optuna_storage)
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
        self._recorder.record_complete(trial.trial_id)
        self._sync(trials, trial)
        log.info("trial %s finished", trial.trial_id)

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
        self._recorder.flush()
        self._update_mirror()
        set_aside_orphans(self.directory, {t.trial_id for t in trials})

    def _sync(self, trials: list[Trial], touched: Trial | None = None) -> None:
        """The trial table, for the trial the event is about and, when the table is due to be
        written, any trial whose state changed (a dictionary lookup per trial: per event, that
        would grow with the study; each change Ray makes to a running trial has an event of its
        own); the mirror follows whenever the table is written (at most every few seconds: each
        Optuna journal write is a synced disk write, several per epoch otherwise)."""
        recorder = self._recorder
        touched_id = touched.trial_id if touched is not None else None
        candidates = trials if touched is None or recorder.write_due() else [touched]
        events = [
            TrialEvent(t.trial_id, t.status, t.config, functools.partial(_error_text, t))
            for t in candidates
            if t.trial_id == touched_id or recorder.needs_update(t.trial_id, t.status)
        ]
        writes = recorder.writes
        self._changed.update(
            {row["trial_id"]: row for row in recorder.record_events(events, touched_id)}
        )
        if recorder.writes != writes:
            self._update_mirror()

    def _update_mirror(self) -> None:
        """The mirror, for the trials that changed since its last update."""
        changed, self._changed = self._changed, {}
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
