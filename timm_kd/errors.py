"""The one exception type users see for bad input.

Every message is a single line that names the problem and how to fix it; `timm-kd-train` prints it as
``error: <message>`` and exits with status 2 instead of a traceback.
"""


class KDError(ValueError):
    """Bad input to timm-kd (unknown loss, missing or unsafe checkpoint, class mismatch, ...)."""


class NonFiniteError(KDError):
    """Training produced a NaN or infinite loss or weight; nothing non-finite was saved."""


class Interrupted(KDError):
    """SIGTERM/SIGINT stopped the run after a recovery checkpoint; exits with 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
