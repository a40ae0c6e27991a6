"""The one exception type for user errors (bad file, bad override, missing checkpoint)."""

import math


class PpganError(Exception):
    """A user error: `__main__` prints its one-line message and exits non-zero, no traceback."""


def require_nonnegative(value, key: str, hint: str = "") -> None:
    """A config number that must be finite and >= 0 (booleans, strings and None are refused);
    the error names `key` and adds `hint` (what 0 means, say)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise PpganError(f"{key}={value}: must be a finite number >= 0{hint}")
