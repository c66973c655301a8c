"""Failures the user can act on: the CLI prints the message on one line instead of a traceback."""


class ConfigError(Exception):
    """params.yaml is unusable (exit code 2, before any work)."""


class StageError(Exception):
    """A stage found a problem in its inputs or results (exit code 1, outputs untouched)."""
