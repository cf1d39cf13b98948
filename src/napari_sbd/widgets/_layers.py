"""Small helpers between napari layers and the core's units."""

from __future__ import annotations

import atexit
import contextlib
import functools
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QWidget


def pixel_size_pm(layer: Any) -> float | None:
    """Pixel size of an image layer in picometres, or None when it is unknown.

    Read from the layer's scale and units along the last (x) axis; a layer in
    plain pixels falls back to ``metadata["pixel_size_pm"]`` (set by our
    readers and sample data).

    Parameters
    ----------
    layer : napari.layers.Layer
        The layer.

    Returns
    -------
    float or None
        Picometres per pixel.
    """
    try:
        unit = layer.units[-1]
        if str(unit) not in ("pixel", "dimensionless", ""):
            value = float((layer.scale[-1] * unit).to("pm").magnitude)
            if value > 0:
                return value
    except Exception:  # noqa: BLE001 - units not convertible to a length
        pass
    md = getattr(layer, "metadata", {}) or {}
    stored = md.get("pixel_size_pm")
    return float(stored) if stored else None


def copy_geometry(layer: Any) -> dict[str, Any]:
    """Keyword arguments that place a new layer exactly over ``layer``."""
    return {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "units": tuple(str(u) for u in layer.units),
    }


def denoised_from(viewer: Any, raw: Any) -> Any:
    """Return the result of the Denoise dock made from ``raw`` that the user is looking at.

    Of the layers whose metadata name ``raw`` as their source: the selected one,
    else the top-most visible one, else the top-most; None when there is none. A
    filter or a likelihood must follow that result's model, quality, pixel size
    and calibration (``raw`` may have been denoised twice, fast and best).
    """
    made = [ly for ly in viewer.layers
            if ly is not raw and (ly.metadata or {}).get("sbd_source_layer") == raw.name]
    if not made:
        return None
    active = viewer.layers.selection.active
    if active in made:
        return active
    shown = [ly for ly in made if ly.visible]
    return (shown or made)[-1]  # the layer list's last is drawn on top


def raw_counts(raw: Any, denoised: Any = None) -> Any:
    """``raw``'s data as the electron counts that made ``denoised`` from it.

    The Denoise dock records the detector offset and electrons per count it
    applied (``sbd_calibration``) and, for a 4-D layer, the (T, H, W) block it
    denoised (``sbd_block``); the likelihood and the effective filter must see
    the same counts the network saw. A lazy view (never a copy of the movie).
    """
    from napari_sbd.core.inputs import calibrated

    md = (denoised.metadata or {}) if denoised is not None else {}
    if md.get("sbd_source_layer") != raw.name:
        return raw.data
    data = raw.data
    block = md.get("sbd_block") or []
    if block and data.ndim == len(block) + denoised.data.ndim:
        data = data[tuple(int(i) for i in block)]
    cal = md.get("sbd_calibration") or {}
    return calibrated(data, float(cal.get("offset", 0.0)), float(cal.get("electrons_per_count", 1.0)))


def current_frame_index(viewer: Any, layer: Any) -> int:
    """Index of the frame of a (T, H, W) layer shown by the viewer's slider."""
    if layer.data.ndim < 3:
        return 0
    step = viewer.dims.current_step
    # the layer's first axis is the viewer's (ndim - layer.ndim)-th
    axis = viewer.dims.ndim - layer.ndim
    world = viewer.dims.point[axis] if hasattr(viewer.dims, "point") else step[axis]
    idx = round((world - layer.translate[0]) / layer.scale[0])
    return int(np.clip(idx, 0, layer.data.shape[0] - 1))


def image_layers(viewer: Any) -> list[tuple[str, Any]]:
    """(name, layer) of every Image layer, for a ComboBox's choices."""
    from napari.layers import Image

    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image)]


def leading_index(viewer: Any, layer: Any) -> tuple[int, ...]:
    """Return the indices of a layer's axes before (T, H, W) at the viewer's current position.

    A 4-D (channel/position, T, H, W) layer is denoised one (T, H, W) block at a
    time: the block on screen.
    """
    n_lead = max(0, layer.data.ndim - 3)
    offset = viewer.dims.ndim - layer.ndim
    out = []
    for a in range(n_lead):
        world = viewer.dims.point[offset + a]
        idx = round((world - layer.translate[a]) / layer.scale[a])
        out.append(int(np.clip(idx, 0, layer.data.shape[a] - 1)))
    return tuple(out)


