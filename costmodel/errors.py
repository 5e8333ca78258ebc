"""Errors a user can fix. The command lines print them on one line and exit with status 2."""
from __future__ import annotations

from collections.abc import Iterable


class UserError(ValueError):
    """Bad input from a user (unknown name, missing file, impossible size): say what and what to do."""


def unknown_choice(what: str, name: object, choices: Iterable[str]) -> UserError:
    """An error for a name that is not one of `choices`, listing the valid ones."""
    return UserError(f"unknown {what} {name!r}; valid choices: {', '.join(sorted(choices))}")
