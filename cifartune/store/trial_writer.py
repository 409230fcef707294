"""A trial's own files in its study directory, written by the trial process itself:

  epochs/<trial>/<epoch>-<writer>.parquet  one file per finished epoch, never changed (epochs.py)
  checkpoints/<trial>/latest.pt   the newest checkpoint (each ``checkpoint.every`` epochs, the last)
  checkpoints/<trial>/best.pt     the model of the best epoch so far by the study metric
  checkpoints/<trial>/failed.txt  the error that ended the trial for good (config or data)

Nothing here depends on Ray's own checkpoints, which a resumed experiment can name after
``num_to_keep`` deleted them. Within one epoch the checkpoints are written first, then the row:
a crash between the two leaves a checkpoint one epoch ahead of the rows, and the resumed trial
writes the missing row from the checkpoint's history, so no finished epoch is recomputed
(with ``checkpoint.every: 1``) and none is stored twice.

Except where the trial surely goes on: there a background thread writes both, in that order,
while the next epoch trains, so a synced 5-10 MB file is not on the trial's critical path. The
next epoch's files wait for it, and so does the trial's end. A crash during that write loses the
epoch's files, as a crash during the epoch would; the driver may read the epoch's row a moment
after Ray told it of the epoch, and reads it at the trial's next event. An epoch after which
the scheduler may stop the trial (ASHA's rungs), the last epoch, and the first after a resume
are written before ``record`` returns: Ray ends a stopped trial's process at the end of a study
without waiting for its threads, and files in flight would be lost.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from cifartune.config.base import flatten
from cifartune.storage import Location
from cifartune.store.checkpoints import better, discard_trial_files, load_state, save_state
from cifartune.store.columns import epoch_records
from cifartune.store.epochs import (
    epoch_files,
    epoch_path,
    trial_epochs_dir,
    withdraw,
    withdrawn_dir,
    write_epoch,
    writer_token,
)
from cifartune.store.layout import BEST, LATEST, checkpoint_dir
from cifartune.store.lineage import trial_exploits, write_exploit

log = logging.getLogger(__name__)
KEPT_PREFIX = "epoch-"


def kept_checkpoint(epoch: int) -> str:
    """The name of a trial's checkpoint kept for other trials to take (see TrialWriter)."""
    return f"{KEPT_PREFIX}{epoch:05d}.pt"


