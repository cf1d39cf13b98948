"""Tiled, device-aware denoising of frames and stacks.

A frame is mirror-padded by a fixed margin and up to a multiple of the
network's pooling grid, and cropped back afterwards, so any height and width
work. Frames too large for one pass are cut into tiles on that grid, each
extended by a margin at least the network's receptive radius: every output
pixel then sees exactly the inputs it would see in a whole-frame pass, and
tiled and whole-frame results agree to float rounding.

A frame with more counts than a single-dose model was trained at is split
into independent frames at its dose (:func:`split_counts`): each count is
kept with one probability and the kept counts dealt at random into equal
parts. Thinning and splitting Poisson counts gives independent Poisson counts
at the lower means, exactly, so each part is what the model knows; the sum
of the parts' results, divided by the kept fraction, estimates the frame
(validation frames at 0.6 counts/pixel: the default 37.58 dB split, 30.04 as
they are; docs/envelope.md). Frames that are not integer counts are left as
they are (thinning needs counts), and so are frames for a model trained over
a dose range (:meth:`Denoiser.dose_split`).

Stacks are processed one frame at a time (:meth:`Denoiser.iter_denoise`), so
memory does not grow with the number of frames; a memory-mapped or lazy stack
is never read whole.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_sbd.core.checkpoint import CheckpointError, ModelCard, load_checkpoint
from napari_sbd.core.inputs import InputError, as_frame, check_stack_shape
from napari_sbd.core.models import SBDNetwork, fold_batchnorm
from napari_sbd.core.text import counted, verb
from napari_sbd.core.units import PAPERS_PIXEL_SIZE_PM

__all__ = [
    "BLENDS",
    "BUNDLED",
    "DEFAULT_TILE",
    "Blend",
    "Denoiser",
    "DenoisingCancelled",
    "available_devices",
    "binning_dose",
    "bundled_model_path",
    "choose_bundled_model",
    "default_model_path",
    "dose_warning",
    "doses_outside",
    "estimate_contrast",
    "estimate_dose",
    "in_default_window",
    "load_model",
    "resolve_device",
    "split_counts",
]

# Output pixels per tile side. Each tile also reads the receptive radius around what it
# keeps (263 px for the bundled networks): on a 2048x2048 frame 2048 took 2.2 s where 1024
# (four tiles) took 3.0 s, at a peak of 1.6 GB of the process's memory against 1.0 GB
# (4 scales x 32 channels, CPU, 2 threads; session 11). Frames up to 2048 run in one pass.
DEFAULT_TILE = 2048
EDGE_PAD = 32  # mirrored pixels around every frame (see pad_frame)
MIN_TILE = 256  # smaller tiles would mostly run the margins: out of memory even then is an error


class DenoisingCancelled(RuntimeError):
    """Raised by :meth:`Denoiser.denoise` when ``should_stop`` returned True."""


def available_devices() -> list[str]:
    """Devices this machine can run on: "cpu", plus "cuda" / "cuda:N" when present."""
    devs = ["cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        devs += ["cuda"] + ([f"cuda:{i}" for i in range(n)] if n > 1 else [])
    return devs


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda", "cuda:1" or a torch.device into a usable device.

    "auto" picks the first CUDA GPU when PyTorch sees one, the CPU otherwise.
    Asking for CUDA on a machine without it is an error, not a silent fallback.

    Parameters
    ----------
    device : str or torch.device or None
        The request (None means "auto").

    Returns
    -------
    torch.device
        The device to use.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "device 'cuda' was requested but PyTorch sees no CUDA GPU on this machine "
                "(CPU-only PyTorch build, or no driver); use device='cpu' or 'auto'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {dev} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise ValueError(f"device {device!r} is not supported: use 'auto', 'cpu' or 'cuda'")
    return dev


# Models shipped inside the package, by the name load_model() takes.
BUNDLED = {
    "default": "the best model at 0.45 counts/pixel and 6.1 pm/pixel (white contrast)",
    "envelope": "one model for 0.1-5 counts/pixel and 4.8-10.5 pm/pixel (white contrast)",
    "black": "the best model at 0.45 counts/pixel and 6.1 pm/pixel for black contrast",
    "high-dose": "a larger network (4 scales x 64 channels) over the envelope's doses and pixel "
                 "sizes, the best where a pixel holds many counts (white contrast)",
}

# Blends of bundled models, by the name load_model() takes: (bundled name, weight) pairs,
# the outputs averaged with these weights (:class:`Blend`). Where a pixel holds more counts
# than the default was trained at, the default split into parts at its dose and the
# high-dose model make different errors: their average beat both on validation frames
# (session 22 probe, 6 frames: 1.35 counts/pixel 39.31 dB against 38.72 for the split
# default and 38.25 for the high-dose model, 50/50; 2.0: 40.08 against 38.92 / 39.41; 4.0,
# 30/70: 41.75 against 41.36). Model auto offers them to the held-out choice where the
# default splits frames (:func:`napari_sbd.core.selection.auto_candidates`).
BLENDS: dict[str, tuple[tuple[str, float], ...]] = {
    "blend-50": (("default", 0.5), ("high-dose", 0.5)),
    "blend-70": (("default", 0.3), ("high-dose", 0.7)),
}


def blend_installed(name: str) -> bool:
    """Whether every bundled model of the blend ``name`` (:data:`BLENDS`) is installed."""
    return all(bundled_model_path(m).exists() for m, _ in BLENDS[name])


def blend_text(name: str) -> str:
    """Return a blend's members in words, e.g. "the default 50% + the high-dose model 50%"."""
    return " + ".join(f"the {m} {'model ' if m != 'default' else ''}{w:.0%}"
                      for m, w in BLENDS[name])


# Where the single-point default beats what auto takes outside it (the better of the
# envelope and the high-dose model: auto chooses between them by held-out counts), derived
# on validation frames (never the test images) by benchmarks/envelope.py (docs/envelope.md,
# "Where model auto takes the default"): log-linear crossings between the measured
# settings. Re-derive whenever a bundled model changes. Frames above the default's dose
# are split into parts at it (split_counts), which puts the upper end well above it.
# Session 23 (the default's epoch 270, the high-dose model's 320-px epoch 197): the default
# minus the better of the two, dose 0.3: -7.77 dB, 0.45: +2.33, 0.6: +1.36, 0.9: +1.17,
# 1.35: +0.67, 2: -0.55; pixel 4.88 pm: -4.09, 6.1: +2.33, 8: -1.60; crossings at 0.41 and
# 1.67 counts/pixel, 5.63 and 7.16 pm (envelope.py ran with 0.40-1.94 and 5.6-7.35: no
# setting lies between). Inside and outside, auto also weighs the blends (BLENDS) where the
# default splits frames.
AUTO_DEFAULT_DOSE = (0.41, 1.67)
AUTO_DEFAULT_PIXEL_PM = (5.63, 7.16)
# Outside the default's window, for frames too small for the held-out choice (under 64
# pixels a side): counts per pixel as the envelope models see them (a frame finer than their
# range binned into it) from which the high-dose model beats the envelope model, derived
# like the windows above (docs/envelope.md, "Where model auto takes the high-dose model";
# session 23, its 320-px epoch 197): high-dose minus envelope on the validation frames 0.1:
# -0.00 dB, 0.15: +0.15, 0.3: +0.06, 0.45: +0.25, 0.9: +0.99, 4: +1.76, and +0.03 to +3.23
# dB at 4-12 pm: the crossing is at 0.10 counts/pixel (it was 0.80 for epoch 1247).
AUTO_HIGH_DOSE = 0.10
# The bundled white-contrast models over the envelope that auto chooses between outside the
# default's window (by held-out counts: napari_sbd.core.selection.auto_read)
ENVELOPE_MODELS = ("envelope", "high-dose")
# The pixel-size range of both bundled envelope models (their cards; a test checks it).
ENVELOPE_PIXEL_RANGE_PM = (4.8, 10.5)
# The high-dose model's card: frames finer than 6 pm are binned into 6-10.5 pm where they
# can be. On validation frames (docs/envelope.md, "Binning"), 2x2 at 4.88-5.2 pm gains
# +1.2 to +2.3 dB at 0.1-1.35 counts/pixel over the frame's own grid (a little behind
# from 2 counts/pixel up), and 3x3 at 2.5 pm +1.0 dB over 2x2; the envelope model gains
# nothing from it. Auto takes the high-dose model wherever it bins and the envelope model
# would not.
HIGH_DOSE_BIN_TO_PM = 6.0
# ... but only for frames holding fewer counts per pixel than this (the card's
# bin_below_dose): on the same validation frames the binning the card prefers loses from
# about 1.1-1.6 counts/pixel up (log-linear crossings of its PSNR minus that of the
# smallest k the range needs: 2.5 pm 3x3 vs 2x2 1.06, 4.88 pm 2x2 vs none 1.63, 5.2 pm
# 1.10; geometric mean 1.24), and at 4 counts/pixel 2x2 at 4.88-5.2 pm loses 1.2-2.0 dB.
HIGH_DOSE_BIN_BELOW_DOSE = 1.2


