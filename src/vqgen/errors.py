"""Errors that the command line reports as one line (no traceback)."""


class VqgenError(Exception):
    """A user-facing error: bad input, a missing file, an impossible request."""


class ConfigError(VqgenError, ValueError):
    """A bad config: unknown field, wrong type or invalid value (the message names the field, and
    ``field`` holds its name when one field is to blame)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class ConfigWarning(UserWarning):
    """A config that loads but deserves a look (e.g. fields missing from a saved file: defaults used).
    The command line prints it as one line, ``vqgen: warning: ...``."""
