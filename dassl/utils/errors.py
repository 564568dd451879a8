"""The one exception type for bad user input."""


class UserError(ValueError):
    """Bad input from the user (config key or value, command-line flag, missing file or folder).

    The message is one line that says what is wrong and how to fix it. ``train.py`` prints it as
    ``error: <message>`` on stderr and exits with status 2 (no traceback). It subclasses
    ``ValueError`` so code written for Dassl that catches ``ValueError`` keeps working.
    """