def binning_into(pixel_size_pm: float | None, target_pm: float | None,
                 range_pm: tuple[float, float] | None = None) -> int:
    """Integer k x k binning that brings a pixel size up to ``target_pm`` (1: none needed).

    Summing k x k counts keeps them Poisson at k times the pixel size; coarser
    frames cannot be helped. With ``range_pm`` (a model's pixel-size range), k
    stays where k x the pixel size is inside it when a smaller k can (a target
    above the range's lower edge is a preference, the lower edge a need).
    """
    if pixel_size_pm is None or target_pm is None or not pixel_size_pm > 0 \
            or pixel_size_pm >= target_pm:
        return 1
    k = math.ceil(target_pm / pixel_size_pm - 1e-9)
    if range_pm is not None:
        lo, hi = range_pm
        need = math.ceil(lo / pixel_size_pm - 1e-9) if pixel_size_pm < lo else 1
        while k > need and k * pixel_size_pm > hi + 1e-9:
            k -= 1
    return k


def binning_target(range_pm: tuple[float, float], bin_to_pm: float | None,
                   bin_below_dose: float | None, dose: float | None) -> float:
    """Return the pixel size a card bins frames up to: ``bin_to_pm`` unless the dose rules it out.

    The range's lower edge (a need) when the card has no ``bin_to_pm``, or when the
    frame holds ``bin_below_dose`` counts per pixel or more; an unknown (or not finite)
    dose keeps ``bin_to_pm``. :func:`binning_into` turns it into k.
    """
    high = (bin_below_dose is not None and dose is not None and bool(np.isfinite(dose))
            and dose >= bin_below_dose)
    return range_pm[0] if not bin_to_pm or high else max(range_pm[0], bin_to_pm)


def in_default_window(dose: float | None, pixel_size_pm: float | None) -> bool:
    """Whether data of this dose and pixel size are where the default beats the envelope model.

    :data:`AUTO_DEFAULT_DOSE` and :data:`AUTO_DEFAULT_PIXEL_PM`; an unknown dose
    or pixel size counts as the default's own.
    """
    lo, hi = AUTO_DEFAULT_DOSE
    plo, phi = AUTO_DEFAULT_PIXEL_PM
    dose_ok = dose is None or not np.isfinite(dose) or lo <= dose <= hi
    return dose_ok and (pixel_size_pm is None or plo <= pixel_size_pm <= phi)


def choose_bundled_model(dose: float | None, pixel_size_pm: float | None,
                         contrast: str | None = None,
                         envelope: str | None = None) -> tuple[str, str]:
    """Pick the bundled model that denoises data of this dose, pixel size and contrast best.

    White contrast (or unknown): the single-point default where it wins
    (doses :data:`AUTO_DEFAULT_DOSE`, pixel sizes :data:`AUTO_DEFAULT_PIXEL_PM`);
    elsewhere the envelope model the counts chose (``envelope``), or without that
    the high-dose model where a pixel the network sees (after the binning
    its card asks for: :data:`HIGH_DOSE_BIN_TO_PM`, for frames under
    :data:`HIGH_DOSE_BIN_BELOW_DOSE` counts/pixel) holds at least
    :data:`AUTO_HIGH_DOSE` counts or where it bins a frame the envelope model would
    not, the envelope model elsewhere (each when installed). Black contrast: the
    black-contrast model at the same point (when installed), the white-contrast
    choice elsewhere. An unknown dose or pixel size counts as the default's own.

    Parameters
    ----------
    dose : float, optional
        The data's mean counts per pixel per frame (:func:`estimate_dose`).
    pixel_size_pm : float, optional
        The data's pixel size, picometres.
    contrast : {"white", "black"}, optional
        Whether the columns are bright or dark (:func:`estimate_contrast`, or
        held-out counts: :func:`~napari_sbd.core.selection.auto_read`).
    envelope : {"envelope", "high-dose", "blend-50", "blend-70"}, optional
        The white-contrast model other than the default whose output better
        predicts counts held out of the data (:func:`~napari_sbd.core.selection.auto_read`):
        outside the default's window an envelope model, and wherever the default
        splits frames a blend (:data:`BLENDS`) may win; without it the rules above decide.

    Returns
    -------
    tuple of str
        The bundled name ("default", "envelope", "high-dose" or "black") and the
        reason, in words.
    """
    lo, hi = AUTO_DEFAULT_DOSE
    plo, phi = AUTO_DEFAULT_PIXEL_PM
    in_window = in_default_window(dose, pixel_size_pm)
    seen = ", ".join(
        ([f"{dose:.3g} counts/pixel"] if dose is not None and np.isfinite(dose) else [])
        + ([f"{pixel_size_pm:.3g} pm/pixel"] if pixel_size_pm is not None else [])
        + ([f"{contrast} contrast"] if contrast else [])
    ) or "dose and pixel size unknown"
    window = f"{lo:g}-{hi:g} counts/pixel and {plo:g}-{phi:g} pm"
    if envelope in BLENDS and contrast != "black" and blend_installed(envelope):
        return envelope, (f"the data have {seen}; {blend_text(envelope)}, their outputs "
                          "averaged, predicts counts held out of the first frame best of "
                          "auto's candidates")
    if contrast == "black" and bundled_model_path("black").exists():
        if in_window:
            return "black", f"the data have {seen}; the black-contrast model is best at {window}"
        seen += f" (the black-contrast model is trained at {window} only)"
    if in_window or not bundled_model_path("envelope").exists():
        return "default", f"the data have {seen}; the default is best at {window}"
    outside = f"the data have {seen}, outside {window} where the default is best"
    if not bundled_model_path("high-dose").exists():
        return "envelope", outside
    if envelope in ENVELOPE_MODELS:
        other = next(n for n in ENVELOPE_MODELS if n != envelope)
        return envelope, (f"{outside}; its output predicts counts held out of the first frame "
                          f"better than the {other} model's")
    k = binning_into(pixel_size_pm, binning_target(ENVELOPE_PIXEL_RANGE_PM, HIGH_DOSE_BIN_TO_PM,
                                                   HIGH_DOSE_BIN_BELOW_DOSE, dose),
                     ENVELOPE_PIXEL_RANGE_PM)
    k_envelope = binning_into(pixel_size_pm, ENVELOPE_PIXEL_RANGE_PM[0])
    binned = f" ({k}x{k} binned)" if k > 1 else ""
    if k > k_envelope and pixel_size_pm is not None:  # (k > 1 needs a pixel size)
        return "high-dose", (f"{outside}; the high-dose model bins the frames {k}x{k} (to "
                             f"{k * pixel_size_pm:.3g} pm), where it is best")
    seen_by_net = None if dose is None or not np.isfinite(dose) else dose * k * k
    if seen_by_net is not None and seen_by_net >= AUTO_HIGH_DOSE:
        return "high-dose", (f"{outside}; {seen_by_net:.3g} counts per pixel{binned}, at least "
                             f"{AUTO_HIGH_DOSE:g} where the high-dose model is best")
    return "envelope", outside


