"""The data errors of the user-error family (`fer_models.errors`): printed without a traceback, exit 2."""
from __future__ import annotations

from fer_models.errors import UserError, UserPathError


class NotAFolderError(UserPathError, NotADirectoryError):
    """A path the user named is a file where a folder was expected."""


class OutputExistsError(UserError, FileExistsError):
    """An output folder the user named exists and is not empty."""


__all__ = ["UserError", "UserPathError", "NotAFolderError", "OutputExistsError"]
