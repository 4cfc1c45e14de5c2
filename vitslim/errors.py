"""Errors that mean the user asked for something impossible (exit code 2, no traceback)."""


class UserError(Exception):
    """A mistake in the user's input: bad model name, checkpoint, data folder or option.

    The CLI prints the message on one line and exits with code 2.
    """
