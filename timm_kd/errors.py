"""The one exception type users see for bad input.

Every message is a single line that names the problem and how to fix it; every command line entry
point prints it as ``error: <message>`` and exits with status 2 instead of a traceback
(`one_line_errors`).
"""

import contextlib
import sys
from typing import Iterator, Optional


class KDError(ValueError):
    """Bad input to timm-kd (unknown loss, missing or unsafe checkpoint, class mismatch, ...)."""


class NonFiniteError(KDError):
    """Training produced a NaN or infinite loss or weight; nothing non-finite was saved."""


class Interrupted(KDError):
    """SIGTERM/SIGINT stopped the run after a recovery
    checkpoint; exits with 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


def flat(e: BaseException, limit: Optional[int] = None) -> str:
    """An exception's message on one line (its whitespace collapsed), cut at `limit` characters:
    what a one-line error quotes of the exception behind it."""
    return ' '.join(str(e).split())[:limit]


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Around an entry point: a `KDError` is printed as one line and exits 2
    (an `Interrupted` run exits 128 + its signal) instead of a traceback."""
    try:
        yield
    except Interrupted as e:
        print(f'interrupted: {e}', file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except KDError as e:
        print(f'error: {_last_line(str(e))}', file=sys.stderr)
        raise SystemExit(2) from None


def _last_line(message: str) -> str:
    """A KDError raised in a DataLoader worker reaches the main process wrapped in the worker's
    traceback: its own one line is the last."""
    lines = [line for line in message.splitlines() if line.strip()]
    last = lines[-1] if lines else message
    return last.split('KDError: ', 1)[1] if 'KDError: ' in last else last


def hub_problem(e: Exception) -> str:
    """What went wrong talking to the Hub, and the fix, in a few words."""
    status = getattr(getattr(e, 'response', None), 'status_code', None)
    if type(e).__name__ == 'OfflineModeIsEnabled':
        return 'offline mode is on; unset HF_HUB_OFFLINE and retry'
    if type(e).__name__ == 'LocalEntryNotFoundError':
        return (
            'not in the local Hugging Face cache, and the Hub is unreachable or HF_HUB_OFFLINE=1; '
            'download it once with network access'
        )
    if status == 404 or type(e).__name__ in ('RepositoryNotFoundError', 'RevisionNotFoundError'):
        return 'no such repository or revision on the Hub; check the name and @revision'
    if status in (401, 403):
        return (
            f'HTTP {status}: not authorized; log in with `hf auth login` or set HF_TOKEN to a '
            f'token with write access'
        )
    return f'{type(e).__name__}: {flat(e, 120)}; check the network and the repo id'
