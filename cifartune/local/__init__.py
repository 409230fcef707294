"""One configuration trained in this process, without Ray (``cifartune train``): a trial
config, or a study trial's schedule replayed from its results directory (``--replay``).

May import :mod:`cifartune.config`, :mod:`cifartune.engine` and :mod:`cifartune.store`;
never Ray, Optuna, the study driver, views or the CLI.
"""
