"""One frame's analysis: columns, their likelihood ratios, the map and the table.

The Columns dock and ``napari-sbd-denoise --columns`` both call
:func:`analyse_frame`, so a frame gives the same columns, LLRs and table rows
in the GUI and in a batch job; :func:`write_columns_csv` writes the table
both export.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_sbd.core.columns import Columns, LatticeNotFound, detect_columns
from napari_sbd.core.files import atomic_write
from napari_sbd.core.likelihood import (
    DEFAULT_RADIUS_A,
    TABLE_FIELDS,
    column_log_likelihood_ratios,
    columns_table,
    likelihood_map,
    llr_classes,
)

__all__ = ["FrameAnalysis", "analyse_frame", "iter_analyse", "write_columns_csv"]


@dataclass
class FrameAnalysis:
    """The columns of one frame and how well the raw counts support each.

    Attributes
    ----------
    frame : int
        Frame index in its movie.
    pixel_size_pm : float
        Pixel size the positions are converted with.
    columns : Columns
        The detected columns.
    llr : numpy.ndarray
        Per-column log-likelihood ratio (nats per pixel); NaN where it could
        not be computed (see ``llr_error``).
    map : numpy.ndarray
        The LLR painted on each column's disc, NaN elsewhere (frame shape).
    llr_error : str or None
        Why the LLRs are NaN (no vacuum in the frame, raw data not counts), if they are.
    no_lattice : str or None
        Why no column was searched for (the frame shows no lattice), if so.
    """

    frame: int
    pixel_size_pm: float
    columns: Columns
    llr: np.ndarray
    map: np.ndarray
    llr_error: str | None = None
    no_lattice: str | None = None

    def counts(self) -> tuple[int, int, int]:
        """Return the (real, spurious, undecided) counts by the papers' thresholds."""
        return llr_classes(self.llr)

    def table(self) -> list[dict[str, object]]:
        """Return one row per column in physical units (:func:`~napari_sbd.core.likelihood.columns_table`)."""
        return columns_table(self.columns, self.llr, self.frame, self.pixel_size_pm)


def analyse_frame(
    raw: np.ndarray,
    denoised: np.ndarray,
    pixel_size_pm: float,
    *,
    frame: int = 0,
    vacuum_level: float | None = None,
    radius_a: float = DEFAULT_RADIUS_A,
    detect: dict[str, Any] | None = None,
    strict: bool = True,
) -> FrameAnalysis:
    """Detect the columns of a denoised frame and test each against the raw counts.

    Parameters
    ----------
    raw : numpy.ndarray
        The noisy frame in counts (H, W).
    denoised : numpy.ndarray
        Its denoised version (H, W).
    pixel_size_pm : float
        Pixel size in picometres.
    frame : int
        Frame index, for the table.
    vacuum_level : float, optional
        Vacuum counts per pixel; found in the denoised frame when omitted.
    radius_a : float
        Radius in Angstrom of the disc each column's LLR is computed on.
    detect : dict, optional
        Options of :func:`~napari_sbd.core.columns.detect_columns`.
    strict : bool
        Raise when the LLRs cannot be computed (True: the dock shows the
        message), or leave them NaN and say why in ``llr_error`` (False: a
        batch job keeps its columns).

    Returns
    -------
    FrameAnalysis
        A frame without a lattice (a blank or vacuum frame in a movie) gives
        no columns and says why in ``no_lattice``: a movie's analysis goes on.

    Raises
    ------
    ValueError
        Bad input, or (``strict``) no vacuum to compare with / raw data not in counts.
    """
    h, w = denoised.shape
    try:
        cols = detect_columns(denoised, pixel_size_pm, **(detect or {}))
    except LatticeNotFound as exc:
        return FrameAnalysis(int(frame), float(pixel_size_pm), Columns.empty(pixel_size_pm),
                             np.zeros(0), np.full((h, w), np.nan, np.float32), no_lattice=str(exc))
    error = None
    try:
        llr = column_log_likelihood_ratios(raw, denoised, cols, vacuum_level,
                                           radius_a=radius_a, pixel_size_pm=pixel_size_pm)
    except ValueError as exc:  # no vacuum in this frame, or raw data not counts
        if strict:
            raise
        llr, error = np.full(len(cols), np.nan), str(exc)
    lmap = likelihood_map((h, w), cols, llr, radius_a=radius_a, pixel_size_pm=pixel_size_pm)
    return FrameAnalysis(int(frame), float(pixel_size_pm), cols, llr, lmap, error)


def iter_analyse(
    raw: Any,
    denoised: Any,
    pixel_size_pm: float,
    **options: Any,
) -> Iterator[tuple[int, FrameAnalysis | ValueError]]:
    """Analyse every frame of a movie, one at a time: yield ``(frame, analysis or error)``.

    A frame with bad data yields its ``ValueError`` and the movie goes on;
    LLRs that cannot be computed are left NaN (``strict=False``). Stop
    iterating to cancel.

    Parameters
    ----------
    raw, denoised : array-like
        (T, H, W) raw counts and their denoised frames (lazy arrays are read frame by frame).
    pixel_size_pm : float
        Pixel size in picometres.
    **options
        ``vacuum_level``, ``radius_a``, ``detect`` of :func:`analyse_frame`.
    """
    for i in range(denoised.shape[0]):
        try:
            yield i, analyse_frame(np.asarray(raw[i], dtype=np.float32),
                                   np.asarray(denoised[i], dtype=np.float32), pixel_size_pm,
                                   frame=i, strict=False, **options)
        except ValueError as exc:
            yield i, exc


def write_columns_csv(path: str | Path, rows: list[dict[str, Any]],
                      fields: list[str] = TABLE_FIELDS) -> Path:
    """Write columns-table rows as CSV (units in the header's names), atomically.

    Parameters
    ----------
    path : path-like
        Destination (replaced atomically if it exists: callers that must not
        overwrite check first).
    rows : list of dict
        Rows of :meth:`FrameAnalysis.table`, any number of frames.
    fields : list of str
        The columns, in order (the movie's table adds ``track``).

    Returns
    -------
    pathlib.Path
    """
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=fields)
    wr.writeheader()
    wr.writerows(rows)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))
