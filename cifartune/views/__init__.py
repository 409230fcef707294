"""Views of a study's files: the terminal status view, optuna-dashboard, and the reports.

They read the results directory only (Parquet and JSON), so they work during a study or after
it, on any machine. May import :mod:`cifartune.config` and :mod:`cifartune.store`; never torch,
Ray, the engine or the driver.
"""
