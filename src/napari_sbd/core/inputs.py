"""Checks on the data handed to the denoiser and the analyses.

Every check raises :class:`InputError` with a message that names the problem
and the fix. Nothing here modifies the caller's array: frames are copied into
new float32 arrays.

Documented conversions (not errors): integer and float64 data become float32
counts; a single frame (H, W) is treated as a stack of one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MIN_FRAME_SIDE", "InputError", "as_frame", "check_stack_shape", "frame_range"]

# Smaller frames cannot hold even one atomic column at 6 pm/pixel; they are
# almost surely a wrong axis (a channel or a time axis taken for space).
MIN_FRAME_SIDE = 16


class InputError(ValueError):
    """The data cannot be denoised or analysed as given."""


class NotCountsError(InputError):
    """The data are far brighter than counts at the model's dose: detector units, not electrons."""


def real_values(values: Any, what: str = "the image") -> np.ndarray:
    """Return ``values`` as float64, refusing data that are not real numbers.

    numpy would drop a complex image's imaginary part with only a warning
    (an FFT or an exit wave from a simulator, taken for intensities) and
    read booleans as 0/1; each gets a message that names it instead.

    Parameters
    ----------
    values : array_like
        The data.
    what : str
        What they are, for the message ("the raw frame", "the estimate").

    Raises
    ------
    InputError
        Complex, boolean or non-numeric data.
    """
    arr = np.asarray(values)
    kind = arr.dtype.kind
    if kind == "c":
        raise InputError(f"{what} is complex-valued; it needs real intensities (an exit wave or "
                         "an FFT: take its squared modulus, abs(x)**2, if that is what you mean)")
    if kind == "b":
        raise InputError(f"{what} is boolean (a mask?); it needs intensities")
    if kind not in "uif":
        raise InputError(f"{what} has dtype {arr.dtype}; it needs numbers")
    return arr.astype(np.float64, copy=False)


def check_stack_shape(shape: tuple[int, ...], dtype: Any) -> bool:
    """Validate the shape and dtype of an image or stack before reading it.

    Parameters
    ----------
    shape : tuple of int
        Array shape.
    dtype : numpy dtype-like
        Array dtype.

    Returns
    -------
    bool
        True for a single frame (H, W), False for a stack (T, H, W).
    """
    dt = np.dtype(dtype)
    if dt.kind == "b":
        raise InputError("the image is boolean (a mask?); denoising needs counts per pixel")
    if dt.kind == "c":
        raise InputError("the image is complex-valued; denoising needs real counts per pixel")
    if dt.kind not in "uif":
        raise InputError(f"the image has dtype {dt}; denoising needs numbers (counts per pixel)")
    nd = len(shape)
    if nd in (3, 4) and shape[-1] in (3, 4) and min(shape[-3:-1]) >= MIN_FRAME_SIDE:
        kind = "RGB" if shape[-1] == 3 else "RGBA"
        raise InputError(
            f"the image looks like {kind} (shape {shape}, last axis of length {shape[-1]}); "
            "electron counts are a single channel: load the raw detector data, or convert "
            "to grey (e.g. take one channel) only if it really holds counts"
        )
    if nd < 2:
        raise InputError(f"expected a 2-D frame or a 3-D stack (T, H, W), got shape {shape}")
    if nd > 3:
        raise InputError(
            f"expected a 2-D frame or a 3-D stack (T, H, W), got {nd}-D data of shape {shape}; "
            "select one channel/position first so that only time, y and x remain"
        )
    h, w = shape[-2:]
    if h == 0 or w == 0 or (nd == 3 and shape[0] == 0):
        raise InputError(f"the image is empty (shape {shape})")
    if h < MIN_FRAME_SIDE or w < MIN_FRAME_SIDE:
        raise InputError(
            f"frames of {h}x{w} pixels are too small to denoise (minimum "
            f"{MIN_FRAME_SIDE}x{MIN_FRAME_SIDE}); check the axis order: frames must be (T, H, W)"
        )
    return nd == 2


