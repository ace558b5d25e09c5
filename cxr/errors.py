"""Errors raised on bad input; each message names the file, row or key at fault."""


class DataError(ValueError):
    """Input data that cannot be used as given (missing file, bad label, empty split, ...)."""


def list_problems(problems: list[str], limit: int = 20) -> str:
    """Join problem lines for an error message, at most ``limit`` of them."""
    shown = "\n  ".join(problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"\n  {shown}{more}"


class RequestError(ValueError):
    """A malformed prediction request: one line for the client, which never repeats its data."""
