"""The one exception type kdx raises for bad input: the message names the cause and the fix."""


class KdxError(Exception):
    """Bad input or state a user can fix; the CLI prints the message without a traceback."""
