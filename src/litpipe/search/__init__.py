"""Hyperparameter search: the space, the shared Optuna study, the trial, the outputs."""
