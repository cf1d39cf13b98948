"""Dock widget: click a pixel, see the network's effective filter there."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

from napari_sbd.core.checkpoint import CheckpointError
from napari_sbd.core.inference import (
    BLENDS,
    Blend,
    Denoiser,
    binning_dose,
    estimate_dose,
    load_model,
)
from napari_sbd.core.jacobian import effective_filter
from napari_sbd.core.selection import auto_read
from napari_sbd.core.text import counted
from napari_sbd.widgets._layers import (
    DockWidget,
    batched_update,
    denoised_from,
    diverging_overlay_colormap,
    dock_layout,
    image_layers,
    own_layer,
    own_mark,
    pixel_size_pm,
    plane_geometry,
    qt_alive,
    raw_counts,
    show_colorbar,
    sticky_limit,
    unique_layer_name,
)
from napari_sbd.widgets._model import Failure, ModelPicker, wrap

# what auto reads from a layer's counts: dose, then auto_read's contrast and envelope model
Estimates = tuple[float, str | None, str | None]

__all__ = ["FilterWidget"]

FILTER_LAYER = "effective filter"
COMPUTING_NOTE_MS = 400  # a click still running after this long says so in the dock
PIXEL_LAYER = "effective filter: pixel"


class FilterWidget(DockWidget):
    """While active, a click on the raw (or denoised) layer shows the effective filter.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.raw_combo = ComboBox(label="raw counts", choices=lambda _w: image_layers(self.viewer),
                                  tooltip="the raw layer that was denoised: the filter weighs "
                                  "its counts")
        self.model = ModelPicker()
        self._recorded: dict[str, Denoiser] = {}  # models named by denoised layers (auto)
        # auto before any denoising: the estimates of the last counts clicked on, kept for
        # the next click (about 20 ms of GUI thread per click on a 1024^2 frame)
        self._estimated: tuple[Any, float | None, Estimates] | None = None
        self.active = CheckBox(label="Shift-click shows the filter", value=True,
                               tooltip="Shift-click a pixel of the raw or denoised layer to see "
                               "the weights the network gives the raw counts around it")
        self.status = Label(value="Shift-click a pixel of the raw or denoised layer")
        self.form = Container(widgets=[self.raw_combo, self.model, self.active, self.status])
        dock_layout(self, self.form)
        self.follow_layers(self._reset_layers)
        self.on_mouse_drag(self._on_click)
        self._guess_raw()

    def _reset_layers(self, _event: Any = None) -> None:
        self.raw_combo.reset_choices()

    def _guess_raw(self) -> None:
        for _name, layer in image_layers(self.viewer):
            source = (layer.metadata or {}).get("sbd_source_layer")
            if source in self.viewer.layers:
                self.raw_combo.value = self.viewer.layers[source]
                return

    def _on_click(self, _viewer: Any, event: Any) -> None:
        # a deliberate gesture only: a plain press is a pan or a selection, and a filter
        # costs seconds of CPU
        if not self.active.value or event.type != "mouse_press" or "Shift" not in _modifiers(event):
            return
        raw = self.raw_combo.value
        if raw is None:
            return
        data_pos = raw.world_to_data(event.position)
        self.compute_at(tuple(round(v) for v in data_pos))

    def compute_at(self, position: tuple[int, ...],
                   estimates: Estimates | None = None) -> None:
        """Compute the filter at a data position of the raw layer ((t,) row, col).

        ``estimates``: what auto read from the raw counts (:data:`Estimates`), read by a worker for auto
        (:meth:`_estimate_then`); read first in a worker where auto needs them.
        """
        raw = self.raw_combo.value
        # the result on view decides model, quality, pixel size and the counts the network
        # saw (the block of a 4-D layer, calibrated)
        den = denoised_from(self.viewer, raw) if raw is not None else None
        counts: Any = raw_counts(raw, den) if raw is not None else None
        if counts is None or getattr(raw, "rgb", False) or counts.ndim not in (2, 3):
            self._fail("choose the single-channel raw layer that was denoised (a 4-D layer: "
                       "denoise its block on screen first, the filter follows that block)")
            return
        shape = counts.shape
        pos = position[-counts.ndim:]
        if any(p < 0 or p >= n for p, n in zip(pos, shape)):
            return  # a click outside the image: nothing to explain
        frame_index = pos[0] if counts.ndim == 3 else 0
        frame = np.asarray(counts[frame_index] if counts.ndim == 3 else counts, np.float32)
        try:
            model = self._model_for(raw, den, estimates, wait=False)
        except (CheckpointError, ValueError) as exc:
            self._fail(str(exc))
            return
        if model is None:  # auto, before any denoising: the choice needs the network
            self._estimate_then(raw, den, position)
            return
        if self.worker is not None:
            self.worker.quit()
        row, col = pos[-2:]
        ensemble = bool(den is not None and (den.metadata or {}).get("sbd_ensemble"))
        worker = create_worker(_filter_safely, model, frame, (row, col), ensemble=ensemble,
                               pixel_size_pm=self._pixel_of(raw, den),
                               movie=counts if counts.ndim == 3 else None)
        # "computing" only for a click that takes a while (best quality, a slow machine): on
        # a fast one, redrawing the dock twice per click cost more than the label was worth
        QTimer.singleShot(COMPUTING_NOTE_MS, lambda: self._computing(worker, row, col))
        # a superseded click's worker may still finish: only the latest one shows
        # a frame with more counts than the model's dose was denoised as parts: say so with it
        note = _how_filtered(model, frame)
        self.connect_worker(
            worker,
            returned=lambda res: (self._show(res, frame_index, (row, col), note)
                                  if self.worker is worker else None),
            errored=lambda exc: self._fail(str(exc)),
            finished=lambda: self._done(worker),
        )
        self.worker = worker
        worker.start()

    def _computing(self, worker: Any, row: int, col: int) -> None:
        if self.worker is worker and qt_alive(self):  # still running, still shown
            self.status.value = f"computing the filter at ({row}, {col})..."

    def _estimate_then(self, raw: Any, den: Any, position: tuple[int, ...]) -> None:
        """Read the dose and the counts auto chooses by in a worker, then compute the filter.

        The choice between two bundled models runs each three times (seconds
        on a CPU): never on the GUI thread. Once per layer (the result is kept).
        """
        counts, pixel = raw_counts(raw, den), self._pixel_of(raw, den)
        if self.worker is not None:
            self.worker.quit()
        worker = create_worker(_estimate_safely, counts, pixel, self.model.candidate_models)
        self.status.value = wrap(f"auto: choosing the model for '{raw.name}' from its counts "
                                 "(once per layer)...")

        def chosen(res: Any) -> None:
            if isinstance(res, Failure):
                if self.worker is worker:
                    self._fail(str(res))
                return
            self._remember(counts, pixel, res)  # kept even for a superseded click
            if self.worker is worker and self.raw_combo.value is raw:
                self.compute_at(position, estimates=res)

        self.connect_worker(worker, returned=chosen, errored=lambda exc: self._fail(str(exc)),
                            finished=lambda: self._done(worker))
        self.worker = worker
        worker.start()

    def _model_for(self, raw: Any, den: Any = None,
                   estimates: Estimates | None = None,
                   wait: bool = True) -> Denoiser | None:
        """Return the picked model; on auto, the one that denoised ``raw`` (or would).

        ``den`` is the result on view (:func:`denoised_from`; looked up when omitted).
        ``estimates``: what auto read from the raw counts, where already read; else the
        ones kept for these counts, else they are read here, or, with ``wait`` False,
        None is returned (the caller reads them off the GUI thread).

        The filter must be the one of the network that made the denoised layer:
        with "auto" that is the model recorded in the layer the Denoise dock
        made from ``raw``, or, before any, the one auto picks for ``raw``.
        """
        if not self.model.is_auto:  # the estimates only steer auto: not on every click
            return self.model.load()
        if den is None:
            den = denoised_from(self.viewer, raw)
        md = (den.metadata or {}) if den is not None else {}
        path = str((md.get("sbd_model") or {}).get("path") or "")
        if path and (path in BLENDS or Path(path).is_file()):  # a blend is recorded by name
            if path not in self._recorded:
                self._recorded[path] = load_model(path, device=self.model.device.value)
            return self._recorded[path]
        pixel = self._pixel_of(raw, den)
        counts = raw_counts(raw, den)
        values = estimates or self._kept(counts, pixel)
        if values is None:
            if not wait:
                return None
            values = _estimates_of(counts, pixel, self.model.candidate_models)
            self._remember(counts, pixel, values)
        return self.model.load(values[0], pixel, *values[1:])

    def _kept(self, counts: Any, pixel: float | None) -> Estimates | None:
        """Return what auto read from ``counts`` (:data:`Estimates`), if kept (once per array).

        The same array object (a layer's data, not a calibrated view made per
        click) at the same pixel size gives the same estimates; the array is
        held weakly, so a removed layer's data is not kept alive.
        """
        if self._estimated is not None:
            ref, px, values = self._estimated
            if ref() is counts and px == pixel:
                return values
        return None

    def _remember(self, counts: Any, pixel: float | None,
                  values: Estimates) -> None:
        try:
            self._estimated = (weakref.ref(counts), pixel, values)
        except TypeError:  # an array type without weak references: estimated per click
            self._estimated = None

    @staticmethod
    def _pixel_of(raw: Any, den: Any) -> float | None:
        """Return the pixel size ``raw`` was denoised at (finer frames are binned into a model).

        The one the Denoise dock recorded in its result ``den`` (typed in there for a
        layer in pixels), else the raw layer's own.
        """
        return (pixel_size_pm(den) if den is not None else None) or pixel_size_pm(raw)

    def _done(self, worker: Any) -> None:
        if self.worker is worker:
            self.worker = None

    def _fail(self, message: str) -> None:
        show_error(message)
        self.status.value = wrap(message)

    def _show(self, res: Any, frame: int, pixel: tuple[int, int],
              note: str = "") -> None:
        if isinstance(res, Failure):
            self._fail(str(res))
            return
        filt, (r0, c0) = res
        raw = self.raw_combo.value
        geo = plane_geometry(raw)
        scale, translate = np.asarray(geo["scale"]), np.asarray(geo["translate"])
        peak = float(np.abs(filt).max()) or 1.0
        # symmetric limits at a high percentile: the central peak saturates,
        # the weights the network gives to other columns stay visible; rounded
        # up to 1, 2 or 5 x 10^k so that the colour bar labels its ends, and kept from the
        # last click while it fits (one scale across neighbouring pixels; no colour-bar redraw)
        lay, dot = (own_layer(self.viewer, role) for role in (FILTER_LAYER, PIXEL_LAYER))
        lim = sticky_limit(float(np.percentile(np.abs(filt), 99.5)) or peak,
                           float(lay.contrast_limits[1]) if lay is not None else None)
        h, w = filt.shape
        origin = tuple(translate + np.array([r0, c0]) * scale)
        meta = {"frame": frame, "pixel": pixel, "origin": (r0, c0)}
        # one set of overlays, updated in place on every click (adding layers is the slow
        # part); the crop's outline is the filter layer's own bounding box (no layer to update)
        # the overlays change in place: one re-slice each and, only where they could leave
        # the frame's extent (another grid, a crop past its edge), one update of the ranges
        frame_h, frame_w = raw.data.shape[-2:]
        inside = r0 >= 0 and c0 >= 0 and r0 + h <= frame_h and c0 + w <= frame_w
        same_grid = all(ly is None or np.allclose(ly.scale, scale) for ly in (lay, dot))
        # adding a layer selects it: the user's selection (what the layer controls show and
        # keys act on) is given back, the overlays are not something to edit
        selection = self.viewer.layers.selection
        kept = (set(selection), selection.active) if lay is None or dot is None else None
        with batched_update(self.viewer, *(ly for ly in (lay, dot) if ly is not None),
                            ranges=not (inside and same_grid)):
            if lay is None:
                lay = self.viewer.add_image(
                    filt, name=unique_layer_name(self.viewer, FILTER_LAYER),
                    colormap=diverging_overlay_colormap(), contrast_limits=(-lim, lim),
                    scale=geo["scale"], units=geo["units"], translate=origin, blending="translucent",
                    metadata={**own_mark(FILTER_LAYER), **meta},
                )
                show_colorbar(lay)  # the weights' scale, -lim to +lim
                box = lay.bounding_box
                box.line_color, box.line_thickness, box.points = "yellow", 2, False
                box.visible = True
            else:
                lay.data = filt
                _place(lay, geo["scale"], origin)
                if tuple(lay.contrast_limits) != (-lim, lim):  # the colour bar re-ticks on each set
                    lay.contrast_limits = (-lim, lim)
                lay.metadata.update(meta)
            if dot is None:
                self.viewer.add_points(
                    [pixel], name=unique_layer_name(self.viewer, PIXEL_LAYER), size=max(h, w) / 40,
                    face_color="transparent", border_color="lime", border_width=0.3,
                    metadata=own_mark(PIXEL_LAYER), **geo,
                )
            else:
                _place(dot, geo["scale"], geo["translate"])
                dot.data = [pixel]
        if kept is not None:
            selection.clear()
            selection.update(ly for ly in kept[0] if ly in self.viewer.layers)
            if kept[1] in self.viewer.layers:
                selection.active = kept[1]
        total = float(filt.sum())
        self.status.value = wrap(
            f"filter at ({pixel[0]}, {pixel[1]}), frame {frame}: crop {h}x{w} px from "
            f"({r0}, {c0}); the weights sum to {total:.3g} (about 1 where the network "
            f"preserves the local mean), largest weight {peak:.3g}; colours (weight per "
            f"input count) from -{lim:.2g} (blue) to +{lim:.2g} (red), the central peak "
            "saturates" + note
        )


