"""Error types. The CLI turns every :class:`SweepError` into one line and exit code 2.

Messages follow one template: the constraint, then the value, then where it came from, e.g.
``pruning ratio must be in (0, 1), but got ratio=1.5 (search_spaces/x.yaml: methods.magnitude.ratio)``.
"""


class SweepError(Exception):
    """Root of every error caused by user input or the environment (not by a bug)."""

    exit_code = 2


class ConfigError(SweepError):
    """A configuration value is malformed, unknown or out of range."""


class RegistryError(ConfigError):
    """An unknown or duplicate name in one of the registries (models, datasets, methods)."""


class DataError(SweepError):
    """A dataset cannot be found or read."""


class BudgetError(SweepError):
    """No trial satisfies the requested budget."""


class SweepDirError(SweepError):
    """A folder is not a sweep folder, or a sweep folder cannot be used as asked."""


class TrialFailure(Exception):
    """A trial could not finish (diverged, out of memory, untraceable); becomes a `failed` row."""
