"""Per-column Poisson log-likelihood ratios and the likelihood map.

For a column detected in the denoised frame, with region R a disk of radius
about 0.7 A around its centre (Microsc. Microanal. paper, Fig. S9: the
intensity is nearly constant there):

* H1, the column is real: the counts y_i in R are Poisson with mean
  lambda1 = mean of the denoised frame over R;
* H0, it is an artefact of the network: they are Poisson with mean lambda0 =
  the vacuum level.

The LLR is the mean over R of log p(y_i; lambda1) - log p(y_i; lambda0) =
mean(y) log(lambda1 / lambda0) - (lambda1 - lambda0) (the log y! terms
cancel). Positive: the raw counts support the column; negative: they look
more like vacuum. The papers read LLR >= 0.005 as real with high certainty
and LLR <= -0.006 as almost surely spurious. At these doses a few real
columns inevitably score negative: the map is a statistical measure of
agreement, not a proof.
"""

from __future__ import annotations

import numpy as np

from napari_sbd.core.columns import Columns
from napari_sbd.core.inputs import real_values
from napari_sbd.core.units import PAPERS_PIXEL_SIZE_PM
from napari_sbd.core.vacuum import VacuumNotFound, estimate_vacuum_level, vacuum_mask

__all__ = [
    "LLR_REAL",
    "LLR_SPURIOUS",
    "VacuumNotFound",
    "column_log_likelihood_ratios",
    "estimate_vacuum_level",
    "likelihood_map",
    "llr_classes",
    "vacuum_mask",
]

LLR_REAL = 0.005  #: at or above: real with a high degree of certainty (the papers)
LLR_SPURIOUS = -0.006  #: at or below: almost surely spurious (the papers)
DEFAULT_RADIUS_A = 0.7


def _check_counts(noisy: np.ndarray) -> np.ndarray:
    y = real_values(noisy, "the raw frame")
    if not np.isfinite(y).all():
        raise ValueError("the raw frame has NaN or infinite values; the likelihood test needs counts")
    if y.min(initial=0) < 0:
        raise ValueError(
            f"the raw frame has negative values (minimum {y.min():.3g}); the Poisson likelihood "
            "test is only valid on raw electron counts: use the frame before any offset "
            "subtraction or filtering"
        )
    frac = np.abs(y - np.round(y))
    if frac.max(initial=0) > 1e-3:
        raise ValueError(
            "the raw frame is not integer counts (largest fractional part "
            f"{frac.max():.3g}); the Poisson likelihood test is only valid on raw counts, not on "
            "gain-normalised, summed-and-scaled or filtered data"
        )
    return np.round(y)


def _geometry(shape: tuple[int, ...], columns: Columns | np.ndarray, radius_a: float,
              pixel_size_pm: float | None) -> tuple[float, float]:
    """(pixel size pm, region radius px) after checking both; 6.1 pm when neither is given."""
    px = pixel_size_pm if pixel_size_pm is not None else getattr(columns, "pixel_size_pm", None)
    px = PAPERS_PIXEL_SIZE_PM if px is None else px
    if not (np.isfinite(px) and px > 0):
        raise ValueError(f"pixel_size_pm must be a positive number of picometres, got {px}")
    if not (np.isfinite(radius_a) and radius_a > 0):
        raise ValueError(f"radius_a must be a positive number of Angstrom, got {radius_a}")
    radius_px = radius_a / (px / 100.0)
    if radius_px > max(shape[-2:]):
        raise ValueError(
            f"radius_a {radius_a:g} A is {radius_px:.0f} pixels at {px:g} pm/pixel, larger than "
            f"the {shape[-2]}x{shape[-1]} frame: the test region is one column (0.7 A in the "
            "papers)"
        )
    return float(px), float(radius_px)