def as_frame(
    frame: Any,
    *,
    index: int | None = None,
    model_dose: float | None = None,
    max_dose_ratio: float = 20.0,
) -> np.ndarray:
    """Return a new float32 copy of one frame of counts, or raise :class:`InputError`.

    Parameters
    ----------
    frame : array-like
        One (H, W) frame (numpy, memory-mapped, dask, ...).
    index : int, optional
        Frame number, for the message.
    model_dose : float, optional
        The highest dose the model was trained at (counts/pixel in vacuum). Data whose mean is
        more than ``max_dose_ratio`` times it are rejected: they are not counts
        at a dose the model can handle (a detector offset, unnormalised gain,
        or a summed stack).
    max_dose_ratio : float
        See ``model_dose``.

    Returns
    -------
    numpy.ndarray
        float32 (H, W) array that does not share memory with ``frame``.
    """
    where = "" if index is None else f" (frame {index})"
    src = np.asarray(frame)
    if src.dtype.kind == "f" and src.dtype.itemsize > 4 and src.size:
        finite = src[np.isfinite(src)]
        big = float(np.abs(finite).max(initial=0))
        if big > float(np.finfo(np.float32).max):  # compared as float64: no cast warning
            raise InputError(
                f"the image has values up to {big:.3g}{where}, beyond what float32 holds; these "
                "are not counts per pixel: check the file's scaling (gain, offset, units)"
            )
    arr = np.array(src, dtype=np.float32, copy=True)
    if arr.ndim != 2:
        raise InputError(f"expected a 2-D frame{where}, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise InputError(
            f"the image has {n} NaN or infinite pixels{where}; replace them (e.g. by 0 for "
            "dead pixels) before denoising: counts are finite"
        )
    lo = float(arr.min())
    if lo < 0:
        raise InputError(
            f"the image has negative values (minimum {lo:.3g}){where}; electron counts are "
            ">= 0: undo the dark/offset subtraction, or clip small negative noise to 0"
        )
    if model_dose is not None:
        mean = float(arr.mean())
        if mean > max_dose_ratio * model_dose:
            raise NotCountsError(
                f"the image's mean is {mean:.4g} counts/pixel{where}, {mean / model_dose:.0f}x "
                f"the highest dose the model was trained at ({model_dose:g} counts/pixel in "
                "vacuum); these do not "
                "look like counts at that dose: remove the detector offset and divide by the "
                "gain (counts per electron), or use a model trained at this dose"
            )
    return arr


class CalibratedFrames:
    """Detector frames seen as electron counts: ``(raw - offset) * electrons_per_count``.

    A lazy view: each frame is converted when it is read, the user's data are
    never modified, and memory does not grow with the stack. Values that the
    offset subtraction leaves slightly negative (read noise) are set to 0, as
    counts cannot be negative.

    Parameters
    ----------
    data : array-like
        (H, W) or (T, H, W) frames in detector units.
    offset : float
        Detector offset (dark level), in detector units.
    electrons_per_count : float
        Electrons per detector unit (1 / gain), > 0.
    """

    def __init__(self, data: Any, offset: float = 0.0, electrons_per_count: float = 1.0) -> None:
        if not (np.isfinite(offset) and np.isfinite(electrons_per_count) and electrons_per_count > 0):
            raise InputError(
                f"calibration offset {offset} and electrons per count {electrons_per_count}: the "
                "offset must be a number and electrons per count a positive number"
            )
        self.data = data
        self.offset = float(offset)
        self.electrons_per_count = float(electrons_per_count)
        self.shape = tuple(data.shape)
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        raw = np.asarray(self.data[index], dtype=np.float32)
        out = (raw - np.float32(self.offset)) * np.float32(self.electrons_per_count)
        return np.maximum(out, 0, out=out)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def calibrated(data: Any, offset: float = 0.0, electrons_per_count: float = 1.0) -> Any:
    """Return ``data`` itself when the calibration is the identity, else a :class:`CalibratedFrames` view."""
    if offset == 0 and electrons_per_count == 1:
        return data
    return CalibratedFrames(data, offset, electrons_per_count)


def frame_range(frames: str | slice | None, n: int) -> range:
    """Return the frames ``"START:STOP"`` (Python slice semantics) selects of an ``n``-frame movie.

    Parameters
    ----------
    frames : str, slice or None
        ``"10:20"``, ``"10:"``, ``":-5"``, a slice, or None for all frames.
    n : int
        Frames in the movie.

    Returns
    -------
    range

    Raises
    ------
    InputError
        Not START:STOP, or a range that selects no frame.
    """
    if frames is None:
        return range(n)
    if isinstance(frames, str):
        try:
            parts = [int(p) if p.strip() else None for p in frames.split(":")]
        except ValueError:
            raise InputError(f"frames {frames!r}: use START:STOP (e.g. 0:100)") from None
        if len(parts) != 2:
            raise InputError(f"frames {frames!r}: use START:STOP (e.g. 0:100)")
        frames = slice(*parts)
    r = range(*frames.indices(n))
    if len(r) == 0:
        raise InputError(f"the frame range selects no frame of the {n}-frame movie")
    return r