def stack_geometry(layer: Any) -> dict[str, Any]:
    """scale/translate/units of the last three (T, H, W) axes."""
    return {
        "scale": tuple(layer.scale[-3:]),
        "translate": tuple(layer.translate[-3:]),
        "units": tuple(str(u) for u in layer.units[-3:]),
    }


def show_colorbar(layer: Any) -> None:
    """Napari's colour bar for an image layer, where this napari has one."""
    bar = getattr(layer, "colorbar", None)
    if bar is not None:
        bar.visible = True


def nice_limit(value: float) -> float:
    """Return the smallest 1, 2 or 5 x 10^k at or above ``value`` (> 0).

    A colour bar whose ends sit on such a number labels them: napari's ticks
    fall on round values, so limits like +-0.00084 leave only "0" labelled.
    """
    if not np.isfinite(value) or value <= 0:
        return 1.0
    decade = 10.0 ** np.floor(np.log10(value))
    for step in (1.0, 2.0, 5.0, 10.0):
        # the tolerance keeps an exact 2e-3 from rounding up to 5e-3
        if value <= step * decade * (1 + 1e-9):
            return float(step * decade)
    return float(10 * decade)


def sticky_limit(value: float, current: float | None, keep_down_to: float = 0.7) -> float:
    """Return :func:`nice_limit` of ``value``, or ``current`` while it still fits.

    A new value above ``current`` always takes the next round limit (the weights
    would saturate); one below it keeps ``current`` until it falls under
    ``keep_down_to`` times the round limit below ``current``. Filters at
    neighbouring pixels then share one colour scale instead of flipping
    between two round limits, and the colour bar is not redrawn on each click.
    """
    new = nice_limit(value)
    if current is None or not np.isfinite(current) or current <= 0 or new >= current:
        return new
    below = nice_limit(current / 2.5)  # the round limit under current: 5 -> 2 -> 1 -> 0.5
    return float(current) if value >= keep_down_to * below else new


@contextlib.contextmanager
def batched_update(viewer: Any, *layers: Any, ranges: bool = True) -> Iterator[None]:
    """Change ``layers`` in place, then re-slice each once and update the viewer's ranges once.

    napari re-slices a layer on each of its data, translate or contrast changes,
    and recomputes the viewer's ranges on each data or translate change of any
    layer (5-7 ms each here): overlays updated at every click paid that four to
    six times. ``ranges=False`` skips the update of the ranges altogether: for
    overlays that stay inside another layer's extent, on its grid, the union of
    the layers' extents cannot change. Both hooks are private napari API; where
    one is missing, that part is not batched.
    """
    update = _private(viewer, "_on_layers_change")
    blocks = [_private(layer, "_block_refresh") for layer in layers]
    with contextlib.ExitStack() as stack:
        for layer, block in zip(layers, blocks):
            if update is not None:
                for name in ("data", "translate", "scale"):
                    stack.enter_context(getattr(layer.events, name).blocker(update))
            if block is not None:
                stack.enter_context(block())
        yield
    for layer, block in zip(layers, blocks):
        if block is not None:
            layer.refresh()
    if update is not None and ranges:
        update()


