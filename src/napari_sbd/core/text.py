"""Wording shared by the library's messages, the command-line tools and the docks."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """Return ``n`` with its noun in the right number: "1 frame", "3 frames".

    Parameters
    ----------
    n : int
        How many.
    noun : str
        The singular.
    plural : str, optional
        The plural where it is not ``noun + "s"``.
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def verb(n: int, singular: str, plural: str) -> str:
    """Return the verb that agrees with ``n`` things: ``verb(1, "has", "have")`` -> "has"."""
    return singular if n == 1 else plural
