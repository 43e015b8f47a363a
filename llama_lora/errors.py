"""Errors the user can fix; the entry scripts turn them into a message and exit status 2."""


class UsageError(ValueError):
    """A flag, folder or model that cannot be used as given; the message says what to do instead."""


class DataError(UsageError):
    """Unusable input data; the message names the file, line or row, the field and what was expected."""
