"""The exception types that end a run with one ``error: <message>`` line instead of a traceback."""


class UserError(ValueError):
    """Bad input from the user (config key or value, command-line flag, missing file or folder).

    The message is one line that says what is wrong and how to fix it. ``train.py`` prints it as
    ``error: <message>`` on stderr and exits with status 2 (no traceback). It subclasses
    ``ValueError`` so code written for Dassl that catches ``ValueError`` keeps working.
    """


class MissingFileError(UserError, FileNotFoundError):
    """An expected file or folder is not there: a ``UserError`` that is also a ``FileNotFoundError`` (what Dassl
    raises in these places), so both kinds of caller keep working."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite (``TrainerBase.detect_anomaly``).

    Raised before the backward pass, so the weights, the optimizer state and every checkpoint already written
    stay as they were. ``train.py`` prints the one-line message (epoch, batch, loss terms) and exits with status 3.
    """
