"""Small helpers for the reports' sentences."""

from __future__ import annotations


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """'1 class', '2 classes': the count with the noun in the form it takes."""
    return f"{count} {singular if count == 1 else plural_form or singular + 's'}"
