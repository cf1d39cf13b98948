"""Dock widget: atomic columns and their log-likelihood ratios, frame by frame."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

from napari_sbd.core.analysis import FrameAnalysis, analyse_frame, write_columns_csv
from napari_sbd.core.likelihood import LLR_REAL, LLR_SPURIOUS
from napari_sbd.core.units import PAPERS_PIXEL_SIZE_PM
from napari_sbd.widgets._layers import (
    DockWidget,
    current_frame_index,
    dock_layout,
    image_layers,
    pixel_size_pm,
    plane_geometry,
    show_colorbar,
)
from napari_sbd.widgets._model import Failure, wrap

__all__ = ["ColumnsWidget"]

# symmetric colour range of the LLR display: beyond +-0.02 every column is decided
LLR_DISPLAY_LIMIT = 0.02


def analyse_frame_safely(raw: np.ndarray, denoised: np.ndarray, frame: int, pixel_size_pm: float,
                         detect: dict[str, Any], vacuum_level: float | None,
                         radius_a: float) -> FrameAnalysis | Failure:
    """Worker body: :func:`~napari_sbd.core.analysis.analyse_frame`, bad input returned, not raised."""
    try:
        return analyse_frame(raw, denoised, pixel_size_pm, frame=frame, vacuum_level=vacuum_level,
                             radius_a=radius_a, detect=detect)
    except ValueError as exc:  # bad data (no vacuum, not counts, ...): a message, not a crash
        return Failure(exc)


def _frame(data: Any, index: int) -> np.ndarray:
    return np.asarray(data[index] if data.ndim == 3 else data, dtype=np.float32)


class ColumnsWidget(DockWidget):
    """Columns of the denoised layer, coloured by how well the raw counts support them.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.result: FrameAnalysis | None = None
        self._launched_frame: int | None = None
        choices = lambda _w: image_layers(self.viewer)  # noqa: E731
        self.denoised_combo = ComboBox(label="denoised", choices=choices, nullable=True,
                                       tooltip="the denoised layer whose columns are found "
                                       "(the Denoise dock's result is chosen by itself)")
        self.raw_combo = ComboBox(label="raw counts", choices=choices,
                                  tooltip="the raw frames in counts that were denoised: the "
                                  "likelihood test compares the columns with them")
        self.pixel_spin = FloatSpinBox(label="pixel size (pm)", min=0.1, max=1000, step=0.1,
                                       value=PAPERS_PIXEL_SIZE_PM)
        self.sigma_min = FloatSpinBox(label="min sigma (A)", min=0.05, max=5, step=0.05, value=0.2)
        self.sigma_max = FloatSpinBox(label="max sigma (A)", min=0.05, max=5, step=0.05, value=0.7)
        self.contrast_spin = FloatSpinBox(label="min contrast (counts)", min=0.0, max=100,
                                          step=0.01, value=0.03)
        self.floor_spin = FloatSpinBox(label="vacuum floor (sigmas, 0 = off)", min=0.0, max=20,
                                       step=0.5, value=4.0)
        self.floor_spin.tooltip = ("columns must also stand out by this many standard deviations of the "
                                   "denoised vacuum's texture (a network leaves a faint texture there)")
        self.dark_check = CheckBox(label="dark columns", value=False)
        self.radius_spin = FloatSpinBox(label="LLR radius (A)", min=0.1, max=3, step=0.1, value=0.7)
        self.vacuum_spin = FloatSpinBox(label="vacuum (0 = find)", min=0.0, max=1e4, step=0.01,
                                        value=0.0)
        self.follow_check = CheckBox(label="follow the frame slider", value=True)
        self.run_button = PushButton(text="Detect columns")
        self.save_button = PushButton(text="Save table...", enabled=False,
                                      tooltip="the columns of the frame shown, as CSV: frame, "
                                      "position (nm and px), sigma (A), peak and contrast "
                                      "(counts), LLR and class")
        self.summary = Label(value="")
        self.form = Container(widgets=[
            self.denoised_combo, self.raw_combo, self.pixel_spin, self.sigma_min, self.sigma_max,
            self.contrast_spin, self.floor_spin, self.dark_check, self.radius_spin, self.vacuum_spin,
            self.follow_check, self.run_button, self.save_button, self.summary,
        ])
        dock_layout(self, self.form)
        self._user_chose = False
        self._setting = False
        self._stale: list[Any] = []
        self.run_button.changed.connect(self.run)
        self.save_button.changed.connect(self._ask_and_save)
        self.denoised_combo.changed.connect(self._user_changed)
        self.listen(self.viewer.layers.events.inserted, self._reset)
        self.listen(self.viewer.layers.events.removed, self._reset)
        self.listen(self.viewer.dims.events.current_step, self._frame_changed)
        self._auto_pick()

    # -- layer choices ----------------------------------------------------------
    def _reset(self, _event: Any = None) -> None:
        self.denoised_combo.reset_choices()
        self.raw_combo.reset_choices()
        self._auto_pick()

    def _auto_pick(self) -> None:
        """Choose the layers the user most likely means, unless they chose themselves.

        A denoised layer the plugin made knows its raw layer (``sbd_source_layer``):
        the newest such pair is taken. A layer the user picked is never replaced.
        """
        made = [ly for _n, ly in image_layers(self.viewer)
                if (ly.metadata or {}).get("sbd_source_layer") in self.viewer.layers]
        den = self.denoised_combo.value
        if not self._user_chose and den not in made:
            # nothing denoised yet: leave the choice empty rather than offer the raw layer
            self._setting = True
            try:
                self.denoised_combo.value = made[-1] if made else None
            finally:
                self._setting = False
        self._pair_raw()

    def _user_changed(self, _value: Any = None) -> None:
        if not self._setting:
            self._user_chose = True
        self._pair_raw()

    def _pair_raw(self) -> None:
        """Return the raw layer of the chosen denoised layer, and its pixel size; never the same layer."""
        den = self.denoised_combo.value
        if den is None:
            return
        source = (den.metadata or {}).get("sbd_source_layer")
        if source in self.viewer.layers:
            self.raw_combo.value = self.viewer.layers[source]
        elif self.raw_combo.value is den:
            others = [ly for _n, ly in image_layers(self.viewer)
                      if ly is not den and ly.data.shape == den.data.shape]
            if others:
                self.raw_combo.value = others[0]
        px = pixel_size_pm(den)
        if px:
            self.pixel_spin.value = px

    # -- running ------------------------------------------------------------------
    def _frame_changed(self, _event: Any = None) -> None:
        # A frame change while a worker runs is picked up by _done, so the
        # overlay always ends on the frame the user is looking at.
        if self.follow_check.value and self.result is not None and self.worker is None:
            den = self.denoised_combo.value
            if (den is not None and den.data.ndim == 3
                    and current_frame_index(self.viewer, den) != self._launched_frame):
                self.run()

    def run(self, _value: Any = None) -> None:
        """Analyse the current frame in a worker thread."""
        den, raw = self.denoised_combo.value, self.raw_combo.value
        if den is None or raw is None:
            self._fail("choose the denoised layer and the raw layer it came from")
            return
        if den is raw:
            self._fail(f"'{den.name}' is chosen as both the denoised and the raw layer: denoise it "
                       "first (Denoise dock), then pick the result and its raw layer")
            return
        if den.data.shape != raw.data.shape:
            self._fail(f"'{den.name}' {den.data.shape} and '{raw.name}' {raw.data.shape} differ in "
                       "shape: pick the raw layer that was denoised")
            return
        if den.data.ndim not in (2, 3) or getattr(raw, "rgb", False):
            self._fail("columns need single-channel (H, W) or (T, H, W) layers")
            return
        if self.worker is not None:
            return
        index = current_frame_index(self.viewer, den)
        self._launched_frame = index
        detect = dict(min_sigma_a=self.sigma_min.value, max_sigma_a=self.sigma_max.value,
                      min_contrast=self.contrast_spin.value, dark=self.dark_check.value,
                      vacuum_floor=self.floor_spin.value or None)
        vacuum = self.vacuum_spin.value or None
        self.worker = create_worker(
            analyse_frame_safely, _frame(raw.data, index), _frame(den.data, index), index,
            self.pixel_spin.value, detect, vacuum, self.radius_spin.value,
            _progress={"desc": f"Columns, frame {index}"},
        )
        self.worker.returned.connect(self._show)
        self.worker.errored.connect(lambda exc: self._fail(str(exc)))
        self.worker.finished.connect(self._done)
        self.run_button.enabled = False
        # another frame's columns must not sit on this frame while it is computed
        for name in (f"{den.name} columns", f"{den.name} LLR map"):
            lay = next((la for la in self.viewer.layers if la.name == name), None)
            if lay is not None and lay.metadata.get("frame") != index and lay.visible:
                lay.visible = False
                self._stale.append(lay)
        self.summary.value = f"computing the columns of frame {index}..."
        self.worker.start()

    def table(self) -> list[dict[str, Any]]:
        """Return the shown frame's columns in physical units (see :meth:`FrameAnalysis.table`)."""
        if self.result is None:
            raise ValueError("detect the columns first")
        return self.result.table()

    def save_table(self, path: str | Path) -> Path:
        """Write :meth:`table` as CSV to a new file (atomically; an existing file is refused)."""
        path = Path(path)
        if path.exists():
            raise ValueError(f"{path} exists: choose a new file name")
        return write_columns_csv(path, self.table())

    def _ask_and_save(self, _value: Any = None) -> None:
        from qtpy.QtWidgets import QFileDialog

        name, _ = QFileDialog.getSaveFileName(self, "Save the columns table", "columns.csv",
                                              "CSV (*.csv)")
        if name:
            try:
                self.save_table(name)
            except (ValueError, OSError) as exc:
                self._fail(str(exc))

    def _done(self) -> None:
        self.worker = None
        self.run_button.enabled = True
        self._frame_changed()

    def _fail(self, message: str) -> None:
        show_error(message)
        self.summary.value = wrap(message)

    def _show(self, res: FrameAnalysis | Failure) -> None:
        if isinstance(res, Failure):
            self._fail(str(res))
            return
        self.result = res
        self.save_button.enabled = True
        for lay in self._stale:  # the overlays hidden while this frame was computed
            lay.visible = True
        self._stale.clear()
        den = self.denoised_combo.value
        geo = plane_geometry(den)
        name_pts, name_map = f"{den.name} columns", f"{den.name} LLR map"
        features = {"sigma_a": res.columns.sigma_a, "peak": res.columns.peak,
                    "contrast": res.columns.contrast, "llr": res.llr}
        if name_pts in self.viewer.layers:
            pts = self.viewer.layers[name_pts]
            pts.data = res.columns.centres
            pts.features = features
            pts.face_color = "llr"
            pts.refresh_colors()
        else:
            pts = self.viewer.add_points(
                res.columns.centres, name=name_pts, features=features, face_color="llr",
                face_colormap="RdBu_r", face_contrast_limits=(-LLR_DISPLAY_LIMIT, LLR_DISPLAY_LIMIT),
                border_color="black", border_width=0.05, **geo,
            )
        pts.size = 0.5 * 100 / self.pixel_spin.value  # half-Angstrom markers, in pixels
        pts.metadata["frame"] = res.frame
        if name_map in self.viewer.layers:
            lay = self.viewer.layers[name_map]
            lay.data = res.map
        else:
            lay = self.viewer.add_image(
                res.map, name=name_map, colormap="RdBu_r", blending="translucent",
                contrast_limits=(-LLR_DISPLAY_LIMIT, LLR_DISPLAY_LIMIT), opacity=0.8, **geo,
            )
            # the legend of the points and the map: LLR in nats per pixel, red real, blue spurious
            show_colorbar(lay)
        lay.metadata["frame"] = res.frame
        real, spurious, undecided = res.counts()
        p = res.columns.params
        floor = (f" (vacuum texture {p['vacuum_texture']:.4f})" if p.get("vacuum_texture") is not None
                 else "")
        self.summary.value = wrap(
            f"frame {res.frame}: {len(res.llr)} columns\n"
            f"contrast >= {p.get('contrast_threshold', 0):.3f} counts{floor}\n"
            f"real (LLR >= {LLR_REAL}): {real}\n"
            f"spurious (LLR <= {LLR_SPURIOUS}): {spurious}\n"
            f"undecided: {undecided}"
        )
