"""The one family of deliberate user errors.

Everything that rejects what a user gave (a file, a flag, a key, a value) raises a `UserError`
(or a subclass). The CLI prints exactly these without a traceback and exits 2; any other
exception is a bug: traceback and exit 1. It lives in `fer_models`, the bottom layer, so that
`search_spaces` and `runners` raise the same family without importing upwards.

`UserError` subclasses `ValueError` so that code (and pydantic validators) treating bad values
as `ValueError` keeps working.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Optional


class UserError(ValueError):
    """A problem with what the user gave, named in the message: printed without a traceback, exit 2."""


class UserPathError(UserError, FileNotFoundError):
    """A path the user named does not exist or is not what was expected (a folder for a file, ...)."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_lines(exc: Any, source: Optional[str] = None, prefix: str = "",
                     known: Optional[Iterable[str]] = None) -> list:
    """One line per field of a pydantic `ValidationError`: `SOURCE: FIELD: VALUE: what is allowed`.

    Replaces pydantic's multi-line block (with its "For further information visit" links) by
    what a user can act on: where (file), which key (dotted path), the value given, the rule.
    `known`: the valid top-level keys, named for an unknown key (the closest, or all of them).
    """
    known = list(known) if known is not None else None
    lines = []
    for err in exc.errors(include_url=False):
        parts = [p for p in err.get("loc", ()) if p != "__root__"]
        loc = f"{prefix}{'.'.join(str(p) for p in parts)}" if parts else prefix.rstrip(".")
        msg = str(err.get("msg", "invalid"))
        for strip in ("Value error, ", "Assertion failed, "):
            if msg.startswith(strip):
                msg = msg[len(strip):]
        where = f"{source}: " if source else ""
        if err.get("type") == "missing":
            lines.append(f"{where}{loc}: missing (required)")
        elif err.get("type") == "extra_forbidden":
            hint = ""
            if known and len(parts) == 1:
                close = difflib.get_close_matches(str(parts[0]), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(known)}"
            lines.append(f"{where}{loc}: unknown key (value {_short(err.get('input'))}){hint}")
        elif parts:
            lines.append(f"{where}{loc}: {_short(err.get('input'))}: {msg}")
        else:  # a check across fields (a model validator): its message names them, no value to show
            lines.append(f"{where}{loc + ': ' if loc else ''}{msg}")
    return lines


def user_error_from_validation(exc: Any, source: Optional[str] = None, prefix: str = "",
                               known: Optional[Iterable[str]] = None) -> UserError:
    """A `UserError` whose message is `validation_lines` joined by newlines."""
    return UserError("\n".join(validation_lines(exc, source, prefix, known)))
