"""The noise model: independent Poisson counts per pixel, at a chosen dose.

Counted direct-detector frames are Poisson to a very good approximation (ICLR
paper, appendix B: the mean-variance line of 40 frames has unit slope), so a
noisy training or test image is a Poisson draw whose mean is the clean image
in counts per pixel.
"""

from __future__ import annotations

import numpy as np

__all__ = ["estimate_clean_vacuum_level", "poisson_noise", "scale_to_dose"]


def estimate_clean_vacuum_level(clean: np.ndarray) -> float:
    """Vacuum level of a clean HRTEM simulation, in its own units.

    Uses the median: in a phase-contrast image of a particle in vacuum the
    vacuum is the largest flat area and the median falls on it (0.450 on the
    four reference images, whose vacuum is 0.45). Pass the level explicitly
    when the material fills most of the field.

    Parameters
    ----------
    clean : numpy.ndarray
        A clean image (any shape).

    Returns
    -------
    float
        The estimated vacuum level.
    """
    level = float(np.median(clean))
    if not np.isfinite(level) or level <= 0:
        raise ValueError(
            "cannot estimate the vacuum level of this image (median is not positive); "
            "pass vacuum_level explicitly"
        )
    return level


def scale_to_dose(
    clean: np.ndarray, dose: float, vacuum_level: float | None = None
) -> np.ndarray:
    """Rescale a clean image so that its vacuum reads ``dose`` counts/pixel.

    Parameters
    ----------
    clean : numpy.ndarray
        Clean image, non-negative.
    dose : float
        Target vacuum dose, counts per pixel per frame (> 0).
    vacuum_level : float, optional
        The image's current vacuum level; estimated when omitted.

    Returns
    -------
    numpy.ndarray
        A new float32 array.
    """
    try:
        dose = float(dose)
    except (TypeError, ValueError):
        raise ValueError(f"dose must be a number of counts per pixel, got {dose!r}") from None
    if not dose > 0 or not np.isfinite(dose):
        raise ValueError(f"dose must be a positive number of counts per pixel, got {dose}")
    level = estimate_clean_vacuum_level(clean) if vacuum_level is None else float(vacuum_level)
    return (np.asarray(clean, dtype=np.float32) * np.float32(dose / level)).astype(np.float32)


def poisson_noise(
    clean: np.ndarray,
    dose: float | None = None,
    *,
    vacuum_level: float | None = None,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Draw a noisy frame: Poisson counts with mean ``clean`` (rescaled to ``dose``).

    Parameters
    ----------
    clean : numpy.ndarray
        Expected counts per pixel (non-negative, finite).
    dose : float, optional
        Vacuum dose in counts/pixel; when given, ``clean`` is first rescaled so
        that its vacuum level equals it (:func:`scale_to_dose`).
    vacuum_level : float, optional
        Vacuum level of ``clean`` for the rescaling (estimated when omitted).
    rng : numpy.random.Generator or int, optional
        Random generator or seed, for reproducible draws.

    Returns
    -------
    numpy.ndarray
        float32 counts (integer-valued), same shape as ``clean``.
    """
    kind = np.asarray(clean).dtype.kind
    if kind not in "uif":
        raise ValueError(f"clean image must be real numbers (expected counts), got dtype "
                         f"{np.asarray(clean).dtype}")
    lam = np.asarray(clean, dtype=np.float64)
    if not np.all(np.isfinite(lam)) or lam.min(initial=0.0) < 0:
        raise ValueError("clean image must be finite and non-negative (expected counts)")
    if dose is not None:
        lam = scale_to_dose(lam, dose, vacuum_level).astype(np.float64)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if lam.max(initial=0.0) > 1e15:  # numpy's Poisson sampler stops near 1e19
        raise ValueError(f"clean image has means up to {lam.max():.3g} counts per pixel: "
                         "not counts, check its scaling")
    return np.asarray(gen.poisson(lam), dtype=np.float32)