# Pt columns in [110] are 1.4-2.8 A apart at most pixel sizes a user records: the
# contrast is read at that scale, on frames binned to about this pixel size
CONTRAST_BIN_PM = 24.0
CONTRAST_SCALE_A = 2.0


def estimate_contrast(frames: Any, pixel_size_pm: float | None = None,
                      max_frames: int = 4) -> str | None:
    """Whether the atomic columns of raw counts are bright ("white") or dark ("black").

    One frame at 0.45 counts/pixel is mostly zeros, but the sign of its
    columns' contrast is a whole-frame statistic: the first frames are
    binned to about :data:`CONTRAST_BIN_PM` (sums, exact for Poisson
    counts), summed, put through the Anscombe transform (Poisson noise is
    itself skewed towards bright), high-passed at :data:`CONTRAST_SCALE_A`,
    smoothed to a column's width, and the skew of the textured half of the
    frame decides (:func:`~napari_sbd.core.lattice.column_polarity`).

    Parameters
    ----------
    frames : array-like
        (H, W) or (T, H, W) counts.
    pixel_size_pm : float, optional
        Pixel size, picometres (unknown: the papers' 6.1 pm).
    max_frames : int
        Frames to sum at most (keeps lazy stacks lazy).

    Returns
    -------
    str or None
        "white" or "black"; None when the frame is too small to tell (under
        about 32 binned pixels a side).
    """
    from napari_sbd.core.lattice import counts_polarity

    shape = tuple(getattr(frames, "shape", np.shape(frames)))
    if len(shape) == 2:
        total = np.asarray(frames, dtype=np.float64)
    else:
        total = np.asarray(frames[0], dtype=np.float64).copy()
        for i in range(1, min(max_frames, shape[0])):
            total += np.asarray(frames[i], dtype=np.float64)
    px = float(pixel_size_pm) if pixel_size_pm else PAPERS_PIXEL_SIZE_PM
    b = max(1, round(CONTRAST_BIN_PM / px))
    if min(total.shape) // b < 32:
        return None
    scale = CONTRAST_SCALE_A * 100 / (px * b)  # pixels of the binned frame
    polarity = counts_polarity(bin_counts(total, b), scale, scale / 6)
    return "white" if polarity == "bright" else "black"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception from a network pass is an allocation failure (GPU or CPU)."""
    if isinstance(exc, MemoryError) or exc.__class__.__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def _wider_model_hint() -> str:
    """Return 'the bundled "envelope" model ... or ' when it is installed, else ''."""
    if bundled_model_path("envelope").exists():
        return "the bundled 'envelope' model (model='envelope', 0.1-5 counts/pixel, 4.8-10.5 pm) or "
    return ""


def bundled_model_path(name: str = "default") -> Path:
    """Path of a bundled checkpoint inside the package (see :data:`BUNDLED`)."""
    if name not in BUNDLED:
        raise CheckpointError(f"no bundled model is called {name!r}; bundled: {', '.join(BUNDLED)}")
    return Path(str(resources.files("napari_sbd") / "models" / f"{name}.pt"))


def default_model_path() -> Path:
    """Path of the bundled default checkpoint inside the package."""
    return bundled_model_path("default")


def padded_index(n: int, m: int, edge: int) -> np.ndarray:
    """Frame index of every position of one padded axis (see :func:`pad_frame`)."""
    return np.pad(np.arange(n), (edge, edge + (-(n + 2 * edge)) % m), mode="reflect")


def pad_frame(frame: np.ndarray, m: int, edge: int = EDGE_PAD) -> np.ndarray:
    """Mirror-pad ``edge`` pixels on every side, then up to a multiple of ``m``.

    Mirroring continues the frame with counts of the same statistics, so the
    network sees a plausible neighbourhood at the frame edges; replicating the
    last row instead feeds it stripes it never saw in training, and its edge
    error was 3-7x the interior's (about 0.8 dB of PSNR on an 869-pixel frame).
    The frame sits at offset (edge, edge) of the result.
    """
    return frame[np.ix_(padded_index(frame.shape[0], m, edge), padded_index(frame.shape[1], m, edge))]


def tile_bounds(n: int, core: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Tiles of one padded axis of length ``n``: (out0, out1, in0, in1) each.

    Every tile reads ``[in0, in1)`` and keeps ``[out0, out1)``, with at least
    ``margin`` pixels of context on each side that has any. The memory bound is
    on the window a tile reads, ``core + 2 * margin``: a tile at the frame edge
    has no context to read on that side, so it keeps more output pixels rather
    than ending in a thin tile that reads mostly margin (a 2048-pixel frame in
    1024-pixel tiles: 2 tiles per axis instead of 3, 22% fewer pixels run).
    All arguments are multiples of the pooling grid, so every bound is too.
    """
    limit = core + 2 * margin
    bounds = []
    out0 = 0
    while out0 < n:
        in0 = max(0, out0 - margin)
        out1 = n if n - in0 <= limit else in0 + limit - margin
        bounds.append((out0, out1, in0, min(n, out1 + margin)))
        out0 = out1
    return bounds


def bin_counts(frame: np.ndarray, k: int) -> np.ndarray:
    """Sum ``k`` x ``k`` blocks of counts (mirror-padded up to a multiple of ``k``).

    Summing counts is exact for Poisson noise: a bin holds Poisson counts with
    k^2 times the mean, at k times the pixel size. (Fractional resampling
    instead correlates the noise of neighbouring pixels.)
    """
    if k == 1:
        return frame
    h, w = frame.shape
    padded = np.pad(frame, ((0, -h % k), (0, -w % k)), mode="symmetric")
    hb, wb = padded.shape[0] // k, padded.shape[1] // k
    return padded.reshape(hb, k, wb, k).sum(axis=(1, 3), dtype=np.float32)


def unbin(binned: np.ndarray, k: int, shape: tuple[int, int]) -> np.ndarray:
    """Bring a denoised binned frame back to the original grid, in counts per original pixel.

    Each original pixel takes the bilinear interpolation of the binned frame
    at its own centre, divided by the k^2 pixels a bin summed.
    """
    if k == 1:
        return binned
    from scipy.ndimage import map_coordinates

    h, w = shape
    rows = (np.arange(h) + 0.5) / k - 0.5
    cols = (np.arange(w) + 0.5) / k - 0.5
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    out = map_coordinates(binned.astype(np.float32), [rr, cc], order=1, mode="nearest",
                          prefilter=False)
    return (out / np.float32(k * k)).astype(np.float32)


# The 8 symmetries of the square grid: k quarter turns, then an optional flip.
DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]

# A frame whose mean counts exceed a single-dose model's dose by more than this factor, and
# by more than 3 standard errors of a Poisson mean over its pixels, is thinned to it (and
# split into parts at it where it holds several times the dose). On validation frames the
# default gains from 4% above its dose on (0.47 counts/pixel: 36.60 dB thinned, 36.47 as
# it is); frames at the dose stay as they are (a 64x64 frame's mean fluctuates by 2%).
SPLIT_ABOVE = 1.02
# Parts may hold a little less than the dose rather than waste counts: a frame of 1.997x
# the dose (a white-contrast frame's mean is 98-100% of its vacuum's) is dealt into 2
# parts of 0.9985x, not thinned to one; down to this fraction of the dose per part.
SPLIT_PART_LOW = 0.97
# "fast" quality: at least this many network passes on a split frame (a frame thinned to
# one part is thinned twice and the two estimates averaged: on 6 validation frames at 0.6
# counts/pixel 37.01 dB against 36.65 for one thinning, 36.63 at the dose itself)
SPLIT_MIN_PASSES = 2


def _above(mean: float, n: int, dose: float) -> bool:
    """Whether a frame's mean of ``n`` pixels is clearly above ``dose`` (see SPLIT_ABOVE)."""
    return mean > dose * SPLIT_ABOVE + 3 * math.sqrt(max(mean, 0.0) / max(n, 1))


