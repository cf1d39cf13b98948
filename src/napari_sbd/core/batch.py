"""Headless denoising of long movies into a resumable zarr store.

Layout of an output store (a zarr v3 group, i.e. a folder)::

    OUT.zarr/denoised        (T, H, W) float32, one chunk per frame
    OUT.zarr/llr_map         (T, H, W) float32 (with likelihood=True)
    OUT.zarr/columns.csv     the movie's columns (with columns=True): one row per column and
                             frame, linked into tracks (core.tracking): track, frame, y_nm,
                             x_nm, position_error_pm, row_px, col_px, sigma_a, peak_counts,
                             contrast_counts, intensity_counts_px, llr, class
    OUT.zarr/columns.h5      the same table in HDF5, with each field's unit (io extra)
    OUT.zarr/.sbd/STORE         marks the folder as a napari-sbd store
    OUT.zarr/.sbd/done/NNNNNN   a marker per finished frame
    OUT.zarr/.sbd/bad/NNNNNN    a frame that could not be denoised (skip_bad_frames): why;
                                its planes are NaN and it has no columns
    OUT.zarr/.sbd/columns/NNNNNN.csv   per-frame column rows

The group's attributes hold the model's metadata, the input's path, shape and
pixel size, the exact command, and ``complete``. A frame counts as done only
when its marker exists, and the marker is written after the frame's chunks:
a process killed at any moment leaves at worst a half-written frame without a
marker, which the next run of the same command rewrites. Frames are processed
one at a time from a memory-mapped input, so memory does not grow with the
movie's length. Several processes may fill one store at once (``frames``
ranges): each frame is its own chunk and marker.

``overwrite`` replaces only a store this module wrote (its ``.sbd/STORE``
marker present, nothing else in it but the store's own entries, no symbolic
link anywhere), and never a folder that holds the input or the model: the old
store is moved aside, the new one put in place, and only then is the old one
deleted. Anything else at the output path is refused.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sbd.core.analysis import analyse_frame, write_columns_csv
from napari_sbd.core.files import atomic_write
from napari_sbd.core.inference import (
    BLENDS,
    DEFAULT_TILE,
    Denoiser,
    dose_warning,
    doses_outside,
    estimate_dose,
    load_model,
)
from napari_sbd.core.inputs import (
    InputError,
    NotCountsError,
    as_frame,
    calibrated,
    check_stack_shape,
    frame_range,
)
from napari_sbd.core.selection import auto_model
from napari_sbd.core.text import counted, verb
from napari_sbd.core.tracking import track_rows, write_tracks

__all__ = ["BatchError", "BatchResult", "denoise_movie", "open_movie"]

STORE_MARKER = "STORE"  # .sbd/STORE: written by _open_or_create, and by nothing else
STORE_ENTRIES = frozenset({"zarr.json", "denoised", "llr_map", "dose", "columns.csv", "columns.h5",
                           ".sbd"})


class BatchError(ValueError):
    """The job cannot start or continue; the message names the problem and the fix."""


@dataclass
class BatchResult:
    """What a run did."""

    output: Path
    frames_total: int
    frames_done_now: int
    frames_skipped: int
    complete: bool
    warnings: list[str]
    dose_estimate: float | None = None  # mean counts/pixel/frame of the first frames
    # the lowest and highest mean counts/pixel of a single frame (the store's "dose" array)
    dose_span: tuple[float, float] | None = None
    model_choice: str | None = None  # what model="auto" chose, and why
    bad_frames: list[int] = field(default_factory=list)  # left NaN (skip_bad_frames), any run


def open_movie(path: str | os.PathLike,
               block: int | None = None) -> tuple[Any, float | None, dict[str, Any]]:
    """Open a movie lazily with the plugin's readers: (array-like, pixel size pm, layer metadata).

    A 4-D (series, T, H, W) file holds several movies: ``block`` picks one.
    """
    from napari_sbd.io.readers import TIFF, ReaderError, TiffFrames, read_file

    p = Path(path)
    if not p.exists():
        raise BatchError(f"input {p} does not exist")
    try:
        data, kwargs, _ = read_file(p)[0]
    except (ReaderError, ValueError) as exc:
        raise BatchError(f"cannot read {p}: {exc}") from None
    shape = tuple(data.shape)
    if len(shape) == 4:
        if block is None or not 0 <= block < shape[0]:
            raise BatchError(
                f"{p} holds {shape[0]} movies of {shape[1]} frames (shape {shape}): choose one "
                f"with --block I, I from 0 to {shape[0] - 1}"
                + ("" if block is None else f" (got {block})"))
    elif block is not None:
        raise BatchError(f"--block picks a movie of a 4-D file; {p} has shape {shape}")
    if p.suffix.lower() in TIFF and len(shape) in (3, 4):
        data = TiffFrames(p, block)
    elif block is not None:
        data = data[block]
    meta = kwargs.get("metadata") or {}
    return data, meta.get("pixel_size_pm"), meta


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _identity(input_path: Path, shape: tuple[int, ...], model: Denoiser, columns: bool,
              likelihood: bool, tile: int | None, ensemble: bool = False,
              calibration: tuple[float, float] = (0.0, 1.0),
              analysis: dict[str, Any] | None = None,
              pixel_size_pm: float | None = None, block: int | None = None) -> dict[str, Any]:
    st = input_path.stat()
    # options added later are recorded only when set: older stores stay resumable
    later: dict[str, Any] = {"ensemble": True} if ensemble else {}
    if tuple(calibration) != (0.0, 1.0):
        later["calibration"] = [float(v) for v in calibration]
    if analysis:  # column detection and linking options (columns of a resumed job agree)
        later["analysis"] = {k: analysis[k] for k in sorted(analysis)}
    if pixel_size_pm is not None:  # given instead of the file's: binning and positions follow it
        later["pixel_size_pm"] = float(pixel_size_pm)
    if block is not None:  # the movie of a 4-D file
        later["block"] = int(block)
    model_path = Path(model.metadata.get("path", ""))
    sha = _file_sha256(model_path) if model_path.is_file() else None
    if model.metadata.get("members"):  # a blend: its members' files and weights
        sha = hashlib.sha256(json.dumps(
            [[_file_sha256(Path(m["path"])) if Path(m["path"]).is_file() else m["path"],
              m["weight"]] for m in model.metadata["members"]]).encode()).hexdigest()
    return {
        "input": str(input_path.resolve()),
        "input_bytes": st.st_size,
        "input_mtime_ns": st.st_mtime_ns,
        "shape": list(shape),
        "model_sha256": sha,
        "columns": columns,
        "likelihood": likelihood,
        "tile": tile,
        **later,
    }


def _parse_frames(frames: str | slice | None, n: int) -> range:
    try:
        return frame_range(frames, n)
    except InputError as exc:
        raise BatchError(f"--{exc}" if str(exc).startswith("frames") else str(exc)) from None


def denoise_movie(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: str | os.PathLike | Denoiser = "auto",
    device: str = "auto",
    frames: str | slice | None = None,
    columns: bool = False,
    likelihood: bool = False,
    vacuum_level: float | None = None,
    tile_size: int | None = DEFAULT_TILE,
    overwrite: bool = False,
    command: str = "",
    progress: Callable[[int, int], None] | None = None,
    ensemble: bool = False,
    offset: float | None = None,
    electrons_per_count: float | None = None,
    detect: dict[str, Any] | None = None,
    link: dict[str, Any] | None = None,
    pixel_size_pm: float | None = None,
    block: int | None = None,
    skip_bad_frames: bool = False,
) -> BatchResult:
    """Denoise a movie frame by frame into a zarr store, resuming where a previous run stopped.

    Parameters
    ----------
    input_path : path-like
        TIFF stack (memory-mapped), MRC, DM3/DM4, EMD or SER.
    output : path-like
        The zarr store to create (conventionally ``*.zarr``).
    model : str, path-like or Denoiser
        "auto" (the bundled model for the movie's dose, pixel size and counts:
        :func:`~napari_sbd.core.selection.auto_model`), "default",
        "envelope", "high-dose", "black", a checkpoint path, or a loaded model.
    device : str
        "auto", "cpu" or "cuda[:N]".
    frames : str or slice, optional
        ``"START:STOP"`` range of frames for this process (all by default).
    columns : bool
        Also detect columns and write their table (with LLRs).
    likelihood : bool
        Also write the LLR map stack (implies columns).
    vacuum_level : float, optional
        lambda0 for the LLRs; found per frame in the vacuum when omitted.
    tile_size : int or None
        Inference tile (see :meth:`Denoiser.denoise_frame`).
    overwrite : bool
        Replace an existing output that is not a resumable run of this job.
    command : str
        The command line, stored in the output.
    progress : callable, optional
        ``progress(done, total)`` after each frame of this run's range.
    ensemble : bool
        "Best" quality: average over the 8 rotations and flips of each frame
        (8x the time; see :meth:`Denoiser.denoise_frame`).
    offset, electrons_per_count : float, optional
        Detector calibration: frames are read as ``(raw - offset) *
        electrons_per_count`` (see :class:`napari_sbd.core.inputs.CalibratedFrames`).
        Omitted: the file's own electron calibration where it records one (DM
        brightness in electrons), else 0 and 1 (counted data).
    detect : dict, optional
        Options of :func:`~napari_sbd.core.columns.detect_columns` (``spacing_a``,
        ``polarity``, ``threshold``...); defaults read everything from each frame.
    link : dict, optional
        Options of :func:`~napari_sbd.core.tracking.link_columns`
        (``max_displacement_a``, ``memory``).
    pixel_size_pm : float, optional
        The movie's pixel size in pm, instead of the file's. A file that
        records none (a plain TIFF, an MRC with a bad header) and no value
        here: the model's pixel size is assumed for the model choice, the
        binning into its range and the column positions, and a warning says so.
    block : int, optional
        The movie of a 4-D (series, T, H, W) file to denoise (required there).
    skip_bad_frames : bool
        A frame that cannot be denoised (NaN, negative or not counts: a damaged
        or dropped frame) is left NaN in the store, without columns, its reason
        recorded, and the job goes on; otherwise it stops the job there (the
        frames before it are kept). Either way the store counts it only once
        skipped: a later run does not try it again.

    Returns
    -------
    BatchResult
        Counts of frames done, skipped, and whether the store is complete.
    """
    input_path = Path(input_path)
    out = Path(output)
    with warnings.catch_warnings(record=True) as read_notes:  # the reader's: to our warnings
        warnings.simplefilter("always")
        data, pixel_size, file_meta = open_movie(input_path, block)
    if pixel_size_pm is not None:
        if not (np.isfinite(pixel_size_pm) and pixel_size_pm > 0):
            raise BatchError(f"the pixel size must be a positive number of pm, got {pixel_size_pm}")
        pixel_size = float(pixel_size_pm)
    file_cal = file_meta.get("intensity_calibration") or {}
    if offset is None:
        offset = float(file_cal.get("offset", 0.0))
    if electrons_per_count is None:
        electrons_per_count = float(file_cal.get("electrons_per_count", 1.0))
    try:
        single = check_stack_shape(tuple(data.shape), data.dtype)
    except InputError as exc:
        raise BatchError(f"{input_path}: {exc}") from None
    if single:
        data = data[None]
    try:
        data = calibrated(data, offset, electrons_per_count)
    except InputError as exc:
        raise BatchError(str(exc)) from None
    n, h, w = (int(v) for v in data.shape)
    if out.resolve() == input_path.resolve():
        raise BatchError(f"the output {out} is the input itself: choose a new file name")
    dose_est = estimate_dose(data)  # mean counts/pixel of the first frames
    todo = _parse_frames(frames, n)
    model_choice = None
    # auto's choice denoises the movie's first frames, and then the first frame of the range
    # is checked, before anything is created: both say how to calibrate data not in counts
    try:
        if isinstance(model, str) and model == "auto":  # from the movie's dose and pixel size
            model, why = auto_model(data, pixel_size, dose_est, device=device)
            what = (f"the blend '{model}' of bundled models" if model in BLENDS
                    else f"the bundled '{model}' model")
            model_choice = f"auto chose {what}: {why}"
        try:
            den = model if isinstance(model, Denoiser) else load_model(model, device=device)
        except ValueError as exc:
            raise BatchError(str(exc)) from None
        as_frame(data[todo[0]], index=todo[0], model_dose=den.max_dose)
    except NotCountsError as exc:
        raise BatchError(
            f"{input_path}: {exc}. Give the detector's dark level and electrons per unit of the "
            f"file (offset= and electrons_per_count=; napari-sbd-denoise --offset "
            f"--electrons-per-count); now offset {offset:g}, electrons per count "
            f"{electrons_per_count:g}") from None
    except InputError as exc:
        raise BatchError(f"{input_path}: {exc}") from None
    files = den.metadata.get("members", [den.metadata])  # a blend: its members' checkpoints
    protected = [input_path] + [Path(m["path"]) for m in files if m.get("path")]
    columns = columns or likelihood
    detect, link = dict(detect or {}), dict(link or {})
    ident = _identity(input_path, (n, h, w), den, columns, likelihood, tile_size, ensemble,
                      (offset, electrons_per_count), {**detect, **link}, pixel_size_pm, block)
    group = _open_or_create(out, ident, den, pixel_size, command, overwrite, likelihood, (n, h, w),
                            protected)
    state = out / ".sbd"
    done_dir = state / "done"
    bad_dir = state / "bad"
    cols_dir = state / "columns"
    notes: list[str] = [str(w.message) for w in read_notes if issubclass(w.category, UserWarning)]
    # the columns' nm positions: the movie's pixel size, else the model's (said, never silent)
    px = float(pixel_size or den.pixel_size_pm)
    if pixel_size is None:
        uses = ("the model choice and the column positions (nm) assume" if columns
                else "the model choice assumes")
        notes.append(f"{input_path.name} records no pixel size: {uses} the model's, "
                     f"{px:g} pm; give the real one (napari-sbd-denoise --pixel-size PM)")
    notes += [f"model: {w}" for w in den.compatibility_warnings(dose_est, pixel_size)]
    done_now, llr_warned, no_lattice = 0, False, []
    arr = group["denoised"]
    doses = _dose_array(group, n)  # a store made before the array existed gets it now
    lmap_arr = group["llr_map"] if likelihood else None

    bad_now = 0

    def advance(bad: bool = False) -> None:
        nonlocal done_now, bad_now
        if bad:
            bad_now += 1
        else:
            done_now += 1
        if progress is not None:
            progress(skipped + done_now + bad_now, len(todo))

    def store_frame(i: int, result: np.ndarray) -> None:
        nonlocal llr_warned
        arr[i] = result
        # each frame's own dose: it drifts within a movie (beam current, focus, drift)
        doses[i] = float(np.mean(np.asarray(data[i], dtype=np.float64)))
        if columns:
            frame = as_frame(data[i], index=i, model_dose=den.max_dose)
            found = analyse_frame(frame, result, px, frame=i, vacuum_level=vacuum_level,
                                  detect=detect, strict=False)
            if found.llr_error and not llr_warned:  # once: every frame has the same cause
                notes.append(f"frame {i}: LLRs left empty: {found.llr_error}")
                llr_warned = True
            if found.no_lattice:
                no_lattice.append(i)
            if lmap_arr is not None:
                lmap_arr[i] = found.map
            # the same table as the dock's export
            write_columns_csv(cols_dir / f"{i:06d}.csv", found.table())
        (done_dir / f"{i:06d}").touch()  # after the frame's chunks: a kill redoes it
        advance()

    def finished(i: int) -> bool:
        return (done_dir / f"{i:06d}").exists() or (bad_dir / f"{i:06d}").exists()

    def skip(i: int, exc: ValueError) -> None:
        arr[i] = np.full((h, w), np.nan, np.float32)
        if lmap_arr is not None:
            lmap_arr[i] = np.full((h, w), np.nan, np.float32)
        doses[i] = np.nan
        bad_dir.mkdir(exist_ok=True)
        # the reason, after the frame's chunks, as its marker: a kill before it redoes the frame
        atomic_write(bad_dir / f"{i:06d}", lambda tmp: Path(tmp).write_text(f"{exc}\n"))
        advance(bad=True)

    # the first run's thread count, for this job only: CPU convolutions sum in a
    # thread-dependent order, and a resumed store must be bit-identical
    with _torch_threads(group.attrs["napari_sbd"].get("torch_threads")):
        pending = [i for i in todo if not finished(i)]
        skipped = len(todo) - len(pending)
        if progress is not None and skipped:
            progress(skipped, len(todo))
        results = den.iter_denoise(data, indices=pending, tile_size=tile_size,
                                   pixel_size_pm=pixel_size, ensemble=ensemble,
                                   on_bad_frame=skip if skip_bad_frames else None)
        try:
            for i, result in results:
                store_frame(i, result)
        except InputError as exc:
            raise BatchError(
                f"{input_path}: {exc}. The frames before it are kept; to leave such frames "
                "empty (NaN) and go on, run again with --skip-bad-frames "
                "(skip_bad_frames=True)") from None
    bad = [i for i in todo if (bad_dir / f"{i:06d}").exists()]
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        first = (bad_dir / f"{bad[0]:06d}").read_text().strip()
        notes.append(f"{counted(len(bad), 'frame')} could not be denoised and "
                     f"{verb(len(bad), 'is', 'are')} left NaN, without "
                     f"columns: {shown} (frame {bad[0]}: {first}; each reason in "
                     f"{bad_dir})")
    if no_lattice:
        shown = ", ".join(map(str, no_lattice[:10])) + (" ..." if len(no_lattice) > 10 else "")
        notes.append(f"no lattice found (no columns) in {counted(len(no_lattice), 'frame')}: {shown}")
    good = [i for i in todo if i not in set(bad)]
    frame_doses = np.asarray(doses[:], dtype=np.float64)[good]
    span, outside = doses_outside(den, frame_doses, good)
    # every frame outside is what the movie's warning above says already
    if outside and (len(outside) < len(todo) or den.dose_fits(dose_est)):
        notes.append(dose_warning(den, outside, len(todo), span)
                        + "; per-frame doses are in the store's 'dose' array")
    complete = all(finished(i) for i in range(n))
    if complete:
        all_bad = [i for i in range(n) if (bad_dir / f"{i:06d}").exists()]
        if columns:
            _merge_columns(cols_dir, out / "columns.csv", n, px, link, set(all_bad))
        attrs = dict(group.attrs["napari_sbd"])
        attrs["complete"] = True
        attrs["bad_frames"] = all_bad  # left NaN: readers of the store need not list .sbd/bad
        group.attrs["napari_sbd"] = attrs
    return BatchResult(out, n, done_now, skipped, complete, notes, dose_est, span, model_choice,
                       bad)


def _dose_array(group: Any, n: int) -> Any:
    """Return the store's per-frame dose (mean counts/pixel of each raw frame; NaN until done)."""
    if "dose" not in group:
        arr = group.create_array("dose", shape=(n,), chunks=(n,), dtype="float64",
                                 fill_value=np.nan)
        arr.attrs["units"] = "mean counts per pixel of each raw frame (after calibration)"
    return group["dose"]


