"""Errors the user can fix; the entry scripts turn them into a message and exit status 2."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """A flag, folder or model that cannot be used as given; the message says what to do instead."""


class DataError(UsageError):
    """Unusable input data; the message names the file, line or row, the field and what was expected."""


# what a user can do about the filesystem faults a run meets
_OS_ERROR_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or choose another folder",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another folder",
    errno.EROFS: "a read-only file system: choose another folder",
    errno.EACCES: "no permission to write there: choose another folder or fix its permissions",
    errno.EPERM: "no permission to write there: choose another folder or fix its permissions",
    errno.ENOTDIR: "a file stands where a folder is expected: choose another folder",
    errno.EISDIR: "a folder stands where a file is expected",
}


def describe_os_error(err: OSError, where: object = None) -> str:
    """One line for a filesystem fault: the path (or, when the error names none, `where` it was writing), what the
    system said, and what to do about it."""
    paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None) or (where and str(where))
    what = err.strerror or str(err)
    advice = _OS_ERROR_ADVICE.get(err.errno)
    return f"{paths + ': ' if paths else ''}{what}" + (f" ({advice})" if advice else "")


def exit_status(action: Callable[[], int]) -> int:
    """Run a command's `action` and return its exit status; input it cannot use (a UsageError, or an OSError met
    before a run folder is open: later faults are the run's failure record) is one "error:" line and status 2."""
    try:
        return action()
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
