"""How another library's exception becomes part of one of our one-line errors."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type's name when the message is empty: libraries put hints,
    candidates and tracebacks after the reason, which a one-line error cannot carry."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
