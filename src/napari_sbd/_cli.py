"""What the three commands share: one line for an operating-system error."""

from __future__ import annotations

import errno

__all__ = ["os_error_message"]

_FIX = {
    errno.ENOSPC: "free some space (or choose another output folder)",
    errno.EDQUOT: "free some space within your quota (or choose another output folder)",
    errno.EACCES: "choose a folder you may write to, or change its permissions",
    errno.EPERM: "choose a folder you may write to, or change its permissions",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.ENOENT: "check that the path exists",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "the path is a folder: give a file name",
}


def os_error_message(prog: str, exc: OSError, then: str) -> str:
    """``prog: error: <file>: <what>; <fix>; <then>`` for an OSError.

    Parameters
    ----------
    prog : str
        The command's name.
    exc : OSError
        The error.
    then : str
        What to do after the fix (e.g. how to resume).

    Returns
    -------
    str
        One line, no traceback.
    """
    what = exc.strerror or str(exc) or type(exc).__name__
    where = f"{exc.filename}: " if exc.filename else ""
    fix = _FIX.get(exc.errno or -1, "check the path and the disk")
    return f"{prog}: error: {where}{what}; {fix}; {then}"


def number(kind: type, *, above: float | None = None, at_least: float | None = None,
           below: float | None = None, unit: str = ""):
    """Return an argparse ``type`` that parses ``kind`` and checks its bounds, naming them when it fails.

    Parameters
    ----------
    kind : type
        ``int`` or ``float``.
    above, at_least, below : float, optional
        Exclusive lower, inclusive lower and exclusive upper bounds.
    unit : str
        Unit for the message.

    Returns
    -------
    callable
        str -> number, raising ``argparse.ArgumentTypeError``.
    """
    import argparse
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        bad = (not math.isfinite(value)
               or (above is not None and not value > above)
               or (at_least is not None and not value >= at_least)
               or (below is not None and not value < below))
        if bad:
            parts = [f"> {above:g}" if above is not None else "",
                     f">= {at_least:g}" if at_least is not None else "",
                     f"< {below:g}" if below is not None else ""]
            need = " and ".join(p for p in parts if p)
            unit_s = f" {unit}" if unit else ""
            raise argparse.ArgumentTypeError(f"{text} is out of range: need {need}{unit_s}")
        return value

    return parse
