"""The one exception type kdx raises for bad input: the message names the cause and the fix."""


class KdxError(Exception):
    """Bad input or state a user can fix; the CLI prints the message without a traceback."""


class DiskFullError(KdxError):
    """A file a full disk (or quota) kept from being written (kdx.io): a study stops at the first one, since
    every later write would fail too."""


def first_line(e: BaseException, limit: int = 300, empty: str = "") -> str:
    """The first line of an exception's message, cut to `limit` characters (`empty` when it has none): what
    a one-line KdxError quotes of the library error behind it."""
    text = str(e)
    return text.splitlines()[0][:limit] if text.strip() else empty