def _how_filtered(model: Denoiser, frame: np.ndarray) -> str:
    """Return what the filter dock adds about how the frame was denoised (split parts, a blend)."""
    split = model.dose_split(frame)
    whose = "a member's" if isinstance(model, Blend) else "the model's"
    text = ("" if split is None else
            f"; this frame holds more counts than {whose} dose and was denoised as "
            f"{counted(split[0], 'part')} at it (its counts dealt at random"
            + ("" if split[1] >= 1 else f", {split[1]:.0%} of them kept")
            + "): the filter is the parts' average, exact for each part")
    if isinstance(model, Blend):
        weights = " + ".join(f"{w:.0%}" for _, w in model.members)
        text += (f"; the model is a blend ({model.name}: outputs averaged {weights}): the filter "
                 "is its members' filters averaged the same way")
    return text


def _place(layer: Any, scale: Any, translate: Any) -> None:
    """Set a layer's scale and translate where they changed (each set re-lays the whole scene)."""
    if not np.allclose(layer.scale, scale):
        layer.scale = scale
    if not np.allclose(layer.translate, translate):
        layer.translate = translate


def _modifiers(event: Any) -> set[str]:
    """Names of the keyboard modifiers held during a mouse event ("Shift", "Control"...)."""
    return {getattr(m, "name", str(m)) for m in (getattr(event, "modifiers", ()) or ())}


def _estimates_of(counts: Any, pixel: float | None,
                  candidates: Callable[[float, float | None], dict[str, Denoiser] | None],
                  ) -> Estimates:
    """Return the dose, contrast and envelope model auto reads from ``counts`` (:func:`auto_read`).

    ``candidates`` gives the loaded models auto chooses between for a dose and pixel size
    (:meth:`ModelPicker.candidate_models`).
    """
    dose = estimate_dose(counts)
    return (dose, *auto_read(counts, pixel, dose, models=candidates(dose, pixel)))


def _estimate_safely(*args: Any) -> Any:
    """Worker body of :func:`_estimates_of`: bad counts are returned as a value."""
    try:
        return _estimates_of(*args)
    except ValueError as exc:
        return Failure(exc)


def _filter_safely(*args: Any, movie: Any = None, **kwargs: Any) -> Any:
    """Worker body: bad input and no memory are returned as values, shown as notifications.

    ``movie``: the stack the frame is of, binned by its :func:`binning_dose` as the
    Denoise dock did it.
    """
    try:
        return effective_filter(*args, dose=binning_dose(movie) if movie is not None else None,
                                **kwargs)
    except (ValueError, MemoryError) as exc:  # MemoryError: one line, naming the fix
        return Failure(exc)