def replaceable_store(out: Path, protected: Sequence[Path] = ()) -> str | None:
    """Why ``out`` may not be replaced by ``--overwrite``; None when it may.

    Only a store this module wrote is ours to delete: a folder with the
    ``.sbd/STORE`` marker, no entry a store does not have (a user's notes put
    inside it are not ours), no symbolic link anywhere inside, and not holding
    (or being) any of the ``protected`` paths (the input, the model).
    """
    if out.is_symlink():
        return "it is a symbolic link (--overwrite never replaces links or what they point to)"
    if not out.is_dir():
        return "it is a file, not a napari-sbd store (--overwrite only replaces stores it wrote)"
    real = out.resolve()
    for p in protected:
        try:
            Path(p).resolve().relative_to(real)
        except ValueError:
            continue
        return f"it holds {p}, which this job reads"
    if not (out / ".sbd" / STORE_MARKER).is_file():
        return "it is not a store written by napari-sbd-denoise (no .sbd/STORE marker)"
    foreign = sorted(e.name for e in out.iterdir() if e.name not in STORE_ENTRIES)
    if foreign:
        return f"it holds files napari-sbd did not write ({', '.join(foreign[:3])})"
    for root, dirs, files in os.walk(out):
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                return f"it contains a symbolic link ({os.path.join(root, name)})"
    return None


