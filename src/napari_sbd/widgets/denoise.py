"""Dock widget: denoise an image layer frame by frame with a trained network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QProgressBar, QVBoxLayout, QWidget

from napari_sbd.core.checkpoint import CheckpointError
from napari_sbd.core.inference import (
    DEFAULT_TILE,
    Denoiser,
    available_devices,
    default_model_path,
    estimate_dose,
    load_model,
)
from napari_sbd.core.inputs import InputError, check_stack_shape
from napari_sbd.widgets._layers import copy_geometry, pixel_size_pm

DEFAULT_CHOICE = "bundled default"
FILE_CHOICE = "checkpoint file..."


class DenoiseWidget(QWidget):
    """Pick an image layer and a model; denoise into ``<name> denoised``.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker: Any = None
        self.output_layer: Image | None = None
        self._denoiser: Denoiser | None = None
        self._denoiser_key: tuple | None = None

        self.layer_combo = ComboBox(label="image", choices=self._image_layers)
        sources = [DEFAULT_CHOICE, FILE_CHOICE] if default_model_path().exists() else [FILE_CHOICE]
        self.model_combo = ComboBox(label="model", choices=sources, value=sources[0])
        self.model_file = FileEdit(label="checkpoint", mode="r", filter="*.pt")
        self.device_combo = ComboBox(label="device", choices=["auto", *available_devices()])
        self.tile_spin = SpinBox(label="tile (px)", min=64, max=8192, step=64, value=DEFAULT_TILE)
        self.info = Label(value="")
        self.run_button = PushButton(text="Denoise")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.form = Container(
            widgets=[
                self.layer_combo,
                self.model_combo,
                self.model_file,
                self.device_combo,
                self.tile_spin,
                self.run_button,
                self.cancel_button,
                self.info,
            ]
        )
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.progress)
        layout.addStretch()

        self.model_combo.changed.connect(self._model_changed)
        self.model_file.changed.connect(self._model_changed)
        self.device_combo.changed.connect(self._model_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(self._reset_layers)
        self.viewer.layers.events.removed.connect(self._reset_layers)
        self._model_changed()

    # -- choices --------------------------------------------------------------
    def _image_layers(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _reset_layers(self, _event: Any = None) -> None:
        self.layer_combo.reset_choices()

    def _model_source(self) -> str | Path:
        if self.model_combo.value == DEFAULT_CHOICE:
            return "default"
        return Path(self.model_file.value)

    # -- model ----------------------------------------------------------------
    def load_denoiser(self) -> Denoiser:
        """Load (or reuse) the selected model on the selected device."""
        source = self._model_source()
        key = (str(source), self.device_combo.value)
        if self._denoiser is None or self._denoiser_key != key:
            if source != "default" and (str(source) in ("", ".") or Path(source).is_dir()):
                raise CheckpointError("choose a checkpoint file (*.pt) trained with napari-sbd-train")
            self._denoiser = load_model(source, device=self.device_combo.value)
            self._denoiser_key = key
        return self._denoiser

    def _model_changed(self, _value: Any = None) -> None:
        self.model_file.visible = self.model_combo.value == FILE_CHOICE
        try:
            den = self.load_denoiser()
        except (CheckpointError, ValueError) as exc:
            self._denoiser = None
            self.info.value = _wrap(str(exc)) if self.model_combo.value != FILE_CHOICE or str(
                self.model_file.value
            ) not in ("", ".") else "choose a checkpoint file"
            return
        self.info.value = _wrap(den.describe())

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
            data = layer.data
            single = check_stack_shape(tuple(data.shape), data.dtype)
            den = self.load_denoiser()
        except (InputError, CheckpointError, ValueError) as exc:
            show_error(str(exc))
            self.info.value = _wrap(str(exc))
            return
        for msg in den.compatibility_warnings(estimate_dose(data), pixel_size_pm(layer)):
            show_warning(msg)
        total = 1 if single else int(data.shape[0])
        name = f"{layer.name} denoised"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.output_layer = self.viewer.add_image(
            np.zeros(data.shape, dtype=np.float32),
            name=name,
            colormap="gray",
            metadata={
                **dict(layer.metadata or {}),
                "sbd_model": den.metadata,
                "sbd_source_layer": layer.name,
                "sbd_complete": False,
                "sbd_frames_done": 0,
            },
            **copy_geometry(layer),
        )
        tile = int(self.tile_spin.value)
        self.worker = create_worker(
            _denoise_frames,
            den,
            data,
            tile,
            _progress={"total": total, "desc": f"Denoising {layer.name}"},
        )
        self.worker.yielded.connect(self._frame_done)
        self.worker.errored.connect(self._failed)
        self.worker.aborted.connect(self._aborted)
        self.worker.finished.connect(self._finished)
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self._total = total
        self._first = True
        self.worker.start()

    def cancel(self, _value: Any = None) -> None:
        """Ask the running job to stop after the current frame."""
        if self.worker is not None:
            self.worker.quit()

    def _frame_done(self, item: tuple[int, np.ndarray]) -> None:
        index, frame = item
        layer = self.output_layer
        if layer is None:
            return
        if layer.data.ndim == 2:
            layer.data[...] = frame
        else:
            layer.data[index] = frame
        if self._first:
            lo, hi = np.percentile(frame, [0.5, 99.5])
            layer.contrast_limits = (float(lo), float(hi) if hi > lo else float(lo) + 1e-3)
            self._first = False
        layer.metadata["sbd_frames_done"] += 1
        layer.refresh()
        self.progress.setValue(layer.metadata["sbd_frames_done"])

    def _finished(self) -> None:
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self.progress.setVisible(False)
        layer = self.output_layer
        if layer is not None and layer.metadata.get("sbd_frames_done") == self._total:
            layer.metadata["sbd_complete"] = True
            show_info(f"denoised {self._total} frame(s) into '{layer.name}'")

    def _aborted(self) -> None:
        layer = self.output_layer
        if layer is not None:
            done = layer.metadata.get("sbd_frames_done", 0)
            layer.name = f"{layer.name} (cancelled: {done} of {self._total} frames)"
            show_info(f"denoising cancelled after {done} of {self._total} frames")

    def _failed(self, exc: Exception) -> None:
        if self.output_layer is not None and self.output_layer in self.viewer.layers:
            self.viewer.layers.remove(self.output_layer)
        self.output_layer = None
        show_error(f"denoising failed: {exc}")
        self.info.value = _wrap(f"denoising failed: {exc}")


def _denoise_frames(den: Denoiser, data: Any, tile: int):
    """Worker body: yield each denoised frame (runs off the GUI thread)."""
    yield from den.iter_denoise(data, tile_size=tile)


def _wrap(text: str, width: int = 48) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())
