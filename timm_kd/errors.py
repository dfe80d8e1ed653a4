"""The one exception type users see for bad input.

Every message is a single line that names the problem and how to fix it; `timm-kd-train` prints it as
``error: <message>`` and exits with status 2 instead of a traceback.
"""


class KDError(ValueError):
    """Bad input to timm-kd (unknown loss, missing or unsafe checkpoint, class mismatch, ...)."""
