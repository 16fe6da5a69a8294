"""User-facing errors.

Anything raised as an ``EvommError`` is a mistake the user can fix (a config value, a path,
a recipe field). The CLI and ``train.py`` print its message on one line and exit with status 2
instead of showing a traceback, so every message must say what to change.
"""


class EvommError(Exception):
    """Base class for errors that the user fixes by changing their input."""


class ConfigError(EvommError, ValueError):
    """A config or recipe value is missing, of the wrong type, or out of range."""


class UnknownNameError(ConfigError, KeyError):
    """A name (adapter, method, task, optimizer, ...) that is not registered."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class ModelLoadError(EvommError):
    """A model id or path that cannot be loaded."""


class IncompatibleModelsError(EvommError):
    """Source models whose architectures or tensor shapes do not line up."""
