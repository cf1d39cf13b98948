"""Columns through time: the same atomic column linked from frame to frame.

:func:`link_columns` links each frame's columns to the tracks seen in the
frames before by a linear assignment (Hungarian, scipy) on their distances,
with a maximum displacement in Angstrom; a column missing for up to
``memory`` frames (it faded, or the denoiser lost it) keeps its track. The
movie's table (:func:`track_rows`, :func:`read_tracks`) then gives each
column's position, LLR, class and integrated intensity against time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from napari_sbd.core.files import atomic_write
from napari_sbd.core.likelihood import TABLE_FIELDS

__all__ = ["TRACK_FIELDS", "UNITS", "link_columns", "read_tracks", "track_rows", "write_tracks"]

# linking defaults: a third of the distance between Pt columns (never a neighbour), and
# two frames for a column to fade and come back
MAX_DISPLACEMENT_A = 0.8
MEMORY_FRAMES = 2

# the movie's table: the per-frame table with the track each column belongs to
TRACK_FIELDS = ["track", *TABLE_FIELDS]

# the unit of every field (the names carry them too), written into the HDF5 table's attributes
UNITS = {"track": "id", "frame": "index", "y_nm": "nm", "x_nm": "nm", "position_error_pm": "pm",
         "row_px": "pixel", "col_px": "pixel", "sigma_a": "angstrom", "peak_counts": "counts/pixel",
         "contrast_counts": "counts/pixel", "intensity_counts_px": "counts",
         "llr": "nats/pixel", "class": "real|spurious|undecided"}


def link_columns(
    centres: Sequence[np.ndarray],
    pixel_size_pm: float,
    *,
    max_displacement_a: float = MAX_DISPLACEMENT_A,
    memory: int = MEMORY_FRAMES,
) -> list[np.ndarray]:
    """Give every column of every frame a track number; the same column keeps it.

    Parameters
    ----------
    centres : sequence of numpy.ndarray
        One (N_t, 2) array of row/col centres (pixels) per frame, in order.
    pixel_size_pm : float
        Pixel size, to read ``max_displacement_a`` in pixels.
    max_displacement_a : float
        Largest move of a column between the frames it is seen in, Angstrom
        (default 0.8: about a third of the distance between Pt columns, so a
        column is never linked to its neighbour).
    memory : int
        Frames a column may be missing and still keep its track.

    Returns
    -------
    list of numpy.ndarray
        Per frame, the (N_t,) int track numbers (0, 1, 2... in order of first appearance).
    """
    if not (pixel_size_pm > 0 and max_displacement_a > 0 and memory >= 0):
        raise ValueError("need pixel_size_pm > 0, max_displacement_a > 0 and memory >= 0")
    reach = max_displacement_a * 100.0 / pixel_size_pm
    last_pos = np.zeros((0, 2))
    last_seen = np.zeros(0, dtype=int)
    out: list[np.ndarray] = []
    for t, pts in enumerate(centres):
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        ids = np.full(len(pts), -1, dtype=int)
        live = np.flatnonzero(t - last_seen <= memory + 1)
        if len(live) and len(pts):
            dist = np.hypot(last_pos[live, None, 0] - pts[None, :, 0],
                            last_pos[live, None, 1] - pts[None, :, 1])
            # pairs beyond reach are forbidden: a cost no allowed assignment can beat
            cost = np.where(dist <= reach, dist, reach * 1e3 + 1.0)
            rows, cols = linear_sum_assignment(cost)
            ok = dist[rows, cols] <= reach
            ids[cols[ok]] = live[rows[ok]]
        new = np.flatnonzero(ids < 0)
        ids[new] = np.arange(len(last_pos), len(last_pos) + len(new))
        last_pos = np.vstack([last_pos, pts[new]])
        last_seen = np.concatenate([last_seen, np.full(len(new), t)])
        last_pos[ids] = pts
        last_seen[ids] = t
        out.append(ids)
    return out


def track_rows(tables: Sequence[list[dict[str, Any]]], pixel_size_pm: float, **link: Any
               ) -> list[dict[str, Any]]:
    """Link per-frame column tables into the movie's table (one row per column and frame).

    Parameters
    ----------
    tables : sequence of list of dict
        Per frame, the rows of :meth:`~napari_sbd.core.analysis.FrameAnalysis.table`.
    pixel_size_pm : float
        Pixel size of the frames.
    **link
        Options of :func:`link_columns`.

    Returns
    -------
    list of dict
        Rows with :data:`TRACK_FIELDS`, sorted by track, then frame.
    """
    centres = [np.array([[r["row_px"], r["col_px"]] for r in rows], dtype=np.float64).reshape(-1, 2)
               for rows in tables]
    ids = link_columns(centres, pixel_size_pm, **link)
    out = [{"track": int(i), **row} for rows, frame_ids in zip(tables, ids)
           for row, i in zip(rows, frame_ids)]
    return sorted(out, key=lambda r: (r["track"], r["frame"]))


def write_tracks(path: str | Path, rows: list[dict[str, Any]]) -> list[Path]:
    """Write the movie's table as CSV and, where h5py is installed, HDF5 beside it.

    The HDF5 file (same name, ``.h5``) holds one structured dataset
    ``columns`` with a ``units`` attribute per field (:data:`UNITS`). Both
    are written atomically.

    Parameters
    ----------
    path : path-like
        The CSV file to write.
    rows : list of dict
        Rows with :data:`TRACK_FIELDS` (:func:`track_rows`).

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    from napari_sbd.core.analysis import write_columns_csv

    path = Path(path)
    written = [write_columns_csv(path, rows, TRACK_FIELDS)]
    try:
        import h5py
    except ImportError:  # the io extra is not installed: CSV only
        return written
    text = {"class"}
    dtype = [(f, h5py.string_dtype() if f in text else (np.int64 if f in ("track", "frame") else np.float64))
             for f in TRACK_FIELDS]
    table = np.array([tuple(r[f] for f in TRACK_FIELDS) for r in rows], dtype=dtype)

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as fh:
            ds = fh.create_dataset("columns", data=table)
            for f in TRACK_FIELDS:
                ds.attrs[f"units:{f}"] = UNITS[f]

    written.append(atomic_write(path.with_suffix(".h5"), write))
    return written


def read_tracks(path: str | Path) -> Any:
    """Read a movie's columns table (CSV) as a pandas DataFrame, one row per column and frame.

    One column's story in three lines::

        t = sbd.read_tracks("movie.zarr/columns.csv")
        one = t[t.track == 12]
        one.plot(x="frame", y=["llr", "intensity_counts_px"], subplots=True)
    """
    import pandas as pd

    return pd.read_csv(path)
