"""The one exception type for user errors (bad file, bad override, missing checkpoint)."""


class PpganError(Exception):
    """A user error: `__main__` prints its one-line message and exits non-zero, no traceback."""
