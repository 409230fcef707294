"""A trial's own files besides its epoch rows: checkpoints (torch), the error that ended it for
good, the driver's mark that Ray reported it complete, and the moves that set aside the files of
trials a resumed study no longer knows.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifartune.storage import Location
from cifartune.store.epochs import epoch_files, trial_epochs_dir, withdraw, withdrawn_dir
from cifartune.store.layout import (
    CHECKPOINTS_DIR,
    EPOCHS_DIR,
    FAILED,
    FINISHED_DIR,
    ORPHANED_DIR,
    TRIALS_DIR,
    checkpoint_dir,
)
from cifartune.store.trial_states import trial_states_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def save_state(state: Mapping[str, Any], path: Path | Location) -> None:
    # Serialized in memory first: a full disk then fails the file write with the OSError the
    # CLI reports ("No space left on device"), not inside torch's zip writer.
    import torch  # here, not at the top: the command a user starts imports no torch (supervise)

    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    Location.of(path).write_bytes(buffer.getbuffer())


def load_state(path: Path | Location, device: torch.device | str = "cpu") -> dict[str, Any]:
    # Our own files: model/optimizer tensors plus plain Python metadata and RNG byte tensors.
    import torch

    payload = Location.of(path).open_for_reading()
    state: dict[str, Any] = torch.load(payload, map_location=device, weights_only=False)
    return state


def better(value: Any, than: float | None, mode: str) -> bool:
    """Whether `value` improves on `than` in direction `mode`; non-finite values never do."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return than is None or (value > than if mode == "max" else value < than)


def record_failure(directory: Location, trial_id: str, error: str) -> None:
    """Keep the error that ended a trial for good (no retry can fix it): the driver reads it
    back for the trial table, also after a resume."""
    (checkpoint_dir(directory, trial_id) / FAILED).write_text(error)


def read_failure(directory: Location, trial_id: str) -> str | None:
    path = checkpoint_dir(directory, trial_id) / FAILED
    return path.read_text() if path.is_file() else None


def record_finished(directory: Location, trial_id: str) -> None:
    """Mark a trial Ray reported complete (the driver writes it, one empty file per trial): what
    a resume must know, kept apart from the trial table so that the table can be rewritten at
    a bounded rate."""
    (directory / FINISHED_DIR / trial_id).write_bytes(b"")


def finished_trials(directory: Location) -> set[str]:
    return {f.name for f in (directory / FINISHED_DIR).files()}


def discard_trial_files(directory: Location, trial_id: str) -> None:
    """Start a trial over from scratch: its epoch rows withdrawn (kept in ``withdrawn/``, out
    of the results), its checkpoints gone."""
    folder = trial_epochs_dir(directory, trial_id)
    withdraw(epoch_files(folder).values(), withdrawn_dir(directory, trial_id))
    checkpoint_dir(directory, trial_id).rmtree()


def set_aside_orphans(directory: Location, known: set[str]) -> list[str]:
    """Move the files of trials Ray does not know into ``orphaned/``: trials started after the
    last experiment snapshot of a driver that was killed, which the resumed study re-creates
    under new ids. Kept, not deleted (a failure loses nothing written), but out of the results."""
    found = {d.name for d in (directory / EPOCHS_DIR).subdirs()}
    found |= {d.name for d in (directory / TRIALS_DIR).subdirs()}
    found |= {d.name for d in (directory / CHECKPOINTS_DIR).subdirs()}
    orphans = sorted(found - known)
    for trial_id in orphans:
        files = (
            trial_epochs_dir(directory, trial_id),
            trial_states_dir(directory, trial_id),
            checkpoint_dir(directory, trial_id),
            directory / FINISHED_DIR / trial_id,
        )
        for source in files:
            if source.exists():
                relative = source.path.removeprefix(directory.path + "/")
                source.move_to(directory / ORPHANED_DIR / relative)
        log.warning(
            "trial %s is not part of the resumed study; its files are in %s/",
            trial_id,
            ORPHANED_DIR,
            TRIALS_DIR,
        )
    return orphans