def _open_or_create(out: Path, ident: dict, den: Denoiser, pixel_size: float | None, command: str,
                    overwrite: bool, likelihood: bool, shape: tuple[int, int, int],
                    protected: Sequence[Path] = ()):
    """Open the store of this job (resume) or create it, atomically.

    The new store is built in a temporary sibling folder and renamed into
    place: of several processes starting the same job at once, one rename wins
    and the others open the winner's store, never wiping each other's work.
    """
    import zarr

    old = None
    if out.exists() or out.is_symlink():
        group = _resumable(out, ident) if out.is_dir() and not out.is_symlink() else None
        if group is not None:
            return group
        if not overwrite:
            previous = _job_of(out)
            what = ("a different napari-sbd job" + _job_difference(previous.get("job"), ident)
                    if previous else "something that is not a napari-sbd output")
            raise BatchError(
                f"the output {out} already exists and holds {what}; choose another name, or pass "
                "--overwrite to replace it"
            )
        why = replaceable_store(out, protected)
        if why is not None:
            raise BatchError(f"--overwrite refused: {out} is not replaced because {why}; "
                             "choose another output name")
        old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    tmp = out.with_name(f".{out.name}.creating-{os.getpid()}")
    try:
        group = zarr.open_group(str(tmp), mode="w")
        _n, h, w = shape
        group.create_array("denoised", shape=shape, chunks=(1, h, w), dtype="float32",
                           fill_value=np.nan)
        if likelihood:
            group.create_array("llr_map", shape=shape, chunks=(1, h, w), dtype="float32",
                               fill_value=np.nan)
        group.attrs["napari_sbd"] = {
            "job": ident,
            "command": command,
            "pixel_size_pm": pixel_size,
            "model": json.loads(json.dumps(den.metadata, default=str)),
            "units": "counts per pixel per frame",
            "torch_threads": __import__("torch").get_num_threads(),
            "complete": False,
        }
        (tmp / ".sbd" / "done").mkdir(parents=True, exist_ok=True)
        (tmp / ".sbd" / "columns").mkdir(parents=True, exist_ok=True)
        (tmp / ".sbd" / STORE_MARKER).write_text("napari-sbd-denoise store; safe to replace with "
                                                 "--overwrite\n")
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BatchError(f"cannot create the output {out}: {exc.strerror or exc} "
                         f"({exc.filename or tmp}); check the folder's free space and "
                         "permissions") from None
    if old is not None:
        os.rename(out, old)  # aside first: the replacement below cannot fail half-way
    try:
        os.rename(tmp, out)
    except OSError:  # another process created it first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            os.rename(old, out)
            old = None
        group = _resumable(out, ident)
        if group is None:
            raise BatchError(f"the output {out} appeared meanwhile and holds another job") from None
        return group
    finally:
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)
    return zarr.open_group(str(out), mode="r+")