def _private(obj: Any, name: str) -> Any:
    """``obj.name`` of private napari API, or None where napari no longer has it.

    A plugin's viewer is a proxy that warns (FutureWarning, once per place) that
    private access will go; the callers work without it, so the warning would
    only alarm a user's terminal.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Private attribute access", FutureWarning)
        return getattr(obj, name, None)


def plane_geometry(layer: Any) -> dict[str, Any]:
    """scale/translate/units of the last two (image) axes, for 2-D overlay layers."""
    return {
        "scale": tuple(layer.scale[-2:]),
        "translate": tuple(layer.translate[-2:]),
        "units": tuple(str(u) for u in layer.units[-2:]),
    }


def diverging_overlay_colormap(name: str = "sbd diverging overlay"):
    """Blue (negative) - transparent (zero) - red (positive): an overlay that hides nothing at 0."""
    from napari.utils.colormaps import Colormap

    colors = [[0.13, 0.40, 0.67, 1.0], [0.57, 0.77, 0.87, 0.6], [1.0, 1.0, 1.0, 0.0],
              [0.96, 0.65, 0.51, 0.6], [0.70, 0.09, 0.17, 1.0]]
    return Colormap(colors=colors, controls=[0.0, 0.25, 0.5, 0.75, 1.0], name=name)


GUIDES = {
    "napari-sbd: user guide": "index.md",
    "napari-sbd: from a microscope file to a table": "walkthrough.md",
    "napari-sbd: reading columns, LLR and filters": "analysis.md",
}


def guide_path(page: str) -> Path | None:
    """Return a page of the documentation when it is on disk (a source checkout), else None."""
    path = Path(__file__).resolve().parents[3] / "docs" / page
    return path if path.is_file() else None


def add_help_entries(viewer: Any) -> None:
    """Entries in napari's Help menu that open our guides (once per window)."""
    menu = getattr(getattr(viewer, "window", None), "help_menu", None)
    if menu is None or any(a.text() in GUIDES for a in menu.actions()):
        return
    from qtpy.QtCore import QUrl
    from qtpy.QtGui import QDesktopServices

    for title, page in GUIDES.items():
        def open_page(_checked: bool = False, page: str = page) -> None:
            path = guide_path(page)
            if path is not None:
                QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))
            else:
                from napari.utils.notifications import show_info

                show_info(f"the guide docs/{page} is in the napari-sbd repository (README.md "
                          "links every page)")

        menu.addAction(title, open_page)


def unique_layer_name(viewer: Any, base: str) -> str:
    """Return ``base``, or ``base [2]``, ``base [3]``...: a new result never replaces a layer."""
    name, k = base, 2
    while name in viewer.layers:
        name, k = f"{base} [{k}]", k + 1
    return name


def own_layer(viewer: Any, role: str, source: str | None = None) -> Any | None:
    """Return the overlay this plugin made for ``role`` (on layer ``source``), or None.

    An overlay is found by the mark it was made with (metadata ``sbd_role``
    and ``sbd_for``), not by its name: a layer the user made or loaded under
    the same name is never updated or removed, and an overlay the user renamed
    is still the one updated.
    """
    for layer in viewer.layers:
        md = layer.metadata or {}
        if md.get("sbd_role") == role and md.get("sbd_for") == source:
            return layer
    return None


def own_mark(role: str, source: str | None = None) -> dict[str, Any]:
    """Return the metadata that makes a new layer findable by :func:`own_layer`."""
    return {"sbd_role": role, "sbd_for": source}


def drop_own_layer(viewer: Any, role: str, source: str | None = None) -> None:
    """Remove the overlay made for ``role`` on ``source``, if there is one (only ours)."""
    layer = own_layer(viewer, role, source)
    if layer is not None:
        viewer.layers.remove(layer)


def qt_alive(obj: Any) -> bool:
    """Whether a Qt wrapper's C++ object still exists (Qt deletes a closed window's widgets)."""
    try:
        obj.objectName()
    except RuntimeError:
        return False
    return True


# Our running jobs, stopped and waited for when Python exits: a job still inside a frame
# when a script ends (or a window closes without napari's event loop, whose aboutToQuit
# waits for workers) would otherwise signal into Qt objects already torn down.
_LIVE_WORKERS: weakref.WeakSet[Any] = weakref.WeakSet()
EXIT_WAIT_S = 60.0


def stop_live_workers(timeout_s: float = EXIT_WAIT_S) -> None:
    """Ask every running job of our docks to stop and wait for each to end its frame.

    Parameters
    ----------
    timeout_s : float
        Give up waiting after this many seconds in all.
    """
    workers = list(_LIVE_WORKERS)
    for worker in workers:
        worker.quit()
    deadline = time.monotonic() + timeout_s
    for worker in workers:
        while worker.is_running and time.monotonic() < deadline:
            time.sleep(0.02)


def _track_worker(worker: Any) -> None:
    _LIVE_WORKERS.add(worker)
    # atexit runs last-registered first: re-registering puts the wait ahead of the
    # clean-up registered before it (a result's temporary store the job may still write)
    atexit.unregister(stop_live_workers)
    atexit.register(stop_live_workers)


def _stop_worker_of(dock: DockWidget, *_args: Any) -> None:
    if dock.worker is not None:
        dock.worker.quit()
    dock.released = True


