"""The test-set scoring of a study's best configurations, once its search is over."""

from __future__ import annotations

import logging

import pandas as pd

from cifartune.config.resolved import ResolvedSpec
from cifartune.engine.data import CifarArrays
from cifartune.store.checkpoints import load_state
from cifartune.store.directory import StudyDirectory

log = logging.getLogger(__name__)


def score_best_on_test(
    resolved: ResolvedSpec, arrays: CifarArrays, trials: pd.DataFrame, study: StudyDirectory
) -> pd.DataFrame:
    """Score each repeat of the spec's ``test_best`` best configurations once on the test set, from
    its best-validation checkpoint (``best.pt``, saved whenever the metric improved). Ranking
    uses the mean over repeats."""
    from cifartune.engine.device import resolve_device
    from cifartune.engine.loop import score_on_test
    from cifartune.engine.splits import device_data

    spec = resolved.spec
    if spec.test_best == 0:
        return pd.DataFrame()
    scored = trials.dropna(subset=["best_metric"])
    if scored.empty:
        return pd.DataFrame()
    means = scored.groupby("group")["best_metric"].mean()
    best_groups = means.sort_values(ascending=resolved.mode == "min").index[: spec.test_best]
    rows = []
    device = resolve_device("auto")
    for rank, group in enumerate(best_groups, start=1):
        for trial in scored[scored["group"] == group].itertuples():
            path = study.best_checkpoint(str(trial.trial_id))
            if not path.is_file():
                log.warning("trial %s has no best checkpoint; not scored on test", trial.trial_id)
                continue
            best = load_state(path, device)
            config = resolved.trial_config(best["sample"]).model_copy(
                update={"device": device.type}
            )
            data = device_data(arrays, config)  # once per data split, not once per trial
            rows.append(
                {
                    "study": spec.name,
                    "rank": rank,
                    "group": group,
                    "trial_id": trial.trial_id,
                    "seed": trial.seed,
                    "variant": trial.variant,
                    "epoch": best["epoch"],
                    spec.metric: best["metric"],
                    **score_on_test(config, data, best),
                }
            )
    return pd.DataFrame(rows)
