"""Dock widget: denoise an image layer frame by frame with a trained network."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QProgressBar

from napari_sbd.core.checkpoint import CheckpointError
from napari_sbd.core.inference import (
    BLENDS,
    DEFAULT_TILE,
    Denoiser,
    choose_bundled_model,
    dose_warning,
    doses_outside,
    estimate_contrast,
    estimate_dose,
)
from napari_sbd.core.inputs import (
    InputError,
    NotCountsError,
    calibrated,
    check_stack_shape,
    frame_range,
)
from napari_sbd.core.selection import auto_candidates, auto_read
from napari_sbd.core.text import counted
from napari_sbd.widgets._layers import (
    DockWidget,
    copy_geometry,
    current_frame_index,
    dock_layout,
    image_layers,
    leading_index,
    pixel_size_pm,
    stack_geometry,
    unique_layer_name,
)
from napari_sbd.widgets._model import FILE_CHOICE, Failure, ModelPicker, wrap

__all__ = ["FILE_CHOICE", "QUALITY", "DenoiseWidget"]

QUALITY = {"fast": False, "best (8x slower)": True}  # label -> ensemble
FRAME_CHOICES = {"all": "all", "the frame on screen": "current", "range": "range"}  # label -> kind


class DenoiseWidget(DockWidget):
    """Pick an image layer and a model; denoise into ``<name> denoised``.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.output_layer: Image | None = None
        self._denoiser: Denoiser | None = None  # the running (or last) job's model
        self._setting: tuple[str, float, float | None] = ("", 0.0, None)  # layer, dose, pixel

        self.layer_combo = ComboBox(label="image", choices=lambda _w: image_layers(self.viewer),
                                    tooltip="the raw frame or stack to denoise (counts, or "
                                    "detector units with the offset and electrons per count "
                                    "below); the layer itself is never changed")
        self.model = ModelPicker()
        # short names used by scripts and tests
        self.model_combo, self.model_file = self.model.source, self.model.file
        self.tile_spin = SpinBox(label="tile (px)", min=64, max=8192, step=64, value=DEFAULT_TILE,
                                 tooltip="pixels per side processed at once: smaller tiles use "
                                 "less memory, the result is the same")
        self.quality = ComboBox(label="quality", choices=list(QUALITY), value="fast",
                                tooltip="best: average the network over the 8 rotations and "
                                "flips of each frame (about +0.5 dB, 8x the time)")
        self.offset = FloatSpinBox(label="offset", min=-1e6, max=1e6, step=1.0, value=0.0,
                                   tooltip="detector offset (dark level) in the file's units, "
                                   "subtracted before denoising; 0 for counted data")
        self.gain = FloatSpinBox(label="electrons per count", min=1e-6, max=1e6, step=0.0001,
                                 value=1.0, tooltip="electrons per unit of the file (1 / gain); "
                                 "1 for counted data")
        self.pixel = FloatSpinBox(
            label="pixel size (pm)", min=0.0, max=1000.0, step=0.1, value=0.0,
            tooltip="the layer's pixel size, read from its scale or the file; 0: unknown (the "
            "model's is assumed, with a warning). It picks the model on auto and bins finer "
            "frames into the model's range; the result keeps it for the Columns dock")
        self.frames_combo = ComboBox(
            label="frames", choices=list(FRAME_CHOICES), value="all",
            tooltip="a stack's frames to denoise: all, only the frame on screen (a quick look), "
            "or a range START:STOP (Python-style, STOP excluded)")
        self.range_edit = LineEdit(label="range (START:STOP)", value="0:10",
                                   tooltip="frames START to STOP-1 (frames: range), e.g. 0:10; "
                                   "an empty end runs to the last frame")
        self.dose_note = Label(value="")
        self.run_button = PushButton(text="Denoise",
                                     tooltip="denoise into a new layer (the frame on screen "
                                     "first); an earlier result is never replaced")
        self.cancel_button = PushButton(text="Cancel", enabled=False,
                                        tooltip="stop after the current frame; the layer keeps "
                                        "the frames done and says so in its name")
        self.form = Container(
            widgets=[
                self.layer_combo,
                self.model,
                self.quality,
                self.tile_spin,
                self.frames_combo,
                self.range_edit,
                self.offset,
                self.gain,
                self.pixel,
                self.dose_note,
                self.run_button,
                self.cancel_button,
            ]
        )
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        dock_layout(self, self.form, self.progress)

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.follow_layers(self._reset_layers)
        self.layer_combo.changed.connect(self._file_calibration)
        for w in (self.layer_combo, self.offset, self.gain, self.pixel, self.model.source):
            w.changed.connect(self._show_dose)
        # the range is asked for only when "range" is chosen
        self.frames_combo.changed.connect(self._show_range)
        self._show_range()
        self._file_calibration()
        self._show_dose()

    @property
    def info(self) -> Label:
        """The message line under the model (metadata, or the last problem)."""
        return self.model.info

    def load_denoiser(self, dose: float | None = None, pixel_size_pm: float | None = None,
                      contrast: str | None = None, envelope: str | None = None) -> Denoiser:
        """Return the selected model (see :meth:`ModelPicker.load`; auto: for these data)."""
        return self.model.load(dose, pixel_size_pm, contrast, envelope)

    def _reset_layers(self, _event: Any = None) -> None:
        self.layer_combo.reset_choices()

    def counts(self, layer: Any) -> Any:
        """Return the layer's data as electron counts (the offset and electrons per count applied)."""
        return calibrated(layer.data, self.offset.value, self.gain.value)

    def _file_calibration(self, _value: Any = None) -> None:
        """Fill offset and electrons per count from the file's own calibration, when it has one.

        The pixel size too: the layer's own, or 0 (unknown) where it has none.
        """
        layer = self.layer_combo.value
        self.pixel.value = (pixel_size_pm(layer) or 0.0) if layer is not None else 0.0
        cal = ((getattr(layer, "metadata", None) or {}).get("intensity_calibration")
               if layer is not None else None)
        if cal:
            self.offset.value = float(cal["offset"])
            self.gain.value = float(cal["electrons_per_count"])
            show_info(f"'{layer.name}': offset {cal['offset']:g} and {cal['electrons_per_count']:g} "
                      f"electrons per count, from the file's calibration ({cal['units']})")

    def _show_dose(self, _value: Any = None) -> None:
        """Show the dose the calibration implies, auto's pick and the model's warnings, before running."""
        layer = self.layer_combo.value
        if layer is None or getattr(layer, "rgb", False) or layer.data.ndim not in (2, 3):
            self.dose_note.value = ""
            return
        counts = self.counts(layer)  # a lazy view: read once for the dose and the contrast
        try:
            dose = estimate_dose(counts, max_frames=2)
        except (InputError, ValueError) as exc:
            self._note(str(exc))
            return
        note = f"{dose:.3g} electrons/pixel/frame on average (first frames)"
        pixel, contrast = float(self.pixel.value) or None, None
        if self.model.is_auto:  # which model auto will take, before anything runs
            pair = auto_candidates(dose, pixel)
            if pair:  # the choice runs both networks: said now, decided when it runs
                note += (f"; auto will take the bundled '{pair[0]}' or '{pair[1]}' model, "
                         "whichever better predicts counts held out of the first frame")
            else:
                contrast = estimate_contrast(counts, pixel)
                note += (f"; auto will take the bundled "
                         f"'{choose_bundled_model(dose, pixel, contrast)[0]}' model")
        try:  # what the model will say when it runs, said now (the picker caches the model)
            said = self.model.load(dose, pixel, contrast).compatibility_warnings(dose, pixel)
        except (CheckpointError, ValueError):  # no checkpoint chosen yet: the picker says so
            said = []
        self._note("; ".join([note, *said]))

    # -- running --------------------------------------------------------------
    def run(self, _value: Any = None) -> None:
        """Validate the inputs, warn about mismatches, and start the worker."""
        layer = self.layer_combo.value
        try:
            if layer is None:
                raise InputError("open or select an image layer first")
            if getattr(layer, "rgb", False):
                raise InputError(
                    f"layer '{layer.name}' is RGB; denoising needs a single channel of counts"
                )
            lead = leading_index(self.viewer, layer)  # a 4-D layer: the (T, H, W) block on screen
            source = layer.data[lead] if lead else layer.data
            single = check_stack_shape(tuple(source.shape), source.dtype)
            data = calibrated(source, self.offset.value, self.gain.value)
            # read once: the model choice, the message and the warnings all use them
            dose, pixel = estimate_dose(data), (float(self.pixel.value) or None)
            # a choice between two models by held-out counts: six network passes (seconds
            # on a CPU), so they run in the worker, before the first frame; any other
            # choice is instant
            pair = self.model.candidate_models(dose, pixel) if self.model.is_auto else None
            den: Denoiser | None = None
            if pair is None:
                reading = auto_read(data, pixel, dose) if self.model.is_auto else (None, None)
                den = self.load_denoiser(dose, pixel, *reading)
            self._denoiser = den
        except (InputError, CheckpointError, ValueError) as exc:
            show_error(str(exc))
            self.info.value = wrap(str(exc))
            return
        self._setting = (layer.name, dose, pixel)
        if den is not None:
            self._announce(den, reading)
        else:
            names = " and ".join(f"'{n}'" for n in (pair or {}))
            self.info.value = wrap(f"auto: choosing between the bundled {names} models "
                                   "(counts held out of the first frame)")
        try:
            indices = None if single else self._frames(int(data.shape[0]), layer)
        except InputError as exc:
            show_error(str(exc))
            self.info.value = wrap(str(exc))
            return
        total = 1 if indices is None else len(indices)
        # an earlier result (perhaps the user's edited or only copy) is never replaced
        block = f" [{', '.join(str(i) for i in lead)}]" if lead else ""
        part = ("" if indices is None or total == int(data.shape[0])
                else f" (frame {indices[0]})" if total == 1
                else f" (frames {indices[0]}-{indices[-1]})")
        name = unique_layer_name(self.viewer, f"{layer.name}{block} denoised{part}")
        ensemble = QUALITY[self.quality.value]
        self.output_layer = self.viewer.add_image(
            result_array(data.shape),
            name=name,
            colormap="gray",
            metadata={
                # the source's metadata, less an overlay's mark (the result is no overlay)
                **{k: v for k, v in (layer.metadata or {}).items()
                   if k not in ("sbd_role", "sbd_for")},
                # what the denoising assumed; the Columns dock reads it for a layer in pixels
                **({"pixel_size_pm": pixel} if pixel else {}),
                "sbd_model": den.metadata if den is not None else None,  # None: being chosen
                "sbd_source_layer": layer.name,
                "sbd_ensemble": ensemble,
                "sbd_block": list(lead),
                "sbd_calibration": {"offset": self.offset.value,
                                    "electrons_per_count": self.gain.value},
                "sbd_complete": False,
                "sbd_frames_done": 0,
                "sbd_frames": None if indices is None else [int(i) for i in indices],
            },
            **(stack_geometry(layer) if lead else copy_geometry(layer)),
        )
        tile = int(self.tile_spin.value)
        self.worker = create_worker(
            _denoise_frames,
            den,
            data,
            tile,
            pixel,
            ensemble,
            current_frame_index(self.viewer, layer) if not lead else None,
            indices,
            pair,
            dose,
            # napari's activity bar only as "busy": a determinate one runs a nested event loop
            # at every frame (its setValue calls processEvents), which re-enters this dock's
            # handler for the next queued frame; a fast stack of small frames then recursed
            # past Python's limit. The dock's own bar counts the frames and the time left.
            _progress={"desc": f"Denoising {layer.name}"},
        )
        self.connect_worker(self.worker, yielded=self._frame_done, errored=self._failed,
                            aborted=self._aborted, finished=self._finished)
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self.progress.setFormat(f"0 of {total} frames" if den is not None
                                else "choosing the model...")
        self.progress.setVisible(True)
        self._started = time.monotonic()
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self._total = total
        self._first = True
        self._redrawn = 0.0
        self.worker.start()

    def _note(self, text: str) -> None:
        """Show ``text`` under the settings, wrapped for it (it sits narrower than the picker's)."""
        self.dose_note.value = wrap(text, 40)

    def _announce(self, den: Denoiser, reading: tuple[str | None, str | None]) -> None:
        """Say which model runs (auto: and why) and what it warns about these data."""
        name, dose, pixel = self._setting
        if self.model.is_auto:
            bundled, why = choose_bundled_model(dose, pixel, *reading)
            what = (f"the blend '{bundled}' of bundled models" if bundled in BLENDS
                    else f"the bundled '{bundled}' model")
            self.info.value = wrap(f"auto: {what} ({why})")
        if pixel is None:  # said, not guessed in silence: binning and auto depend on it
            show_warning(f"layer '{name}' has no pixel size (its scale is in pixels): the "
                         f"model's {den.pixel_size_pm:g} pm is assumed; enter the real one in "
                         "'pixel size (pm)'")
        for msg in den.compatibility_warnings(dose, pixel):
            show_warning(msg)

    def _chosen(self, item: Chosen) -> None:
        """Record the model the worker chose for auto in the result, and say it."""
        self._denoiser = item.denoiser
        if self.output_layer is not None:
            self.output_layer.metadata["sbd_model"] = item.denoiser.metadata
        self._announce(item.denoiser, item.reading)
        self.progress.setFormat(f"0 of {self._total} frames")

    def _show_range(self, _value: Any = None) -> None:
        self.range_edit.visible = FRAME_CHOICES[self.frames_combo.value] == "range"

    def _frames(self, n: int, layer: Any) -> list[int]:
        """Return the frames of an n-frame stack the "frames" choice selects."""
        choice = FRAME_CHOICES[self.frames_combo.value]
        if choice == "all":
            return list(range(n))
        if choice == "current":
            return [current_frame_index(self.viewer, layer)]
        return list(frame_range(self.range_edit.value, n))

    def cancel(self, _value: Any = None) -> None:
        """Ask the running job to stop after the current frame."""
        if self.worker is not None:
            self.worker.quit()

    def _frame_done(self, item: tuple[int, np.ndarray, float] | Chosen | Failure) -> None:
        if isinstance(item, Failure):
            self._failed(item)
            return
        if isinstance(item, Chosen):
            self._chosen(item)
            return
        index, frame, dose = item
        layer = self.output_layer
        if layer is None:
            return
        layer.metadata.setdefault("sbd_dose", {})[int(index)] = dose
        if layer.data.ndim == 2:
            layer.data[...] = frame
        else:
            layer.data[index] = frame
        if self._first:
            lo, hi = np.percentile(frame, [0.5, 99.5])
            layer.contrast_limits = (float(lo), float(hi) if hi > lo else float(lo) + 1e-3)
            self._first = False
        layer.metadata["sbd_frames_done"] += 1
        # redraw when the frame on screen changed (or now and then): redrawing after every
        # frame of a fast small stack floods the event loop (napari's units recursed too deep)
        now = time.monotonic()
        if (layer.data.ndim == 2 or index == current_frame_index(self.viewer, layer)
                or now - self._redrawn > 0.5):
            layer.refresh()
            self._redrawn = now
        done = layer.metadata["sbd_frames_done"]
        self.progress.setValue(done)
        self.progress.setFormat(progress_text(done, self._total, time.monotonic() - self._started))

    def _finished(self) -> None:
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self.progress.setVisible(False)
        layer = self.output_layer
        if layer is not None and layer in self.viewer.layers:
            layer.refresh()
        if layer is not None and layer.metadata.get("sbd_frames_done") == self._total:
            layer.metadata["sbd_complete"] = True
            show_info(f"denoised {counted(self._total, 'frame')} into '{layer.name}'")
        self._report_doses()

    def _report_doses(self) -> None:
        """Each frame's dose: its span in the dock, the frames outside the model's in a warning."""
        layer, den = self.output_layer, self._denoiser
        doses = (layer.metadata.get("sbd_dose") or {}) if layer is not None else {}
        if not doses or den is None:
            return
        frames = sorted(doses)
        span, outside = doses_outside(den, np.array([doses[f] for f in frames]), frames)
        if span is None:
            return
        lo, hi = f"{span[0]:.3g}", f"{span[1]:.3g}"
        self._note(f"dose {lo if lo == hi else f'{lo}-{hi}'} electrons/pixel per frame over "
                   f"the {counted(len(frames), 'frame')} denoised")
        if outside:
            show_warning(dose_warning(den, outside, len(frames), span))

    def _aborted(self) -> None:
        layer = self.output_layer
        if layer is not None:
            done = layer.metadata.get("sbd_frames_done", 0)
            layer.name = f"{layer.name} (cancelled: {done} of {self._total} frames)"
            show_info(f"denoising cancelled after {done} of {self._total} frames")

    def _failed(self, exc: BaseException | Failure) -> None:
        layer = self.output_layer
        done = layer.metadata.get("sbd_frames_done", 0) if layer is not None else 0
        if layer is not None and layer in self.viewer.layers:
            if done:  # frames finished before the failure are kept (hours, on a long movie)
                layer.name = f"{layer.name} (failed: {done} of {self._total} frames)"
                layer.refresh()
            else:
                self.viewer.layers.remove(layer)
        self.output_layer = None
        kept = f" ({done} finished frames kept)" if done else ""
        show_error(f"denoising failed{kept}: {exc}")
        self.info.value = wrap(f"denoising failed{kept}: {exc}")


