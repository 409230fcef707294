"""The config layer: the typed trial configuration, study specs, their search-space
distributions and YAML loading, and the spec resolved once for everything downstream.

Bottom layer: imports nothing of cifartune but :mod:`cifartune.errors`, and no torch, Ray,
Optuna or pyarrow (``cifartune validate`` answers without them).
"""