class DockWidget(QWidget):
    """Base of our dock widgets: the viewer, the (at most one) running worker, and clean-up.

    Every connection to the viewer goes through :meth:`listen` (events) or
    :meth:`on_mouse_drag` (mouse callbacks), so that :meth:`release` can undo
    them all. napari closes a dock by taking the widget out of its dock (its
    parent becomes None): the widget then releases itself, and a closed dock
    no longer reacts to clicks, layer changes or the frame slider.
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker: Any = None
        self._undo: list[Any] = []
        self._docked = False
        self.released = False
        add_help_entries(napari_viewer)
        # Closing the window deletes the docks without taking them out first: the
        # running job must stop then too (a plain function; self's C++ side is gone).
        self.destroyed.connect(functools.partial(_stop_worker_of, self))

    def listen(self, emitter: Any, callback: Any) -> None:
        """Connect ``callback`` to a viewer event emitter until the dock closes."""
        emitter.connect(callback)
        self._undo.append(lambda: emitter.disconnect(callback))

    def follow_layers(self, callback: Any) -> None:
        """Call ``callback`` when a layer is added, removed or renamed (combos list names)."""
        events = self.viewer.layers.events
        for name in ("inserted", "removed", "renamed"):
            if hasattr(events, name):  # "renamed" is napari's own re-emission of a name change
                self.listen(getattr(events, name), callback)

    def on_mouse_drag(self, callback: Any) -> None:
        """Add a viewer mouse-drag callback until the dock closes."""
        self.viewer.mouse_drag_callbacks.append(callback)

        def remove() -> None:
            if callback in self.viewer.mouse_drag_callbacks:
                self.viewer.mouse_drag_callbacks.remove(callback)

        self._undo.append(remove)

    def connect_worker(self, worker: Any, **handlers: Any) -> None:
        """Connect a worker's signals (``yielded=``, ``returned=``, ...) to this dock's handlers.

        A job may still signal after the window has closed (a generator stops
        only after its current frame, a function runs to its end): by then
        Qt has deleted the dock's widgets, and the handler has nothing left to
        update. Such a late call is dropped, instead of a traceback about a
        deleted C++ object; while the dock's widgets live, every call runs
        (a dock closed mid-denoise still marks its layer cancelled).
        """
        for signal, handler in handlers.items():
            getattr(worker, signal).connect(self._while_alive(handler))
        _track_worker(worker)

    def _while_alive(self, handler: Any) -> Any:
        def call(*args: Any) -> None:
            if not qt_alive(self):
                return
            try:
                handler(*args)
            except RuntimeError as exc:  # a child widget deleted with the window
                if "deleted" not in str(exc):
                    raise

        return call

    def release(self) -> None:
        """Disconnect from the viewer and stop the running worker (the dock was closed)."""
        while self._undo:
            with contextlib.suppress(RuntimeError, ValueError, TypeError):  # gone with the viewer
                self._undo.pop()()
        if self.worker is not None:
            self.worker.quit()
        self.released = True

    def event(self, ev: Any) -> bool:
        from qtpy.QtCore import QEvent

        if ev.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked and not self.released:
                self.release()
        return super().event(ev)


def dock_layout(widget: Any, form: Any, *extra: Any) -> None:
    """Stack a magicgui form (and extra Qt widgets) at the top of a dock widget.

    The form sits in a scroll area: a dock then asks for little height, and
    the main window fits a laptop screen (1366x768) however many controls a
    dock has; what does not fit scrolls.
    """
    from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

    inner = QWidget()
    layout = QVBoxLayout(inner)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(form.native)
    for w in extra:
        layout.addWidget(w)
    layout.addStretch()
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QLabel

    for label in inner.findChildren(QLabel):  # long messages wrap instead of being cut off
        label.setWordWrap(True)
    from qtpy.QtWidgets import QComboBox

    for combo in inner.findChildren(QComboBox):  # a long layer or model name must not widen the dock
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(14)

    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    # content follows the dock's width (text wraps); only the height scrolls
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setWidget(inner)
    # never narrower than the controls (they would be cut off at the right edge)
    bar = scroll.verticalScrollBar()
    bar_width = bar.sizeHint().width() if bar is not None else 0
    scroll.setMinimumWidth(inner.minimumSizeHint().width() + bar_width + 12)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