def progress_text(done: int, total: int, elapsed_s: float) -> str:
    """'3 of 200 frames, 0.4 s/frame, about 1 min 17 s left' for the progress bar."""
    if done <= 0:
        return f"0 of {total} frames"
    per = elapsed_s / done
    left = per * (total - done)
    if done >= total:
        return f"{total} of {total} frames, {per:.2g} s/frame"
    eta = f"{left:.0f} s" if left < 90 else f"{int(left // 60)} min {int(left % 60)} s"
    return f"{done} of {total} frames, {per:.2g} s/frame, about {eta} left"


def result_array(shape: tuple[int, ...]) -> Any:
    """Where a result goes: numpy for one frame; for a stack, a zarr array on disk.

    One chunk per frame in a temporary folder (removed when Python exits), so
    memory does not grow with the stack's length: napari reads the frame on
    screen, and a frame costs nothing until it is written. A 2,000-frame
    1024x1024 movie needed 8 GB of RAM before its first frame as a numpy array.
    """
    if len(shape) < 3:
        return np.zeros(shape, dtype=np.float32)
    import atexit
    import shutil
    import tempfile

    import zarr

    folder = tempfile.mkdtemp(prefix="napari-sbd-result-")
    atexit.register(shutil.rmtree, folder, True)
    return zarr.create_array(store=folder, shape=shape, chunks=(1, *shape[1:]), dtype="float32",
                             fill_value=0.0)


