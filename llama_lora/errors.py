"""Errors the user can fix; the entry scripts turn them into a message and exit status 2."""


class DataError(ValueError):
    """Unusable input data; the message names the file, line or row, the field and what was expected."""
