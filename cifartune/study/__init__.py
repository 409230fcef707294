"""The study driver: the only layer that imports Ray. It claims a results directory, starts or
joins Ray, translates the spec into Ray Tune's search space, searcher and scheduler, runs the
trainable in trial processes, keeps the trial table and Optuna mirror from the driver's
callback, enforces the study's budget, runs population-based training through the results
directory, scores the best configurations on the test set, and stops cleanly on signals; also
``cifartune submit`` (Ray Jobs). Training without Ray (``cifartune train``) is
:mod:`cifartune.local`.

May import every layer below it: :mod:`cifartune.config`, :mod:`cifartune.engine`,
:mod:`cifartune.store`; never views or the CLI.
"""
