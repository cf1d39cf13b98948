"""A model chooser shared by the widgets: bundled default or a checkpoint file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, Container, FileEdit, Label

from napari_sbd.core.checkpoint import CheckpointError
from napari_sbd.core.inference import (
    BUNDLED,
    Denoiser,
    available_devices,
    bundled_model_path,
    load_model,
)

DEFAULT_CHOICE = "bundled default"
ENVELOPE_CHOICE = "bundled envelope (wide dose and pixel range)"
FILE_CHOICE = "checkpoint file..."
# picker label -> bundled model name
BUNDLED_CHOICES = {DEFAULT_CHOICE: "default", ENVELOPE_CHOICE: "envelope"}


class ModelPicker(Container):
    """Source (default / file), file, device, and a description of the loaded model."""

    def __init__(self) -> None:
        sources = [label for label, name in BUNDLED_CHOICES.items()
                   if bundled_model_path(name).exists()] + [FILE_CHOICE]
        self.source = ComboBox(label="model", choices=sources, value=sources[0],
                               tooltip="\n".join(f"{name}: {what}" for name, what in BUNDLED.items())
                               + "\nor a checkpoint file trained with napari-sbd-train")
        self.file = FileEdit(label="checkpoint", mode=FileDialogMode.EXISTING_FILE, filter="*.pt",
                             tooltip="a .pt checkpoint written by napari-sbd-train (loading it "
                             "never runs code from the file)")
        self.device = ComboBox(label="device", choices=["auto", *available_devices()],
                               tooltip="auto: the first CUDA GPU when PyTorch sees one, else "
                               "the CPU")
        self.info = Label(value="")
        super().__init__(widgets=[self.source, self.file, self.device, self.info])
        self._denoiser: Denoiser | None = None
        self._key: tuple | None = None
        self.source.changed.connect(self._changed)
        self.file.changed.connect(self._changed)
        self.device.changed.connect(self._changed)
        self._changed()

    def _path(self) -> str | Path:
        value = self.file.value  # one path: the edit is in EXISTING_FILE mode
        return BUNDLED_CHOICES.get(self.source.value) or Path(str(value or ""))

    def load(self) -> Denoiser:
        """Return the selected model on the selected device (cached).

        Raises
        ------
        CheckpointError
            Nothing usable is selected.
        """
        path = self._path()
        key = (str(path), self.device.value)
        if self._denoiser is None or self._key != key:
            if path not in BUNDLED and (str(path) in ("", ".") or Path(path).is_dir()):
                raise CheckpointError("choose a checkpoint file (*.pt) trained with napari-sbd-train")
            self._denoiser = load_model(path, device=self.device.value)
            self._key = key
        return self._denoiser

    def _changed(self, _value: Any = None) -> None:
        self.file.visible = self.source.value == FILE_CHOICE
        try:
            den = self.load()
        except (CheckpointError, ValueError) as exc:
            self._denoiser = None
            unset = self.source.value == FILE_CHOICE and str(self.file.value) in ("", ".")
            self.info.value = "choose a checkpoint file" if unset else wrap(str(exc))
            return
        self.info.value = wrap(den.describe())


def wrap(text: str, width: int = 44) -> str:
    """Wrap a message for a narrow dock widget."""
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())


class Failure:
    """A bad-input error carried out of a worker as a value.

    superqt re-raises exceptions that a worker returns or raises into the Qt
    event loop; a worker that meets bad data returns this instead, and the
    widget shows the message as a notification.
    """

    def __init__(self, exc: BaseException) -> None:
        self.message = str(exc)

    def __str__(self) -> str:
        return self.message
