"""Files written so that nothing is ever half-written: the one atomic write every module uses.

No torch or Qt here: the readers, the simulator and the batch command import
it without the cost of the network code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, write: Any) -> Path:
    """Write a file atomically: ``write(tmp_path)``, fsync, then rename over ``path``.

    A reader never sees a half-written file, and an interrupted write leaves
    the previous file (if any) intact.

    Parameters
    ----------
    path : path-like
        Destination.
    write : callable
        Called with the temporary path (same directory) to produce the file.

    Returns
    -------
    pathlib.Path
        The destination.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); give it the usual permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