def _disk_offsets(radius_px: float) -> np.ndarray:
    r = int(np.ceil(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = yy**2 + xx**2 <= radius_px**2
    return np.column_stack([yy[inside], xx[inside]])


def _regions(shape: tuple[int, int], centres: np.ndarray, radius_px: float):
    offs = _disk_offsets(radius_px)
    h, w = shape
    for c in np.asarray(centres, dtype=np.float64).reshape(-1, 2):
        pts = np.round(c).astype(int) + offs
        ok = (pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w)
        yield pts[ok, 0], pts[ok, 1]


def column_log_likelihood_ratios(
    noisy: np.ndarray,
    denoised: np.ndarray,
    columns: Columns | np.ndarray,
    vacuum_level: float | None = None,
    *,
    radius_a: float = DEFAULT_RADIUS_A,
    pixel_size_pm: float | None = None,
) -> np.ndarray:
    """LLR of each column: mean over R of log p(y; lambda1) - log p(y; lambda0).

    Parameters
    ----------
    noisy : numpy.ndarray
        Raw frame (H, W), integer counts.
    denoised : numpy.ndarray
        Denoised frame (H, W), counts.
    columns : Columns or numpy.ndarray
        Detected columns (or (N, 2) centres, pixels).
    vacuum_level : float, optional
        lambda0 in counts/pixel; estimated from the vacuum when omitted
        (:func:`estimate_vacuum_level`).
    radius_a : float
        Radius of the region R, Angstrom (0.7 in the papers).
    pixel_size_pm : float, optional
        Pixel size (default: the columns', else 6.1 pm).

    Returns
    -------
    numpy.ndarray
        (N,) LLR per column (nats per pixel).
    """
    y = _check_counts(noisy)
    den = real_values(denoised, "the denoised frame")
    if y.shape != den.shape or y.ndim != 2:
        raise ValueError(f"raw {y.shape} and denoised {den.shape} must be the same (H, W) frame")
    if y.size == 0:
        raise ValueError(f"the frame is empty (shape {y.shape})")
    if not np.isfinite(den).all() or not den.mean() > 0:
        raise ValueError("the denoised frame must be finite counts per pixel with a positive "
                         "mean (the network's output, not a normalised or negated image)")
    px, radius_px = _geometry(y.shape, columns, radius_a, pixel_size_pm)
    lam0 = estimate_vacuum_level(y, den, px) if vacuum_level is None else float(vacuum_level)
    if not lam0 > 0:
        raise ValueError(f"the vacuum level must be positive counts/pixel, got {lam0}")
    centres = np.asarray(columns, dtype=np.float64).reshape(-1, 2)
    out = np.empty(len(centres))
    tiny = 1e-6
    for k, (rr, cc) in enumerate(_regions(y.shape, centres, radius_px)):
        if len(rr) == 0:
            out[k] = np.nan
            continue
        lam1 = max(float(den[rr, cc].mean()), tiny)
        out[k] = float(y[rr, cc].mean()) * np.log(lam1 / lam0) - (lam1 - lam0)
    return out


TABLE_FIELDS = ["frame", "y_nm", "x_nm", "position_error_pm", "row_px", "col_px", "sigma_a",
                "peak_counts", "contrast_counts", "intensity_counts_px", "llr", "class"]


def llr_class(value: float) -> str:
    """'real', 'spurious' or 'undecided' by the papers' thresholds (NaN: 'undecided')."""
    if value >= LLR_REAL:
        return "real"
    if value <= LLR_SPURIOUS:
        return "spurious"
    return "undecided"


def columns_table(columns: Columns, llr: np.ndarray, frame: int,
                  pixel_size_pm: float) -> list[dict[str, object]]:
    """One row per column in physical units: the table users export and plot.

    Positions in nm from the frame's top-left pixel centre (and in pixels)
    with their standard error in pm, sigma in Angstrom, peak and contrast in
    counts, the integrated intensity (counts x pixels: an occupancy proxy),
    the LLR (nats per pixel) and its class. Field names carry the units
    (:data:`TABLE_FIELDS`).
    """
    if not (np.isfinite(pixel_size_pm) and pixel_size_pm > 0):
        raise ValueError(f"pixel_size_pm must be a positive number of picometres, got {pixel_size_pm}")
    nm = pixel_size_pm / 1000.0
    return [
        {"frame": int(frame), "y_nm": round(float(r) * nm, 5), "x_nm": round(float(c) * nm, 5),
         "position_error_pm": round(float(e), 3),
         "row_px": round(float(r), 3), "col_px": round(float(c), 3),
         "sigma_a": round(float(sg), 4), "peak_counts": round(float(p), 5),
         "contrast_counts": round(float(ct), 5), "intensity_counts_px": round(float(i), 4),
         "llr": float(v), "class": llr_class(float(v))}
        for (r, c), e, sg, p, ct, i, v in zip(columns.centres, columns.position_error_pm,
                                              columns.sigma_a, columns.peak, columns.contrast,
                                              columns.intensity, llr)
    ]


def llr_classes(llr: np.ndarray) -> tuple[int, int, int]:
    """Count the (real, spurious, undecided) columns by the papers' thresholds."""
    values = np.asarray(llr, dtype=np.float64)
    real = int(np.sum(values >= LLR_REAL))
    spurious = int(np.sum(values <= LLR_SPURIOUS))
    return real, spurious, int(values.size) - real - spurious


def likelihood_map(
    shape: tuple[int, int],
    columns: Columns | np.ndarray,
    llr: np.ndarray,
    *,
    radius_a: float = DEFAULT_RADIUS_A,
    pixel_size_pm: float | None = None,
) -> np.ndarray:
    """Paint each column's LLR into its region R; NaN elsewhere.

    Parameters
    ----------
    shape : tuple of int
        Frame shape (H, W).
    columns : Columns or numpy.ndarray
        Column centres.
    llr : numpy.ndarray
        (N,) values from :func:`column_log_likelihood_ratios`.
    radius_a : float
        Region radius, Angstrom.
    pixel_size_pm : float, optional
        Pixel size (default: the columns', else 6.1 pm).

    Returns
    -------
    numpy.ndarray
        float32 (H, W) map for a diverging colour map centred at 0.
    """
    _, radius_px = _geometry(tuple(shape), columns, radius_a, pixel_size_pm)
    centres = np.asarray(columns, dtype=np.float64).reshape(-1, 2)
    values = np.asarray(llr, dtype=np.float64).reshape(-1)
    if len(values) != len(centres):
        raise ValueError(f"{len(centres)} columns but {len(values)} LLR values")
    out = np.full(tuple(shape)[-2:], np.nan, dtype=np.float32)
    for (rr, cc), v in zip(_regions((out.shape[0], out.shape[1]), centres, radius_px), values):
        out[rr, cc] = v
    return out
