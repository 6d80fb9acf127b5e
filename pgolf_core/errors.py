"""User-facing errors.

A `PgolfError` is something the user can fix (a bad recipe, a corrupt shard, a missing
optional package). The CLI prints its message and exits with code 2, without a traceback;
anything else is a bug in pgolf and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PgolfError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class RecipeError(PgolfError):
    """A recipe (TOML file or command-line override) is invalid."""


class DataError(PgolfError):
    """A data file (shard, tokenizer, text) is missing or malformed."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for the nearest valid choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f' (did you mean "{close[0]}"?)' if close else ""
