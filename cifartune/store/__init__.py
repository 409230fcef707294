"""The study's files: where they live in a results directory, how tables and checkpoints are
written and read back, a trial's own files, study.json, the Optuna mirror, what a study spent
against its budget, and population-based training's lineage.

May import :mod:`cifartune.config`, :mod:`cifartune.errors`, :mod:`cifartune.storage`, pandas,
pyarrow and Optuna; torch only in :mod:`.checkpoints` and :mod:`.trial_writer` (the views
never import those); never the engine, the driver, views or Ray.
"""
