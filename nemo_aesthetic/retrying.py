"""Retry a worker's I/O that failed for a reason that may pass (a dropped connection, a timeout).

At LAION scale a job reads and writes ~400,000 objects over hours; one object store hiccup would
otherwise fail its task and, with it, the whole computation. Each read of a shard's metadata and each
atomic write of a shard's file is retried here, inside its task, so this holds whatever scheduler
runs it (a user's own ``compute()`` included). Errors that will not pass (a missing file, a denied
permission, a corrupt file) are raised at once.
"""
from __future__ import annotations

import errno
import logging
import time
from typing import Callable, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Tries of one read or write (the first included).
ATTEMPTS = 3
#: Seconds before the second try; doubled before each further one.
FIRST_DELAY = 0.5

_PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)
_PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG}


def is_transient(exc: BaseException) -> bool:
    """An I/O error that may not happen again: an OSError (connections, timeouts, an object store's
    5xx as fsspec raises them) other than those that say the path itself is wrong."""
    return (isinstance(exc, (OSError, TimeoutError)) and not isinstance(exc, _PERMANENT)
            and getattr(exc, "errno", None) not in _PERMANENT_ERRNOS)


def with_retries(func: Callable[..., T], *args, what: str = "I/O", attempts: int = ATTEMPTS, **kwargs) -> T:
    """``func(*args, **kwargs)``, tried up to ``attempts`` times while it fails transiently."""
    delay = FIRST_DELAY
    for attempt in range(1, attempts + 1):
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            logger.warning("%s failed (%s: %s); try %d of %d in %.1f s", what, type(exc).__name__, exc,
                           attempt + 1, attempts, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