class TrialWriter:
    """Writes one trial's checkpoints and epoch rows; resumes them from its files.

    `sample` identifies the trial's configuration: a checkpoint saved under another sample
    (Ray can hand a trial id that a lost snapshot never saw to a new configuration) is not
    resumed from but discarded. `stops_at` holds the epochs after which the scheduler may end
    the trial early; checkpoints of the other epochs are written in the background (see the
    module docstring); None: any epoch, so all are written before `record` returns. `keep`
    holds the epochs whose checkpoint other trials may take (population-based training's
    perturbation epochs): one is written there and kept under its epoch, the two newest. Use
    the writer as a context manager around the training: leaving it waits for the last write.
    """

    def __init__(
        self,
        directory: Location,
        trial_id: str,
        *,
        sample: Mapping[str, Any],
        flat_config: Mapping[str, Any],
        keys: Mapping[str, Any],
        metric: str,
        mode: str,
        every: int,
        extras: Mapping[str, Any],
        stops_at: Collection[int] | None = None,
        keep: Collection[int] = (),
    ):
        self.directory, self.trial_id = directory, trial_id
        self.sample = dict(sample)
        self.flat, self.keys, self.extras = dict(flat_config), dict(keys), dict(extras)
        self.metric, self.mode, self.every = metric, mode, every
        self.folder = checkpoint_dir(directory, trial_id)
        self.epochs = trial_epochs_dir(directory, trial_id)
        self.writer = writer_token()  # names this process's epoch files
        self.best: float | None = None
        self.ran: dict[int, dict[str, Any]] = {}  # epoch -> pid, node and end time
        self.stops_at = None if stops_at is None else frozenset(stops_at)
        self.keep = frozenset(keep)
        self.just_resumed = False  # resumed, and no epoch recorded since
        self._background: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def __enter__(self) -> TrialWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._finish_pending()
        except Exception:
            if error is None:
                raise
            log.exception("trial %s: writing an epoch's files failed too", self.trial_id)
        finally:
            if self._background is not None:
                self._background.shutdown()

    def resume(self) -> dict[str, Any] | None:
        """The latest checkpoint of this trial, with the epoch files and best value made to
        agree with it: rows after it withdrawn (they are recomputed), rows it holds but the
        files lack written. None (and the trial's old files withdrawn) when it has to start
        from scratch."""
        latest = self.folder / LATEST
        state = load_state(latest) if latest.is_file() else None
        if state is not None and state.get("sample") != self.sample:
            log.warning("trial %s: checkpoint of another configuration discarded", self.trial_id)
            state = None
        if state is None:
            discard_trial_files(self.directory, self.trial_id)
            return None
        stored = epoch_files(self.epochs)
        done = int(state["epoch"])
        later = [f for e, f in stored.items() if e > done]
        withdraw(later, withdrawn_dir(self.directory, self.trial_id))
        self.ran = {int(e): dict(r) for e, r in state.get("ran", {}).items()}
        # Written to the checkpoint, not yet to the files (a crash between the two): the
        # rows come from it, as this process would have written them.
        for metrics in state["history"]:
            epoch = int(metrics["epoch"])
            if epoch not in stored:
                self._write_row({**metrics, **self.ran.get(epoch, {})})
        self.best = state.get("best_metric")
        self.just_resumed = True
        return state

    def record(self, metrics: Mapping[str, Any], state: Callable[[], dict[str, Any]]) -> None:
        """One finished epoch: checkpoints (when due), then its row; where the trial surely goes
        on, in the background (see the module docstring)."""
        epoch = int(metrics["epoch"])
        value = metrics.get(self.metric)
        improved = better(value, self.best, self.mode)
        if improved:
            self.best = float(metrics[self.metric])
        last = epoch == self.flat["epochs"] or bool(metrics.get("diverged"))
        due = last or epoch % self.every == 0 or epoch in self.keep
        # Where and when the epoch ran: kept in the checkpoint too, so a row rebuilt from it
        # (see resume) is the row this process would have written.
        self.ran[epoch] = {**self.extras, "time/ended_at": time.time()}
        self._finish_pending()  # the previous epoch's files first: one write in flight
        first_after_resume, self.just_resumed = self.just_resumed, False
        # state() is a copy: a background write may run while training goes on.
        full = None
        if improved or due:
            full = {
                **state(),
                "sample": self.sample,
                "best_metric": self.best,
                "ran": dict(self.ran),
            }
        row = {**metrics, **self.ran[epoch]}
        write = functools.partial(self._write_epoch, full, improved, due, row)
        if not self._goes_on_after(epoch, last, first_after_resume):
            write()
            return
        if self._background is None:
            self._background = ThreadPoolExecutor(1, thread_name_prefix="cifartune-writer")
        self._pending = self._background.submit(write)

    def _goes_on_after(self, epoch: int, last: bool, first_after_resume: bool) -> bool:
        """Whether nothing can end the trial after `epoch` but a crash or an interrupt."""
        if last or self.stops_at is None or epoch in self.stops_at:
            return False
        # A resumed trial's first epoch: a scheduler restored with the experiment may not know
        # the rungs this trial passed, and decide at whatever epoch it reports first.
        return not first_after_resume

    def _write_epoch(
        self, full: dict[str, Any] | None, improved: bool, due: bool, row: dict[str, Any]
    ) -> None:
        """An epoch's checkpoints (`full` when any is written), then its row."""
        # best.pt: what scoring reads (epoch, metric, model, sample, precision). When the
        # latest checkpoint is due too it is that file, linked rather than written twice.
        best = {**full, "metric": full["best_metric"]} if full is not None and improved else None
        if full is not None and due:
            save_state(best or full, self.folder / LATEST)
            if best is not None:
                (self.folder / LATEST).link_to(self.folder / BEST)
            if int(full["epoch"]) in self.keep:
                self._keep(int(full["epoch"]))
        elif best is not None:
            keep = ("epoch", "metric", "model", "sample", "precision")
            save_state({k: best[k] for k in keep if k in best}, self.folder / BEST)
        self._write_row(row)

    def _keep(self, epoch: int) -> None:
        """latest.pt, also as the checkpoint of `epoch` (a link: no bytes written again), for
        another trial to take; older kept ones than the two newest go (no trial takes them)."""
        (self.folder / LATEST).link_to(self.folder / kept_checkpoint(epoch))
        kept = sorted((f for f in self.folder.files(".pt") if f.name.startswith(KEPT_PREFIX)),
                      key=lambda f: f.name)  # fmt: skip
        for old in kept[:-2]:
            old.unlink()

    def exploit(self, donor: str, epoch: int) -> dict[str, Any]:
        """Take `donor`'s weights and optimizer state at `epoch` (its kept checkpoint) and go on
        with this writer's config (population-based training's exploit). Saved as this trial's
        latest checkpoint first, then recorded in its lineage: a kill between the two takes the
        state again, one after it resumes from it. The state keeps the donor's config, so that
        the engine sees what changed; its history and best value stay this trial's own. Returns
        the state to resume from."""
        taken = load_state(checkpoint_dir(self.directory, donor) / kept_checkpoint(epoch))
        latest = self.folder / LATEST
        own = load_state(latest) if latest.is_file() else {"history": [], "ran": {}}
        withdraw(
            [f for e, f in epoch_files(self.epochs).items() if e > epoch],
            withdrawn_dir(self.directory, self.trial_id),
        )
        state = {
            **taken,
            "history": [m for m in own["history"] if m["epoch"] <= epoch],
            "ran": own.get("ran", {}),
            "sample": self.sample,
            "best_metric": own.get("best_metric"),
        }
        save_state(state, latest)
        before = flatten(own["config"]) if "config" in own else {}
        write_exploit(self.directory, self.keys, epoch=epoch, donor=donor, old=before,
                      new=self.flat, writer=self.writer, at=time.time())  # fmt: skip
        self.ran = {int(e): dict(r) for e, r in state["ran"].items()}
        self.best = state["best_metric"]
        self.just_resumed = True
        return state

    def exploited(self, donor: str, epoch: int) -> bool:
        """Whether this trial's last exploit took `donor`'s state at `epoch` (already done)."""
        exploits = trial_exploits(self.directory, self.trial_id)
        last = exploits[-1] if exploits else {}
        return (last.get("donor_trial_id"), last.get("epoch")) == (donor, epoch)

    def _finish_pending(self) -> None:
        """Wait for the epoch's files in flight, raising their write's error (a full disk)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write_row(self, metrics: Mapping[str, Any]) -> None:
        """The epoch's row (its metrics, keys and config) in a file of its own."""
        (row,) = epoch_records([metrics], self.flat, **self.keys)
        epoch = int(row["epoch"])
        write_epoch(row, epoch_path(self.epochs, epoch, self.writer))
