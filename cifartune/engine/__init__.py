"""The engine: Ray-free training of one configuration: data loading and splits, batched
augmentation, the seed network, optimizers and schedules, the training loop, what a run really
ran with, and the per-process device copy of the data.

May import :mod:`cifartune.config`, :mod:`cifartune.errors`, :mod:`cifartune.storage`, torch
and torchvision; never the study's files, the study driver, views, Ray or Optuna.
"""
