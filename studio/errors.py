"""User-facing errors.

Anything a user can cause (bad flag, missing file, wrong image size) raises a subclass of
`StudioError`. The CLI and the app print its message as one line; a traceback means a bug.
"""


class StudioError(Exception):
    """An error caused by user input, reported as one readable line."""


class ConfigError(StudioError):
    """Unknown family, preset, override key or an invalid value."""


class CheckpointError(StudioError):
    """A checkpoint is missing, incomplete or corrupt."""


class DataError(StudioError):
    """A dataset cannot be found or read, or holds data of the wrong shape."""


class MetricError(StudioError):
    """A metric cannot be computed: unusable samples or reference, too few images, no classifier."""
