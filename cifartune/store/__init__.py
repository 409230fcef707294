"""The study's files: where they live in a results directory, how tables and checkpoints are
written and read back, a trial's own files, study.json, the Optuna mirror, what a study spent
against its budget, population-based training's lineage, and the Delta tables finished trials
are committed to.

May import :mod:`cifartune.config`, :mod:`cifartune.errors`, :mod:`cifartune.storage`, pandas,
pyarrow, deltalake and Optuna; torch only in :mod:`.checkpoints` and :mod:`.trial_writer` (the views
never import those); never the engine, the driver, views or Ray.
"""
