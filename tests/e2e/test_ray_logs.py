"""Ray's own warnings reach the user as one line each (e.g. that no node can hold a trial):
nothing is silenced wholesale, tracebacks of Ray internals stay in the trials' error files."""

import logging

from cifartune.study.runtime import OneLineRayLogs


def _record(message, level=logging.WARNING, exc_info=None):
    return logging.LogRecord("ray.tune", level, __file__, 1, message, None, exc_info)


def test_a_ray_warning_is_kept_on_one_line_without_its_traceback():
    try:
        raise RuntimeError("inside Ray")
    except RuntimeError as exc:
        error = (RuntimeError, exc, exc.__traceback__)
    record = _record("Trial task failed for trial x\nTraceback (most recent call last):", 40, error)
    assert OneLineRayLogs().filter(record)
    assert record.getMessage() == "Trial task failed for trial x"
    assert record.exc_info is None and record.exc_text is None
    warning = _record("No trial resources are available for launching the task. Resources: 0 GPU")
    assert OneLineRayLogs().filter(warning)
    assert "No trial resources are available" in warning.getMessage()


def test_ray_advice_to_call_tuner_restore_is_dropped_for_cifartune_resume():
    record = _record("Experiment has been interrupted... Resume with: Tuner.restore(path=...)")
    assert not OneLineRayLogs().filter(record)


def test_rays_result_loader_complaint_is_dropped():
    # Our trials report through Parquet, not Ray's result files: the complaint is not news.
    assert not OneLineRayLogs().filter(_record("Failed to fetch metrics for 1 trial(s):\n"))