def _job_of(out: Path) -> dict | None:
    import zarr

    try:
        job = zarr.open_group(str(out), mode="r").attrs.get("napari_sbd")
        return dict(job) if isinstance(job, dict) and job else None
    except Exception:  # noqa: BLE001 - not a zarr store at all
        return None


# How a job's recorded options read in words, and the option that sets each
_JOB_OPTIONS = {
    "input": "input file", "input_bytes": "input file's size", "input_mtime_ns":
    "input file's modification time", "shape": "input's shape", "model_sha256": "model (--model)",
    "columns": "--columns", "likelihood": "--likelihood", "tile": "--tile",
    "ensemble": "--quality", "calibration": "--offset/--electrons-per-count",
    "analysis": "column options", "pixel_size_pm": "--pixel-size", "block": "--block",
}


def _job_difference(old: Any, new: dict) -> str:
    """' (made with --tile 1024, now 2048)': what differs from the stored job, for a resume."""
    if not isinstance(old, dict):
        return ""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if not keys:
        return ""
    shown = []
    for k in keys[:3]:
        name = _JOB_OPTIONS.get(k, k)
        if k in ("input_bytes", "input_mtime_ns", "model_sha256"):  # values say nothing to a user
            shown.append(f"another {name}")
        else:
            shown.append(f"{name} {_option_text(k, old.get(k))}, now "
                         f"{_option_text(k, new.get(k))}")
    return (" (made with " + "; ".join(shown) + (" ..." if len(keys) > 3 else "")
            + ": the same options resume it)")


def _option_text(key: str, value: Any) -> str:
    if key == "ensemble":
        return "best" if value else "fast"
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "unset"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _resumable(out: Path, ident: dict):
    """Return the store at ``out`` opened for writing if it holds this very job, else None."""
    import zarr

    previous = _job_of(out)
    if not previous or previous.get("job") != ident:
        return None
    return zarr.open_group(str(out), mode="r+")


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run with ``n`` PyTorch threads (None: unchanged), and give the caller's back after."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _merge_columns(folder: Path, target: Path, n: int, pixel_size_pm: float,
                   link: dict[str, Any], bad: set[int]) -> None:
    """Link the frames' tables into the movie's (a track per column), CSV and HDF5."""
    tables: list[list[dict[str, Any]]] = []
    for i in range(n):
        if i in bad:  # skipped (skip_bad_frames): no columns
            tables.append([])
            continue
        with open(folder / f"{i:06d}.csv", newline="") as fh:
            tables.append([{k: v if k == "class" else int(v) if k == "frame" else float(v)
                            for k, v in r.items()} for r in csv.DictReader(fh)])
    write_tracks(target, track_rows(tables, pixel_size_pm, **link))
