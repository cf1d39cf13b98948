"""Dock widget: atomic columns and their log-likelihood ratios, frame by frame."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

from napari_sbd.core.analysis import (
    FrameAnalysis,
    analyse_frame,
    iter_analyse,
    write_columns_csv,
)
from napari_sbd.core.columns import detection_defaults
from napari_sbd.core.likelihood import LLR_REAL, LLR_SPURIOUS
from napari_sbd.core.text import counted
from napari_sbd.core.tracking import MAX_DISPLACEMENT_A, MEMORY_FRAMES
from napari_sbd.core.units import PAPERS_PIXEL_SIZE_PM
from napari_sbd.widgets._layers import (
    DockWidget,
    current_frame_index,
    dock_layout,
    drop_own_layer,
    image_layers,
    own_layer,
    own_mark,
    pixel_size_pm,
    plane_geometry,
    raw_counts,
    show_colorbar,
    unique_layer_name,
)
from napari_sbd.widgets._model import Failure, wrap

__all__ = ["ColumnsWidget"]

# symmetric colour range of the LLR display: beyond +-0.02 every column is decided
LLR_DISPLAY_LIMIT = 0.02

DETECT = detection_defaults()  # the dock opens on the library's own defaults


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


def _analyse_all(raw: Any, den: Any, pixel_size_pm: float, detect: dict[str, Any],
                 vacuum_level: float | None, radius_a: float) -> Any:
    """Worker body for "Track all frames": core's loop, a bad frame's error as a Failure."""
    for i, res in iter_analyse(raw, den, pixel_size_pm, detect=detect,
                               vacuum_level=vacuum_level, radius_a=radius_a):
        yield i, Failure(res) if isinstance(res, ValueError) else res


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
                                       value=PAPERS_PIXEL_SIZE_PM,
                                       tooltip="picometres per pixel: read from the layer's "
                                       "scale when it has one; converts every length in A")
        self.spacing_spin = FloatSpinBox(
            label="column spacing (A, 0 = auto)", min=0.0, max=50, step=0.1, value=0.0,
            tooltip="distance between neighbouring columns; 0 reads it from the frame's "
            "autocorrelation (every scale of the detection follows from it)")
        self.polarity_combo = ComboBox(
            label="columns", choices=["auto", "bright", "dark"], value="auto",
            tooltip="bright (HAADF, white-contrast HRTEM) or dark (black contrast) columns; "
            "auto decides from the frame")
        self.threshold_spin = FloatSpinBox(
            label="min contrast (relative)", min=0.0, max=0.95, step=0.05,
            value=DETECT["threshold"],
            tooltip="a column must reach this fraction of the contrast of the frame's strong "
            "columns (any intensity units) and stand above the frame's noise")
        self.floor_spin = FloatSpinBox(label="vacuum floor (sigmas, 0 = off)", min=0.0, max=20,
                                       step=0.5, value=DETECT["vacuum_floor"] or 0.0)
        self.floor_spin.tooltip = ("columns must also stand out by this many standard deviations of the "
                                   "denoised vacuum's texture (a network leaves a faint texture there)")
        self.radius_spin = FloatSpinBox(
            label="LLR radius (A)", min=0.1, max=3, step=0.1, value=0.7,
            tooltip="the disc around each column whose raw counts the likelihood test reads")
        self.vacuum_spin = FloatSpinBox(
            label="vacuum (0 = find)", min=0.0, max=1e4, step=0.01, value=0.0,
            tooltip="the vacuum's counts per pixel per frame, the likelihood test's background; "
            "0 finds it in each frame")
        self.follow_check = CheckBox(label="follow the frame slider", value=True,
                                     tooltip="detect again whenever the frame on screen changes")
        self.run_button = PushButton(text="Detect columns",
                                     tooltip="find the columns of the frame on screen and test "
                                     "each against the raw counts (LLR)")
        self.track_button = PushButton(
            text="Track all frames",
            tooltip="find the columns of every frame and link each column through the movie: "
            "a Tracks layer, every frame's points, and the movie's table (Save table...)")
        self.reach_spin = FloatSpinBox(
            label="max move (A)", min=0.05, max=10, step=0.05, value=MAX_DISPLACEMENT_A,
            tooltip="Track all frames: the largest move of a column from one frame to the next; "
            "keep it under half the column spacing so neighbours are never linked")
        self.memory_spin = SpinBox(
            label="memory (frames)", min=0, max=100, value=MEMORY_FRAMES,
            tooltip="Track all frames: frames a column may be missing and keep its track")
        self.cancel_button = PushButton(text="Cancel", enabled=False,
                                        tooltip="stop Track all frames (nothing half-done is "
                                        "shown)")
        self.save_button = PushButton(text="Save table...", enabled=False,
                                      tooltip="the columns as CSV: frame (and track, after "
                                      "Track all frames), position (nm, px) and its error (pm), "
                                      "sigma (A), peak, contrast and intensity (counts), LLR "
                                      "and class")
        self.summary = Label(value="")
        self.form = Container(widgets=[
            self.denoised_combo, self.raw_combo, self.pixel_spin, self.spacing_spin,
            self.polarity_combo, self.threshold_spin, self.floor_spin, self.radius_spin,
            self.vacuum_spin,
            self.follow_check, self.run_button, self.reach_spin, self.memory_spin,
            self.track_button, self.cancel_button,
            self.save_button, self.summary,
        ])
        from qtpy.QtWidgets import QProgressBar

        self.progress = QProgressBar()
        self.progress.setVisible(False)
        dock_layout(self, self.form, self.progress)
        self.movie_rows: list[dict[str, Any]] | None = None
        self._user_chose = False
        self._setting = False
        self._stale: list[Any] = []
        self.run_button.changed.connect(self.run)
        self.track_button.changed.connect(self.track_all)
        # a movie table made with other options is not what Save table... should write
        for option in (self.spacing_spin, self.polarity_combo, self.threshold_spin,
                       self.floor_spin, self.radius_spin, self.vacuum_spin, self.pixel_spin,
                       self.reach_spin, self.memory_spin, self.denoised_combo, self.raw_combo):
            option.changed.connect(self._forget_movie)
        self.cancel_button.changed.connect(self.cancel)
        self.save_button.changed.connect(self._ask_and_save)
        self.denoised_combo.changed.connect(self._user_changed)
        self.follow_layers(self._reset)
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
        counts = raw_counts(raw, den)  # the counts (block, calibration) the network saw
        if den.data.shape != counts.shape:
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
        detect = dict(spacing_a=self.spacing_spin.value or None, polarity=self.polarity_combo.value,
                      threshold=self.threshold_spin.value, vacuum_floor=self.floor_spin.value or None)
        vacuum = self.vacuum_spin.value or None
        self.worker = create_worker(
            analyse_frame_safely, _frame(counts, index), _frame(den.data, index), index,
            self.pixel_spin.value, detect, vacuum, self.radius_spin.value,
            _progress={"desc": f"Columns, frame {index}"},
        )
        self.connect_worker(self.worker, returned=self._show,
                            errored=lambda exc: self._fail(str(exc)), finished=self._done)
        self.run_button.enabled = False
        # another frame's columns must not sit on this frame while it is computed
        for role in ("columns", "LLR map"):
            lay = own_layer(self.viewer, role, den.name)
            if lay is not None and lay.metadata.get("frame") != index and lay.visible:
                lay.visible = False
                self._stale.append(lay)
        self.summary.value = f"computing the columns of frame {index}..."
        self.worker.start()

    def _layers_checked(self) -> tuple[Any, Any] | None:
        """Return the denoised layer and the raw counts it was made from (None: refused)."""
        den, raw = self.denoised_combo.value, self.raw_combo.value
        if den is None or raw is None:
            self._fail("choose the denoised layer and the raw layer it came from")
            return None
        counts = raw_counts(raw, den) if den is not raw else None
        if counts is None or den.data.shape != counts.shape:
            self._fail("pick a denoised layer and the raw layer of the same shape it came from")
            return None
        return den, counts

    def _detect_options(self) -> dict[str, Any]:
        return dict(spacing_a=self.spacing_spin.value or None, polarity=self.polarity_combo.value,
                    threshold=self.threshold_spin.value, vacuum_floor=self.floor_spin.value or None)

    def track_all(self, _value: Any = None) -> None:
        """Find the columns of every frame in a worker, then link them into tracks."""
        layers = self._layers_checked()
        if layers is None or self.worker is not None:
            return
        den, counts = layers
        if den.data.ndim != 3:
            self._fail("Track all frames needs a movie: a (T, H, W) denoised layer")
            return
        n = den.data.shape[0]
        self._movie: dict[int, FrameAnalysis] = {}
        self._movie_layer = den
        self.worker = create_worker(
            _analyse_all, counts, den.data, self.pixel_spin.value, self._detect_options(),
            self.vacuum_spin.value or None, self.radius_spin.value,
            _progress={"desc": f"Columns of {n} frames"},  # "busy" only: see the Denoise dock
        )
        self.connect_worker(
            self.worker,
            yielded=self._movie_frame,
            returned=lambda _r: self._show_tracks(),
            aborted=lambda: self._fail(f"tracking cancelled after {len(self._movie)} of {n} frames"),
            errored=lambda exc: self._fail(str(exc)),
            finished=self._movie_done,
        )
        self.progress.setRange(0, n)
        self.progress.setValue(0)
        self.progress.setFormat(f"0 of {n} frames")
        self.progress.setVisible(True)
        self.run_button.enabled = self.track_button.enabled = False
        self.cancel_button.enabled = True
        self.summary.value = f"finding the columns of {n} frames..."
        self.worker.start()

    def _forget_movie(self, _value: Any = None) -> None:
        self.movie_rows = None
        self.save_button.enabled = self.result is not None

    def cancel(self, _value: Any = None) -> None:
        """Stop "Track all frames" (what was found is dropped; nothing is half-shown)."""
        if self.worker is not None:
            self.worker.quit()

    def _movie_frame(self, item: tuple[int, FrameAnalysis | Failure]) -> None:
        i, res = item
        if isinstance(res, Failure):
            show_error(f"frame {i}: {res}")
        else:
            self._movie[i] = res
        n = self.progress.maximum()
        self.progress.setValue(i + 1)
        self.progress.setFormat(f"{i + 1} of {n} frames")

    def _movie_done(self) -> None:
        self.worker = None
        self.progress.setVisible(False)
        self.run_button.enabled = self.track_button.enabled = True
        self.cancel_button.enabled = False

    def _show_tracks(self) -> None:
        from napari_sbd.core.tracking import track_rows

        den = self._movie_layer
        frames = [self._movie[i] for i in sorted(self._movie)]
        rows = track_rows([f.table() for f in frames], self.pixel_spin.value,
                          max_displacement_a=self.reach_spin.value, memory=self.memory_spin.value)
        if not rows:
            self.summary.value = wrap(f"no columns found in {len(frames)} frames")
            return
        tracks = np.array([[r["track"], r["frame"], r["row_px"], r["col_px"]] for r in rows])
        llr = np.array([r["llr"] for r in rows], dtype=np.float64)
        geo = dict(scale=tuple(den.scale), translate=tuple(den.translate),
                   units=tuple(str(u) for u in den.units))
        # the previous run's overlays are replaced; a user's layer of the same name is kept
        for role in ("tracks", "columns, all frames"):
            drop_own_layer(self.viewer, role, den.name)
        self.viewer.add_tracks(tracks, name=unique_layer_name(self.viewer, f"{den.name} tracks"),
                               properties={"llr": np.nan_to_num(llr)},
                               metadata=own_mark("tracks", den.name),
                               color_by="llr", colormap="twilight", tail_length=10, **geo)
        self.viewer.add_points(
            tracks[:, 1:], name=unique_layer_name(self.viewer, f"{den.name} columns, all frames"),
            metadata=own_mark("columns, all frames", den.name),
            size=0.5 * 100 / self.pixel_spin.value,
            features={k: [r[k] for r in rows] for k in ("track", "llr", "intensity_counts_px",
                                                       "position_error_pm", "class")},
            face_color="llr", face_colormap="RdBu_r",
            face_contrast_limits=(-LLR_DISPLAY_LIMIT, LLR_DISPLAY_LIMIT),
            border_color="black", border_width=0.05, **geo,
        )
        n_tracks = len({r["track"] for r in rows})
        empty = sum(1 for f in frames if f.no_lattice)
        self.summary.value = wrap(
            f"{counted(len(rows), 'column')} in {counted(len(frames), 'frame')}, linked into "
            f"{counted(n_tracks, 'track')}"
            + (f"; {counted(empty, 'frame')} without a lattice" if empty else "")
            + ". Save table... writes one row per column and frame (with its track).")
        # last: adding the layers above resets the layer choices (which forgets a movie table)
        self.movie_rows = rows
        self.save_button.enabled = True

    def table(self) -> list[dict[str, Any]]:
        """Return the shown frame's columns in physical units (see :meth:`FrameAnalysis.table`)."""
        if self.result is None:
            raise ValueError("detect the columns first")
        return self.result.table()

    def save_table(self, path: str | Path) -> Path:
        """Write the columns as CSV to a new file (atomically; an existing file is refused).

        After "Track all frames": the movie's table (one row per column and
        frame, with its track; an HDF5 copy beside it where h5py is
        installed); otherwise the shown frame's (:meth:`table`).
        """
        path = Path(path)
        if path.exists():
            raise ValueError(f"{path} exists: choose a new file name")
        if self.movie_rows is not None:
            from napari_sbd.core.tracking import write_tracks

            if path.with_suffix(".h5").exists():
                raise ValueError(f"{path.with_suffix('.h5')} exists (the HDF5 copy goes there): "
                                 "choose a new file name")
            return write_tracks(path, self.movie_rows)[0]
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
        features = {"sigma_a": res.columns.sigma_a, "peak": res.columns.peak,
                    "contrast": res.columns.contrast, "intensity": res.columns.intensity,
                    "position_error_pm": res.columns.position_error_pm, "llr": res.llr}
        pts = own_layer(self.viewer, "columns", den.name)
        if pts is not None:
            pts.data = res.columns.centres
            pts.features = features
            pts.face_color = "llr"
            pts.refresh_colors()
        else:
            pts = self.viewer.add_points(
                res.columns.centres, name=unique_layer_name(self.viewer, f"{den.name} columns"),
                metadata=own_mark("columns", den.name), features=features, face_color="llr",
                face_colormap="RdBu_r", face_contrast_limits=(-LLR_DISPLAY_LIMIT, LLR_DISPLAY_LIMIT),
                border_color="black", border_width=0.05, **geo,
            )
        pts.size = 0.5 * 100 / self.pixel_spin.value  # half-Angstrom markers, in pixels
        pts.metadata["frame"] = res.frame
        lay = own_layer(self.viewer, "LLR map", den.name)
        if lay is not None:
            lay.data = res.map
        else:
            lay = self.viewer.add_image(
                res.map, name=unique_layer_name(self.viewer, f"{den.name} LLR map"),
                metadata=own_mark("LLR map", den.name), colormap="RdBu_r", blending="translucent",
                contrast_limits=(-LLR_DISPLAY_LIMIT, LLR_DISPLAY_LIMIT), opacity=0.8, **geo,
            )
            # the legend of the points and the map: LLR in nats per pixel, red real, blue spurious
            show_colorbar(lay)
        lay.metadata["frame"] = res.frame
        if res.no_lattice:
            self.summary.value = wrap(f"frame {res.frame}: no columns: {res.no_lattice}")
            return
        real, spurious, undecided = res.counts()
        p = res.columns.params
        floor = (f" (vacuum texture {p['vacuum_texture']:.4f})" if p.get("vacuum_texture") is not None
                 else "")
        self.summary.value = wrap(
            f"frame {res.frame}: {len(res.llr)} {p.get('polarity', '')} columns, "
            f"{p.get('spacing_a', float('nan')):.2f} A apart\n"
            f"contrast >= {p.get('contrast_threshold', 0):.3f}"
            f"{' (Anscombe units: raw counts)' if p.get('units') == 'anscombe' else ''}{floor}\n"
            f"real (LLR >= {LLR_REAL}): {real}\n"
            f"spurious (LLR <= {LLR_SPURIOUS}): {spurious}\n"
            f"undecided: {undecided}"
        )