@dataclass(frozen=True)
class Chosen:
    """What the worker yields first when it chose auto's model itself."""

    denoiser: Denoiser
    reading: tuple[str | None, str | None]  # auto_read's (contrast, envelope)


def _denoise_frames(den: Denoiser | None, data: Any, tile: int, pixel_size: float | None = None,
                    ensemble: bool = False, first: int | None = None,
                    indices: list[int] | None = None,
                    pair: dict[str, Denoiser] | None = None, dose: float | None = None):
    """Worker body: yield each denoised frame (runs off the GUI thread).

    With ``den`` None, first choose it from ``pair`` (auto's two candidates by bundled
    name, see :func:`~napari_sbd.core.selection.auto_read`) and yield the :class:`Chosen` one.
    A bad frame (NaN, negative, not counts) is yielded as the error itself, so
    the widget can report it as a notification instead of a crash.
    """
    try:
        if den is None:
            if pair is None:
                raise ValueError("no model to denoise with")
            reading = auto_read(data, pixel_size, dose, models=pair)
            # a frame too small to tell (None read): the rules' own pick, also one of the pair
            den = pair[choose_bundled_model(dose, pixel_size, *reading)[0]]
            yield Chosen(den, reading)
        for i, result in den.iter_denoise(data, tile_size=tile, pixel_size_pm=pixel_size,
                                          ensemble=ensemble, first=first, indices=indices):
            # the frame's own dose (it drifts within a movie), read here, off the GUI thread
            raw = data if data.ndim == 2 else data[i]
            yield i, result, float(np.mean(np.asarray(raw, dtype=np.float64)))
    except NotCountsError as exc:
        yield Failure(NotCountsError(f"{exc}. Enter the detector's offset (dark level) and "
                                     "electrons per count (1/gain) above, in the layer's units"))
    except ValueError as exc:
        yield Failure(exc)


