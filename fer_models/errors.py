"""The one family of deliberate user errors.

Everything that rejects what a user gave (a file, a flag, a key, a value) raises a `UserError`
(or a subclass). The CLI prints exactly these without a traceback and exits 2; any other
exception is a bug: traceback and exit 1. It lives in `fer_models`, the bottom layer, so that
`search_spaces` and `runners` raise the same family without importing upwards.

`UserError` subclasses `ValueError` so that code (and pydantic validators) treating bad values
as `ValueError` keeps working.
"""
from __future__ import annotations

from typing import Any, Optional


class UserError(ValueError):
    """A problem with what the user gave, named in the message: printed without a traceback, exit 2."""


class UserPathError(UserError, FileNotFoundError):
    """A path the user named does not exist or is not what was expected (a folder for a file, ...)."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_lines(exc: Any, source: Optional[str] = None, prefix: str = "") -> list:
    """One line per field of a pydantic `ValidationError`: `SOURCE: FIELD: VALUE: what is allowed`.

    Replaces pydantic's multi-line block (with its "For further information visit" links) by
    what a user can act on: where (file), which key (dotted path), the value given, the rule.
    """
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        loc = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        msg = str(err.get("msg", "invalid"))
        for strip in ("Value error, ", "Assertion failed, "):
            if msg.startswith(strip):
                msg = msg[len(strip):]
        where = f"{source}: " if source else ""
        if err.get("type") == "missing":
            lines.append(f"{where}{loc}: missing (required)")
        elif err.get("type") == "extra_forbidden":
            lines.append(f"{where}{loc}: unknown key (value {_short(err.get('input'))})")
        elif loc:
            lines.append(f"{where}{loc}: {_short(err.get('input'))}: {msg}")
        else:
            lines.append(f"{where}{msg}")
    return lines


def user_error_from_validation(exc: Any, source: Optional[str] = None, prefix: str = "") -> UserError:
    """A `UserError` whose message is `validation_lines` joined by newlines."""
    return UserError("\n".join(validation_lines(exc, source, prefix)))
