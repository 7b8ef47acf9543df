"""The one exception type the CLI turns into a clear message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: the message names the file or value and says how to fix it."""