def _parts_at(mean: float, dose: float) -> tuple[int, float]:
    """Return (parts, kept fraction) that bring a frame of ``mean`` counts to parts at ``dose``."""
    parts = max(1, math.floor(mean / (dose * SPLIT_PART_LOW) + 1e-9))
    return parts, min(1.0, parts * dose / mean)


def split_counts(frame: np.ndarray, parts: int, keep: float,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """Thin Poisson counts and deal them into independent parts.

    Each count is kept with probability ``keep`` (binomial thinning) and the
    kept counts of each pixel are dealt at random into ``parts`` frames
    (multinomial, as successive binomials). For Poisson counts of mean lambda
    the parts are independent Poisson frames of mean keep * lambda / parts.

    Parameters
    ----------
    frame : numpy.ndarray
        (H, W) non-negative integer counts (any numeric dtype).
    parts : int
        Number of frames to deal the kept counts into (>= 1).
    keep : float
        Fraction of the counts kept, in (0, 1].
    rng : numpy.random.Generator
        Source of the randomness.

    Returns
    -------
    list of numpy.ndarray
        ``parts`` float32 frames; their sum is the kept counts.
    """
    if parts < 1 or not 0 < keep <= 1:
        raise ValueError(f"split_counts needs parts >= 1 and 0 < keep <= 1 (got {parts}, {keep})")
    return list(_deal(frame, parts, keep, rng))


def _deal(frame: np.ndarray, parts: int, keep: float,
          rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield :func:`split_counts`' parts one at a time (memory: the frame and one part)."""
    rest = np.rint(frame).astype(np.int64)
    if keep < 1:
        rest = rng.binomial(rest, keep)
    for left in range(parts, 1, -1):  # each remaining part takes 1/left of what is left
        part = rng.binomial(rest, 1.0 / left)
        rest = rest - part
        yield part.astype(np.float32)
    yield rest.astype(np.float32)


def _is_counts(frame: np.ndarray) -> bool:
    """Whether every value is an integer (to 1e-3): counts that thinning can split."""
    return bool(np.all(np.abs(frame - np.rint(frame)) <= 1e-3))


def _split_rng(frame: np.ndarray) -> np.random.Generator:
    """Return a generator seeded by the frame's bytes: the same frame is always split alike."""
    digest = hashlib.blake2b(np.ascontiguousarray(frame).tobytes(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Apply one grid symmetry to the last two axes: ``k`` quarter turns, then a flip."""
    out = np.rot90(a, k, axes=(-2, -1))
    return out[..., ::-1] if flip else out


def dihedral_inverse(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Undo :func:`dihedral`."""
    if flip:
        a = a[..., ::-1]
    return np.rot90(a, -k, axes=(-2, -1))


def architecture_text(arch: str, params: dict[str, Any]) -> str:
    """Return a model's architecture in words, for people (not a Python dict)."""
    if arch == "bf_unet":
        text = f"bias-free UNet, {params.get('scales', 4)} scales x {params.get('base', 32)} channels"
        u = int(params.get("unshuffle", 1) or 1)
        text += f", input unshuffled {u}x{u}" if u > 1 else ""
        return text + (", gains from the frame's count level" if params.get("level_gain") else "")
    if arch == "dncnn":
        return f"DnCNN, {params.get('depth', 20)} layers x {params.get('width', 64)} channels"
    if arch == "small_unet":
        return f"small UNet, {params.get('width', 32)} channels"
    return f"{arch} {params}"


def trained_at(card: ModelCard) -> str:
    """Return "trained at <dose>, <pixel size>, <contrast> contrast" from a model's card."""
    dr, pr = card.dose_range, card.pixel_size_range_pm
    dose = (f"{dr[0]:g}-{dr[1]:g} counts/pixel" if dr
            else f"{card.dose if card.dose is not None else '?'} counts/pixel")
    pix = (f"{pr[0]:g}-{pr[1]:g} pm/pixel" if pr
           else f"{card.pixel_size_pm if card.pixel_size_pm is not None else '?'} pm/pixel")
    contrast = card.contrast if card.contrast != "unknown" else "?"
    return f"trained at {dose}, {pix}, {contrast} contrast"


class Denoiser:
    """A trained network ready to denoise frames.

    Parameters
    ----------
    network : SBDNetwork
        A network from :mod:`napari_sbd.core.models` (weights loaded).
    metadata : dict
        Its checkpoint metadata (dose, pixel size, ...).
    device : str or torch.device
        "auto" (CUDA when available), "cpu" or "cuda[:N]".
    fold : bool
        Fold BatchNorm into the convolutions (same output to ~1e-6, faster).
    channels_last : bool, optional
        Use the channels-last memory format (default: on the CPU, where it
        was measured 12-31% faster).
    """

    def __init__(
        self,
        network: SBDNetwork,
        metadata: dict[str, Any] | None = None,
        *,
        device: str | torch.device | None = "auto",
        fold: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        if not isinstance(network, SBDNetwork):
            raise TypeError(f"Denoiser needs a napari-sbd network (an SBDNetwork from build_model or "
                            f"load_checkpoint), got {type(network).__name__}")
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.device = resolve_device(device)
        net = network.eval()
        self.receptive_radius: int = net.receptive_radius
        self.size_multiple: int = net.size_multiple
        if fold:
            net = fold_batchnorm(copy.deepcopy(net))
        self.channels_last = (self.device.type == "cpu") if channels_last is None else channels_last
        net = net.to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        for p in net.parameters():
            p.requires_grad_(False)
        self.network = net
        # the largest tile that fitted in memory, once one did not (later frames start there)
        self.tile_cap: int | None = None

    # -- properties -----------------------------------------------------------
    @property
    def receptive_field(self) -> int:
        """Side in pixels of the network's receptive field."""
        return 2 * self.receptive_radius + 1

    @property
    def card(self) -> ModelCard:
        """The model's card (typed view of :attr:`metadata`)."""
        return ModelCard.from_metadata(self.metadata)

    @property
    def dose(self) -> float | None:
        """Training dose, counts/pixel in vacuum (None when unknown)."""
        return self.card.dose

    @property
    def pixel_size_pm(self) -> float:
        """Training (nominal) pixel size, pm; the papers' 6.1 pm when the card has none.

        What a frame of unknown pixel size is taken to have.
        """
        return float(self.card.pixel_size_pm or PAPERS_PIXEL_SIZE_PM)

    @property
    def max_dose(self) -> float | None:
        """The highest dose the model was trained at (for the "are these counts?" check)."""
        return self.dose_range[1] if self.dose_range is not None else self.dose

    def binning_for(self, pixel_size_pm: float | None, dose: float | None = None) -> int:
        """Integer binning for frames of this pixel size and dose (1: none).

        Only models trained over a pixel-size range bin, and only finer frames:
        those finer than the range, into it, and those finer than the card's
        ``bin_to_pm`` (a model that is better on coarser pixels holding more
        counts), up to it as far as the range allows, unless the frame already
        holds the card's ``bin_below_dose`` counts per pixel or more. Summing
        k x k counts keeps them Poisson at k times the pixel size. Coarser frames
        cannot be helped (see :meth:`compatibility_warnings`).

        Parameters
        ----------
        pixel_size_pm : float, optional
            The frame's pixel size (None: no binning).
        dose : float, optional
            The frame's (or its movie's: :func:`binning_dose`) mean counts per
            pixel; None: the card's ``bin_to_pm`` holds whatever the dose.
        """
        r = self.pixel_size_range_pm
        if r is None:
            return 1
        target = binning_target(r, self.card.bin_to_pm, self.card.bin_below_dose, dose)
        return binning_into(pixel_size_pm, target, r)

    def frame_binning(self, frame: np.ndarray, pixel_size_pm: float | None,
                      dose: float | None = None) -> int:
        """Return the k x k binning :meth:`denoise_frame` applies to this frame.

        ``dose``: the counts per pixel the rule reads (:meth:`binning_for`): a
        movie's, so that all its frames are binned alike; None: the frame's own mean.
        """
        if not pixel_size_pm:
            return self.binning_for(None)
        return self.binning_for(pixel_size_pm, estimate_dose(frame) if dose is None else dose)

    def dose_split(self, frame: np.ndarray) -> tuple[int, float] | None:
        """How a frame with more counts than the model knows is split: (parts, kept fraction).

        Only a single-dose model splits: frames whose mean is clearly above its
        dose (by :data:`SPLIT_ABOVE`, and beyond the mean's Poisson noise) are
        thinned to a whole number of parts at its dose (parts of down to
        :data:`SPLIT_PART_LOW` times it are dealt without thinning). None: the
        frame is denoised as it is (also when it is not integer counts: see
        :func:`split_counts`). Models trained over a dose range do better a little
        above it than split into it (docs/envelope.md, binning at 2.5 pm: 4x4-binned
        frames of 7.2 counts/pixel, 37.44 dB as they are, 37.02 dealt into 2 parts,
        for the envelope model; 39.29 and 38.91 for the high-dose model).
        """
        if self.dose_range is not None:
            return None
        mean = float(np.mean(frame, dtype=np.float64))
        d = self.card.dose
        if not d or not _above(mean, frame.size, d) or not _is_counts(frame):
            return None
        return _parts_at(mean, d)

    def split_plan(self, frame: np.ndarray, ensemble: bool = False
                   ) -> tuple[Iterator[tuple[int, bool, np.ndarray]], float] | None:
        """Return the frames the network runs on for a split or an ensemble (else None).

        Returns ``(iterator of (turns, flip, frame), norm)``, each frame made as it
        is read (one in memory at a time); the estimate is the sum over the entries
        of the inverse-transformed results, divided by ``norm``. A frame it splits
        (:meth:`dose_split`): one split per rotation/flip of the ensemble (a fresh one
        for each, so that "best" quality also averages over splits), or untransformed
        splits enough for :data:`SPLIT_MIN_PASSES` network passes; ``norm`` is splits x
        kept fraction. Seeded by the frame's bytes, so
        :func:`napari_sbd.core.jacobian.effective_filter` sees the same parts. A frame
        it does not split, with ``ensemble``: its 8 rotations and flips, ``norm`` 8.
        None: the frame as it is, once.
        """
        split = self.dose_split(frame)
        if split is None:
            if not ensemble:
                return None
            return (((turns, flip, np.ascontiguousarray(dihedral(frame, turns, flip)))
                     for turns, flip in DIHEDRAL), float(len(DIHEDRAL)))
        parts, keep = split
        rng = _split_rng(frame)
        transforms = DIHEDRAL if ensemble else [(0, False)] * math.ceil(SPLIT_MIN_PASSES / parts)

        def entries() -> Iterator[tuple[int, bool, np.ndarray]]:
            for turns, flip in transforms:
                for part in _deal(frame, parts, keep, rng):
                    yield turns, flip, np.ascontiguousarray(dihedral(part, turns, flip))

        return entries(), len(transforms) * keep

    @property
    def dose_range(self) -> tuple[float, float] | None:
        """Doses the model was trained over, counts/pixel in vacuum (None: one dose)."""
        return self.card.dose_range

    @property
    def pixel_size_range_pm(self) -> tuple[float, float] | None:
        """Pixel sizes the model was trained over, pm (None: one pixel size)."""
        return self.card.pixel_size_range_pm

    def describe(self) -> str:
        """One paragraph about the model for a user (architecture, dose, pixel size)."""
        card = self.card
        arch = card.architecture if "architecture" in self.metadata else type(self.network).__name__
        pr = card.pixel_size_range_pm
        lines = [
            architecture_text(arch, card.params),
            trained_at(card),
            f"receptive field {self.receptive_field} px; device {self.device}",
        ]
        if pr and card.bin_to_pm and card.bin_to_pm > pr[0]:
            below = (f" while they hold under {card.bin_below_dose:g} counts/pixel"
                     if card.bin_below_dose else "")
            lines.insert(2, f"frames finer than {card.bin_to_pm:g} pm/pixel are binned up to it"
                            f"{below} (where the range allows)")
        if card.validation_psnr is not None:
            lines.append(f"validation PSNR {card.validation_psnr:.2f} dB")
        return "\n".join(lines)

    def dose_fits(self, dose: float, dose_tolerance: float = 2.0) -> bool:
        """Whether frames of ``dose`` counts/pixel are within what the model was trained for.

        Inside the card's dose range for a model trained over one; from
        ``1 / dose_tolerance`` times the training dose up for a single-dose model
        (frames with more counts are split into parts it knows:
        :meth:`dose_split`); always for a model whose card has no dose.
        """
        if self.dose_range is not None:
            lo, hi = self.dose_range
            return lo <= dose <= hi
        mdose = self.card.dose
        if not mdose:
            return True
        return dose / float(mdose) >= 1 / dose_tolerance

    def compatibility_warnings(
        self,
        dose: float | None = None,
        pixel_size_pm: float | None = None,
        *,
        dose_tolerance: float = 2.0,
        pixel_tolerance: float = 0.1,
    ) -> list[str]:
        """Warnings when the data's dose or pixel size is outside what the model knows.

        A model trained over an envelope (``dose_range``, ``pixel_size_range_pm``
        in its card) accepts anything inside it. A model trained at one point
        learned one noise level and one scale: a dose off by more than
        ``dose_tolerance`` times or a pixel size off by more than
        ``pixel_tolerance`` (relative; the training augmentation covers about
        +-5%) degrades it (ICLR paper, Fig. 12).

        Parameters
        ----------
        dose : float, optional
            The data's mean counts per pixel per frame (see :func:`estimate_dose`).
        pixel_size_pm : float, optional
            The data's pixel size, picometres.
        dose_tolerance : float
            Accepted ratio either way (single-dose models).
        pixel_tolerance : float
            Accepted relative difference (single-pixel-size models).

        Returns
        -------
        list of str
            One sentence per problem; empty when the model fits.
        """
        out = []
        mdose = self.card.dose
        # a NaN or infinite estimate (bad pixels) says nothing about the dose: the frame
        # checks report those pixels themselves ("nanx" used to reach the user)
        dose = dose if dose is not None and np.isfinite(dose) else None
        frame_dose = dose  # what the binning reads (dose is cleared below once it fits)
        top = None if self.dose_range is not None else mdose
        if dose is not None and top and dose > top * SPLIT_ABOVE:  # said, not done in silence
            parts = _parts_at(dose, top)[0]
            how = (f"split at random into {counted(parts, 'part')} of {top:g}" if parts > 1
                   else f"thinned at random to {top:g}")
            out.append(
                f"the data have {dose:.3g} counts/pixel per frame on average, the model was "
                f"trained at {top:g} ({dose / top:.2g}x): frames of integer counts are {how} "
                "counts/pixel (exact for Poisson counts) and the results combined; other "
                "frames may come out poor"
            )
        if dose is not None and self.dose_fits(dose, dose_tolerance):
            dose = None  # nothing more to say about it
        pixel_size_pm = (pixel_size_pm if pixel_size_pm is not None and np.isfinite(pixel_size_pm)
                         and pixel_size_pm > 0 else None)
        if dose is not None and self.dose_range is not None:
            lo, hi = self.dose_range
            out.append(
                f"the data have {dose:.3g} counts/pixel per frame on average, outside the "
                f"{lo:g}-{hi:g} the model was trained over: results may be poor; use a "
                "model trained at this dose"
            )
        elif dose is not None and mdose:
            out.append(
                f"the data have {dose:.3g} counts/pixel per frame on average, the model was "
                f"trained at {float(mdose):.3g} ({dose / float(mdose):.2g}x): results may be "
                "poor; use " + _wider_model_hint() + "a model trained at this dose"
            )
        mpix = self.card.pixel_size_pm
        if pixel_size_pm is not None and self.pixel_size_range_pm is not None:
            lo, hi = self.pixel_size_range_pm
            k = self.binning_for(pixel_size_pm, frame_dose)
            if k > 1:
                below = (f" at under {self.card.bin_below_dose:g} counts/pixel"
                         if self.card.bin_below_dose else "")
                finer = (f"finer than the {lo:g}-{hi:g} pm/pixel the model was trained over"
                         if pixel_size_pm < lo else f"finer than the {self.card.bin_to_pm:g} "
                         f"pm/pixel from which this model does best{below}")
                out.append(
                    f"the data have {pixel_size_pm:.3g} pm/pixel, {finer}: each frame is binned {k}x{k} (to "
                    f"{k * pixel_size_pm:.3g} pm, counts summed) and the result brought back to "
                    "the frame's grid"
                    + ("" if k * pixel_size_pm <= hi else "; even so it is outside the range: "
                       "results may be poor")
                )
            elif not lo <= pixel_size_pm <= hi:
                out.append(
                    f"the data have {pixel_size_pm:.3g} pm/pixel, outside the {lo:g}-{hi:g} "
                    "pm/pixel the model was trained over: "
                    + ("bin the frames (integer binning keeps counts Poisson) or use a model "
                       "trained at this pixel size" if pixel_size_pm < lo else
                       "use a model trained at this pixel size (coarser pixels cannot be "
                       "made finer)")
                )
        elif pixel_size_pm is not None and mpix:
            rel = pixel_size_pm / float(mpix) - 1
            if abs(rel) > pixel_tolerance:
                out.append(
                    f"the data have {pixel_size_pm:.3g} pm/pixel, the model was trained at "
                    f"{float(mpix):.3g} pm/pixel ({rel:+.0%}): use " + _wider_model_hint()
                    + "a model trained at this pixel size"
                )
        return out

    # -- core -----------------------------------------------------------------
    def level_of(self, frame: np.ndarray) -> torch.Tensor | None:
        """Return the count level a conditioned network is given for this frame (else None).

        The frame's own mean counts per pixel (before padding), so that every tile
        and every effective-filter crop of it sees the same level
        (:class:`~napari_sbd.core.models.LevelGain`).
        """
        if not self.network.conditioned:
            return None
        return torch.tensor([float(np.mean(frame, dtype=np.float64))], device=self.device)

    def _run_tiles(self, x: torch.Tensor, tile_size: int | None,
                   level: torch.Tensor | None = None) -> torch.Tensor:
        """Run the network on a padded (1, 1, H, W) frame, tile by tile.

        Out of (GPU or CPU) memory, the tiles are halved and the frame run again
        (tiling is exact, so the result is the same), down to :data:`MIN_TILE`;
        the size that fitted caps the tiles of later frames, and a warning says so.
        """
        side = max(x.shape[-2:])
        size = min(side, side if tile_size is None else int(tile_size), self.tile_cap or side)
        while True:
            try:
                tiles = self.tiles((x.shape[-2], x.shape[-1]), size)
                if len(tiles) == 1:
                    return self._run(x, level)
                out = torch.empty_like(x)
                for (r0, r1, a0, a1), (c0, c1, b0, b1) in tiles:
                    y = self._run(x[..., a0:a1, b0:b1], level)
                    out[..., r0:r1, c0:c1] = y[..., r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]
                return out
            except (MemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                smaller = size // 2
                where = "GPU" if self.device.type == "cuda" else "CPU"
                if smaller < MIN_TILE:
                    raise MemoryError(
                        f"not enough {where} memory to denoise a {x.shape[-2]}x{x.shape[-1]} "
                        f"(padded) frame, even in tiles of {size} pixels: free memory "
                        "(other jobs, other programs)"
                        + (", or denoise on the CPU (device='cpu', --device cpu)"
                           if where == "GPU" else "")) from None
                warnings.warn(f"out of {where} memory in tiles of {size} pixels: "
                              f"continuing in tiles of {smaller} (slower; the same result)",
                              RuntimeWarning, stacklevel=2)
                self.tile_cap = size = smaller

    def _run(self, x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.network(x, level)

    def margin(self) -> int:
        """Tile margin: the receptive radius rounded up to the pooling grid."""
        m = self.size_multiple
        return int(math.ceil(self.receptive_radius / m) * m)

    def tiles(
        self, padded_shape: tuple[int, int], tile_size: int | None = DEFAULT_TILE
    ) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
        """Return the tiles :meth:`denoise_frame` runs on a padded frame of this shape.

        Parameters
        ----------
        padded_shape : tuple of int
            (H, W) after :func:`pad_frame`.
        tile_size : int or None
            As in :meth:`denoise_frame`.

        Returns
        -------
        list
            One ((out0, out1, in0, in1) rows, (out0, out1, in0, in1) columns)
            pair per tile (see :func:`tile_bounds`); a single whole-frame tile
            when the frame fits.
        """
        hp, wp = (int(n) for n in padded_shape)
        m, margin = self.size_multiple, self.margin()
        core = None if tile_size is None else max(m, int(math.ceil(tile_size / m) * m))
        if core is None or (hp <= core + 2 * margin and wp <= core + 2 * margin):
            return [((0, hp, 0, hp), (0, wp, 0, wp))]
        return [(r, c) for r in tile_bounds(hp, core, margin) for c in tile_bounds(wp, core, margin)]

    @torch.inference_mode()
    def denoise_frame(
        self,
        frame: np.ndarray,
        *,
        tile_size: int | None = DEFAULT_TILE,
        pixel_size_pm: float | None = None,
        ensemble: bool = False,
        dose: float | None = None,
    ) -> np.ndarray:
        """Denoise one validated float32 (H, W) frame; returns float32 (H, W).

        Parameters
        ----------
        frame : numpy.ndarray
            Counts, float32, finite, non-negative (see :func:`as_frame`).
        tile_size : int or None
            Output pixels per tile side (rounded to the pooling grid); None
            processes the frame whole.
        pixel_size_pm : float, optional
            The frame's pixel size. Frames finer than the model's pixel-size
            range are binned into it (:meth:`binning_for`) and the result is
            brought back to the frame's grid.
        ensemble : bool
            Average the network over the 8 rotations and flips of the frame
            ("best" quality: 8x the time, about +0.5 dB). The average of
            bias-free networks composed with orthogonal transforms is still
            bias-free, so :func:`napari_sbd.core.jacobian.effective_filter`
            stays exact for it.
        dose : float, optional
            The counts per pixel the binning rule reads (:meth:`frame_binning`):
            :meth:`iter_denoise` gives a movie's (:func:`estimate_dose`), so that
            every frame of it is binned alike whatever its own mean; None: this
            frame's own mean.

        A frame with more counts than the model was trained at is split into
        parts at its dose (:meth:`split_plan`; the module docstring).

        Returns
        -------
        numpy.ndarray
            The denoised frame, counts per pixel.
        """
        k = self.frame_binning(frame, pixel_size_pm, dose)
        if k > 1:
            den = self.denoise_frame(bin_counts(frame, k), tile_size=tile_size, ensemble=ensemble)
            return unbin(den, k, frame.shape)
        plan = self.split_plan(frame, ensemble)
        if plan is not None:
            entries, norm = plan
            acc = np.zeros(frame.shape, np.float64)
            for turns, flip, t in entries:
                acc += dihedral_inverse(self._network_frame(t, tile_size), turns, flip)
            return (acc / norm).astype(np.float32)
        return self._network_frame(frame, tile_size)

    def _network_frame(self, frame: np.ndarray, tile_size: int | None) -> np.ndarray:
        """Run the network on one frame as it is (padded, tiled, cropped back)."""
        h, w = frame.shape
        e = EDGE_PAD
        x = torch.from_numpy(pad_frame(frame, self.size_multiple, e)).to(self.device)[None, None]
        out = self._run_tiles(x, tile_size, self.level_of(frame))
        result = out[0, 0, e : e + h, e : e + w].float().cpu().numpy().copy()
        if not np.isfinite(result).all():  # never hand on NaN as if it were a result
            raise InputError(
                "the network produced NaN or infinite values on this frame (counts far above "
                "what it was trained on, or damaged weights); check the frame's calibration"
            )
        return result

    def iter_denoise(
        self,
        frames: Any,
        *,
        tile_size: int | None = DEFAULT_TILE,
        start: int = 0,
        stop: int | None = None,
        pixel_size_pm: float | None = None,
        ensemble: bool = False,
        first: int | None = None,
        indices: Sequence[int] | None = None,
        on_bad_frame: Callable[[int, ValueError], None] | None = None,
        dose: float | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, denoised_frame)`` for each frame, one at a time.

        Memory stays bounded by one frame whatever the stack length; stop
        iterating to cancel. Each frame is checked (:func:`as_frame`) when it is
        reached.

        Parameters
        ----------
        frames : array-like
            (H, W) or (T, H, W) counts; numpy, memory-mapped or lazy (anything
            indexable along the first axis with a ``shape`` and ``dtype``).
        tile_size : int or None
            See :meth:`denoise_frame`.
        start, stop : int
            Frame range of a stack (Python slice semantics).
        pixel_size_pm, ensemble
            See :meth:`denoise_frame`.
        first : int, optional
            Denoise this frame of the range before the others (the one on screen),
            then the rest in order.
        indices : sequence of int, optional
            Exactly these frames, in this order (instead of ``start``/``stop``):
            the batch command passes the frames its store still lacks.
        on_bad_frame : callable, optional
            Called as ``on_bad_frame(index, error)`` for a frame of a stack that
            cannot be denoised (:class:`~napari_sbd.core.inputs.InputError`: NaN,
            negative or not counts; or a non-finite result), which is then left
            out; without it the error is raised and iteration ends.
        dose : float, optional
            The counts per pixel the binning rule reads for every frame
            (:meth:`denoise_frame`). None: a stack's :func:`binning_dose`,
            whichever frames are denoised, so that a movie whose dose drifts is
            binned alike throughout and a resumed or partial run matches a whole
            one; a single frame's own mean.

        This is the one frame loop of the package: :meth:`denoise`, the
        Denoise dock and ``napari-sbd-denoise`` all run through it.

        Yields
        ------
        tuple of (int, numpy.ndarray)
            Frame index and denoised float32 frame.
        """
        shape = tuple(getattr(frames, "shape", np.shape(frames)))
        dtype = getattr(frames, "dtype", None) or np.asarray(frames).dtype
        single = check_stack_shape(shape, dtype)
        if single:
            frame = as_frame(frames, model_dose=self.max_dose)
            yield 0, self.denoise_frame(frame, tile_size=tile_size, pixel_size_pm=pixel_size_pm,
                                        ensemble=ensemble, dose=dose)
            return
        if dose is None and pixel_size_pm:  # one binning for the whole movie
            dose = binning_dose(frames)
        order = (list(indices) if indices is not None
                 else list(range(*slice(start, stop).indices(shape[0]))))
        if first is not None and first in order:
            order.remove(first)
            order.insert(0, first)
        for i in order:
            try:
                frame = as_frame(frames[i], index=i, model_dose=self.max_dose)
                den = self.denoise_frame(frame, tile_size=tile_size, pixel_size_pm=pixel_size_pm,
                                         ensemble=ensemble, dose=dose)
            except ValueError as exc:  # this frame's data: the others may be fine
                if on_bad_frame is None:
                    raise
                on_bad_frame(i, exc)
                continue
            yield i, den

    def denoise(
        self,
        frames: Any,
        *,
        tile_size: int | None = DEFAULT_TILE,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        pixel_size_pm: float | None = None,
        ensemble: bool = False,
        dose: float | None = None,
    ) -> np.ndarray:
        """Denoise a frame (H, W) or a stack (T, H, W); returns float32 counts.

        Parameters
        ----------
        frames : array-like
            Counts per pixel. Integer data are converted to float32; the
            caller's array is never modified.
        tile_size : int or None
            See :meth:`denoise_frame`.
        progress : callable, optional
            Called as ``progress(done, total)`` after each frame.
        should_stop : callable, optional
            Polled before each frame; returning True raises
            :class:`DenoisingCancelled`.
        pixel_size_pm : float, optional
            The frames' pixel size: frames finer than the model's range are
            binned into it (see :meth:`denoise_frame`).
        ensemble : bool
            Average over the 8 rotations and flips (see :meth:`denoise_frame`).
        dose : float, optional
            The counts per pixel the binning rule reads (see :meth:`iter_denoise`).

        Returns
        -------
        numpy.ndarray
            Same shape as ``frames``, float32.
        """
        shape = tuple(getattr(frames, "shape", np.shape(frames)))
        dtype = getattr(frames, "dtype", None) or np.asarray(frames).dtype
        single = check_stack_shape(shape, dtype)
        total = 1 if single else shape[0]
        out = np.empty(shape[-2:] if single else shape, dtype=np.float32)
        it = self.iter_denoise(frames, tile_size=tile_size, pixel_size_pm=pixel_size_pm,
                               ensemble=ensemble, dose=dose)
        for done in range(total):
            if should_stop is not None and should_stop():
                raise DenoisingCancelled(f"denoising cancelled after {done} of {total} frames")
            i, den = next(it)
            if single:
                out[...] = den
            else:
                out[i] = den
            if progress is not None:
                progress(done + 1, total)
        return out


class Blend(Denoiser):
    """A weighted average of denoisers: their outputs for a frame averaged with fixed weights.

    Each member denoises the frame its own way (splitting, binning, the ensemble)
    and the results are averaged. An average of bias-free estimators is bias-free
    with the filters averaged the same way, so the effective filter stays exact
    (:func:`napari_sbd.core.jacobian.effective_filter`).

    Parameters
    ----------
    members : sequence of (Denoiser, float)
        The denoisers and their weights (positive, summing to 1), on one device.
    name : str
        What the blend is called (a key of :data:`BLENDS` for the bundled ones).
    """

    def __init__(self, members: Sequence[tuple[Denoiser, float]], name: str = "blend") -> None:
        members = [(m, float(w)) for m, w in members]
        weights = np.array([w for _, w in members])
        if len(members) < 2 or not (weights > 0).all() or abs(weights.sum() - 1) > 1e-6:
            raise ValueError("a blend needs two or more denoisers with positive weights summing "
                             f"to 1 (got {list(weights)})")
        if len({str(m.device) for m, _ in members}) > 1:
            raise ValueError("the denoisers of a blend must be on one device")
        if any(isinstance(m, Blend) for m, _ in members):
            raise ValueError("a blend of blends: blend their members instead")
        self.members = members
        self.name = name
        first = members[0][0]
        self.device = first.device
        self.channels_last = first.channels_last
        self.network = first.network  # (only for what reads a network's flags: see level_of)
        self.receptive_radius = max(m.receptive_radius for m, _ in members)
        self.size_multiple = math.lcm(*(m.size_multiple for m, _ in members))
        self.tile_cap = None
        cards = [m.card for m, _ in members]
        self.metadata = {
            "architecture": "blend",
            "blend": name,
            "path": name,
            "members": [{"path": str(m.metadata.get("path", "")), "weight": w}
                        for m, w in members],
            # what the widgets show of a card: the members' common contrast and the single-point
            # member's pixel size (the one that does not bin)
            "contrast": cards[0].contrast if len({c.contrast for c in cards}) == 1 else "unknown",
            "pixel_size_pm": next((c.pixel_size_pm for c in cards if c.pixel_size_range_pm is None),
                                  cards[0].pixel_size_pm),
        }

    @property
    def max_dose(self) -> float | None:
        """The highest dose any member was trained at (for the "are these counts?" check)."""
        doses = [m.max_dose for m, _ in self.members if m.max_dose is not None]
        return max(doses) if doses else None

    def binning_for(self, pixel_size_pm: float | None, dose: float | None = None) -> int:
        """1: each member bins the frame itself (see :meth:`Denoiser.binning_for`)."""
        return 1

    def dose_split(self, frame: np.ndarray) -> tuple[int, float] | None:
        """Return the split of the first member that splits the frame (each splits its own way)."""
        return next((sp for m, _ in self.members if (sp := m.dose_split(frame)) is not None),
                    None)

    def split_plan(self, frame: np.ndarray, ensemble: bool = False) -> None:
        """None: a blend has no plan of its own; its members have theirs."""
        return None

    def level_of(self, frame: np.ndarray) -> None:
        """None: each member is given its own level when it runs."""
        return None

    def describe(self) -> str:
        """Return the blend in words: one line per member, then its field and device."""
        parts = [f"{self.name}: the outputs of {len(self.members)} models averaged"]
        for m, w in self.members:
            psnr = m.card.validation_psnr
            parts.append(f"{w:.0%}: {_member_name(m)} model, {trained_at(m.card)}"
                         + (f" (validation {psnr:.2f} dB)" if psnr is not None else ""))
        parts.append(f"receptive field {self.receptive_field} px; device {self.device}")
        return "\n".join(parts)

    def dose_fits(self, dose: float, dose_tolerance: float = 2.0) -> bool:
        """Whether every member knows frames of this dose (:meth:`Denoiser.dose_fits`)."""
        return all(m.dose_fits(dose, dose_tolerance) for m, _ in self.members)

    def compatibility_warnings(self, dose: float | None = None,
                               pixel_size_pm: float | None = None, **kwargs: Any) -> list[str]:
        """Return the members' warnings, each naming its member."""
        return [f"{_member_name(m)} model of the blend: {text}" for m, _ in self.members
                for text in m.compatibility_warnings(dose, pixel_size_pm, **kwargs)]

    @torch.inference_mode()
    def denoise_frame(self, frame: np.ndarray, *, tile_size: int | None = DEFAULT_TILE,
                      pixel_size_pm: float | None = None, ensemble: bool = False,
                      dose: float | None = None) -> np.ndarray:
        """Return the members' :meth:`Denoiser.denoise_frame`, averaged with the blend's weights."""
        acc = np.zeros(frame.shape, np.float64)
        for m, w in self.members:
            acc += w * m.denoise_frame(frame, tile_size=tile_size, pixel_size_pm=pixel_size_pm,
                                       ensemble=ensemble, dose=dose)
        return acc.astype(np.float32)


def _member_name(m: Denoiser) -> str:
    """Return a member's bundled name, or its file's name."""
    path = str(m.metadata.get("path", "") or "")
    bundled = next((n for n in BUNDLED if path and Path(path) == bundled_model_path(n)), None)
    return f"the {bundled}" if bundled else f"the {Path(path).name or 'unnamed'}"


def network_once(model: Denoiser, run: Callable[[Denoiser], np.ndarray],
                 cache: dict[int, np.ndarray]) -> np.ndarray:
    """Return ``run(model)``, each network run once: a blend's result is its members' averaged.

    For scoring several candidates on one frame where blends share members: ``cache``
    (by ``id`` of a model, empty for a new frame) keeps each member's result, and a
    blend combines them with its weights as :meth:`Blend.denoise_frame` does.
    """
    if isinstance(model, Blend):
        return sum((w * network_once(m, run, cache) for m, w in model.members),
                   np.zeros((), np.float64))
    if id(model) not in cache:
        cache[id(model)] = run(model)
    return cache[id(model)]


def load_blend(name: str, *, device: str | torch.device | None = "auto",
               loaded: dict[str, Denoiser] | None = None, fold: bool = True) -> Blend:
    """Build the bundled blend ``name`` (:data:`BLENDS`), reusing models in ``loaded`` by name."""
    if name not in BLENDS:
        raise CheckpointError(f"no blend is called {name!r}; blends: {', '.join(BLENDS)}")
    loaded = loaded if loaded is not None else {}
    members = []
    for member, w in BLENDS[name]:
        if member not in loaded:
            loaded[member] = load_model(member, device=device, fold=fold)
        members.append((loaded[member], w))
    return Blend(members, name)


def estimate_dose(frames: Any, max_frames: int = 4) -> float:
    """Mean counts per pixel per frame over the first few frames.

    Phase-contrast images conserve the mean intensity to first order, so the
    frame mean is a fair proxy for the vacuum dose (the median is not: at
    0.45 counts/pixel most pixels are 0).

    Parameters
    ----------
    frames : array-like
        (H, W) or (T, H, W) counts.
    max_frames : int
        Frames to average at most (keeps lazy stacks lazy).

    Returns
    -------
    float
        Mean counts per pixel per frame.
    """
    shape = tuple(getattr(frames, "shape", np.shape(frames)))
    if len(shape) == 2:
        return float(np.mean(np.asarray(frames, dtype=np.float64)))
    n = min(max_frames, shape[0])
    return float(np.mean([np.mean(np.asarray(frames[i], dtype=np.float64)) for i in range(n)]))


def binning_dose(frames: Any) -> float | None:
    """Return the dose the binning rule reads for every frame of a stack.

    :func:`estimate_dose` (the first frames, as the compatibility warnings read
    it), so that one movie is binned alike throughout; None where that is not a
    finite number (a damaged first frame: each frame's own mean decides then).
    """
    value = estimate_dose(frames)
    return value if math.isfinite(value) else None


def load_model(
    model: str | os.PathLike = "default",
    *,
    device: str | torch.device | None = "auto",
    fold: bool = True,
) -> Denoiser:
    """Load a trained denoiser: a bundled one by name, or a checkpoint path.

    Parameters
    ----------
    model : str or path-like
        "default" (best at 0.45 counts/pixel and 6.1 pm), "envelope" (one model
        for 0.1-5 counts/pixel and 4.8-10.5 pm; see :data:`BUNDLED`), a blend of
        bundled models (:data:`BLENDS`: a :class:`Blend`), or the path of a
        checkpoint written by ``napari-sbd-train``.
    device : str or torch.device
        "auto" (CUDA when available, else CPU), "cpu" or "cuda[:N]".
    fold : bool
        Fold BatchNorm into the convolutions for speed.

    Returns
    -------
    Denoiser
        Ready to call :meth:`Denoiser.denoise`.

    Raises
    ------
    CheckpointError
        When the file is missing, unreadable, foreign or inconsistent.
    """
    if isinstance(model, str) and model in BLENDS:
        return load_blend(model, device=device, fold=fold)
    if isinstance(model, str) and model in BUNDLED:
        path = bundled_model_path(model)
        if not path.exists():
            raise CheckpointError(
                f"no {model!r} model is bundled in this installation ({path} is missing); "
                "pass the path of a checkpoint trained with napari-sbd-train"
            )
    else:
        path = Path(model)
    net, meta = load_checkpoint(path)
    meta["path"] = str(path)
    return Denoiser(net, meta, device=device, fold=fold)


def doses_outside(den: Denoiser, doses: np.ndarray,
                  frames: list[int]) -> tuple[tuple[float, float] | None, list[int]]:
    """Return the span of the frames' doses and the frames whose dose the model was not trained for."""
    known = np.isfinite(doses)
    if not known.any():
        return None, []
    span = (float(doses[known].min()), float(doses[known].max()))
    return span, [f for f, d, k in zip(frames, doses, known) if k and not den.dose_fits(float(d))]


def dose_warning(den: Denoiser, outside: list[int], total: int,
                 span: tuple[float, float] | None) -> str:
    """Return one sentence naming the frames whose dose is outside the model's."""
    shown = ", ".join(map(str, outside[:10])) + (" ..." if len(outside) > 10 else "")
    trained = (f"{den.dose_range[0]:g}-{den.dose_range[1]:g}" if den.dose_range is not None
               else f"about {den.card.dose:g}")
    lo, hi = span or (float("nan"), float("nan"))
    return (f"{len(outside)} of {counted(total, 'frame')} {verb(len(outside), 'has', 'have')} "
            f"a dose outside the model's ({trained} "
            f"counts/pixel; frames span {lo:.3g}-{hi:.3g}): frames {shown}")
