"""The exception a user's bad input raises: one ``error: <message>`` line from ``train.py``, never a traceback.

On our engine these are the engine's own classes (``dassl.utils.errors``), so the engine, ``train.py`` and the
project raise and catch one class. On the real Dassl.pytorch, which has no such classes, they are defined here with
the same meaning.
"""

try:
    from dassl.utils.errors import MissingFileError, UserError
except ImportError:  # the real Dassl.pytorch is on the path

    class UserError(ValueError):  # type: ignore[no-redef]
        """Bad input from the user; the message is one line that says what is wrong and how to fix it."""

    class MissingFileError(UserError, FileNotFoundError):  # type: ignore[no-redef]
        """An expected file or folder is not there."""


__all__ = ["MissingFileError", "UserError"]
