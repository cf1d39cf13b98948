"""A model chooser shared by the widgets: auto, a bundled model, or a checkpoint file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, Container, FileEdit, Label

from napari_sbd.core.checkpoint import CheckpointError
from napari_sbd.core.inference import (
    AUTO_DEFAULT_DOSE,
    AUTO_DEFAULT_PIXEL_PM,
    BLENDS,
    BUNDLED,
    Denoiser,
    available_devices,
    blend_installed,
    blend_text,
    bundled_model_path,
    choose_bundled_model,
    load_model,
)
from napari_sbd.core.selection import auto_candidates, load_candidates

AUTO_CHOICE = "auto (chosen from the data)"
DEFAULT_CHOICE = "bundled default"
ENVELOPE_CHOICE = "bundled envelope (wide dose and pixel range)"
BLACK_CHOICE = "bundled black contrast (dark columns, underfocus)"
HIGH_DOSE_CHOICE = "bundled high-dose (many counts per pixel)"
FILE_CHOICE = "checkpoint file..."
BLEND_50_CHOICE = "bundled blend 50/50 (default + high-dose)"
BLEND_70_CHOICE = "bundled blend 30/70 (default + high-dose)"
# picker label -> bundled model (or blend) name
BUNDLED_CHOICES = {DEFAULT_CHOICE: "default", ENVELOPE_CHOICE: "envelope",
                   HIGH_DOSE_CHOICE: "high-dose", BLACK_CHOICE: "black",
                   BLEND_50_CHOICE: "blend-50", BLEND_70_CHOICE: "blend-70"}
_LO, _HI = AUTO_DEFAULT_DOSE
_PLO, _PHI = AUTO_DEFAULT_PIXEL_PM
AUTO_TEXT = (f"auto, from the layer: the default at {_LO:g}-{_HI:g} counts/pixel and "
             f"{_PLO:g}-{_PHI:g} pm (frames above its 0.45 split into parts at it), or its "
             "black-contrast sibling; else the envelope or the high-dose model; above 0.45 "
             "near 6.1 pm also the default and the high-dose model averaged (blend-50, "
             "blend-70); of these the one whose output better predicts counts held out of "
             "the first frame")


class ModelPicker(Container):
    """Source (default / file), file, device, and a description of the loaded model."""

    def __init__(self) -> None:
        bundled = [label for label, name in BUNDLED_CHOICES.items()
                   if (blend_installed(name) if name in BLENDS else bundled_model_path(name).exists())]
        # auto needs both bundled models to choose between
        sources = ([AUTO_CHOICE] if len(bundled) > 1 else []) + bundled + [FILE_CHOICE]
        self.source = ComboBox(
            label="model", choices=sources, value=sources[0],
            tooltip=AUTO_TEXT + " when it runs\n"
            + "\n".join(f"{name}: {what}" for name, what in BUNDLED.items())
            + "".join(f"\n{name}: {blend_text(name)}, their outputs averaged" for name in BLENDS)
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
        self._bundled: dict[tuple[str, str], Denoiser] = {}  # auto's candidates, by (name, device)
        self.source.changed.connect(self._changed)
        self.file.changed.connect(self._changed)
        self.device.changed.connect(self._changed)
        self._changed()

    def _path(self, dose: float | None = None, pixel_size_pm: float | None = None,
              contrast: str | None = None, envelope: str | None = None) -> str | Path:
        if self.source.value == AUTO_CHOICE:
            return choose_bundled_model(dose, pixel_size_pm, contrast, envelope)[0]
        value = self.file.value  # one path: the edit is in EXISTING_FILE mode
        return BUNDLED_CHOICES.get(self.source.value) or Path(str(value or ""))

    @property
    def is_auto(self) -> bool:
        """Whether the model is chosen from the data (:func:`choose_bundled_model`)."""
        return self.source.value == AUTO_CHOICE

    def load(self, dose: float | None = None, pixel_size_pm: float | None = None,
             contrast: str | None = None, envelope: str | None = None) -> Denoiser:
        """Return the selected model on the selected device (cached).

        Parameters
        ----------
        dose, pixel_size_pm : float, optional
            The data's, for the auto choice (unknown: the default's own).
        contrast, envelope : str, optional
            What auto read from the data's counts
            (:func:`~napari_sbd.core.selection.auto_read`; unknown: white, and the dose
            rule of :func:`~napari_sbd.core.inference.choose_bundled_model`).

        Raises
        ------
        CheckpointError
            Nothing usable is selected.
        """
        path = self._path(dose, pixel_size_pm, contrast, envelope)
        key = (str(path), self.device.value)
        if self._denoiser is None or self._key != key:
            if path not in BUNDLED and path not in BLENDS and (str(path) in ("", ".")
                                                               or Path(path).is_dir()):
                raise CheckpointError("choose a checkpoint file (*.pt) trained with napari-sbd-train")
            self._denoiser = (self._cached([str(path)])[str(path)] if path in BLENDS
                              else load_model(path, device=self.device.value))
            self._key = key
        return self._denoiser

    def candidate_models(self, dose: float | None,
                         pixel_size_pm: float | None) -> dict[str, Denoiser] | None:
        """Return the bundled models auto chooses between for these data, by name (cached).

        Those of :func:`~napari_sbd.core.selection.auto_candidates` (default and
        black inside the default's window, envelope and high-dose outside, and the
        blends where the default splits frames), loaded on the selected device;
        None where auto's rules decide alone.
        """
        names = auto_candidates(dose, pixel_size_pm)
        return self._cached(list(names)) if names else None

    def _cached(self, names: list[str]) -> dict[str, Denoiser]:
        """Bundled models and blends by name on the selected device, each model loaded once."""
        device = self.device.value
        # another device chosen: the models on the old one are let go
        self._bundled = {k: m for k, m in self._bundled.items() if k[1] == device}
        loaded = {k[0]: m for k, m in self._bundled.items()}
        out = load_candidates(names, device, loaded)
        self._bundled.update({(n, device): m for n, m in loaded.items()})
        return out

    def _changed(self, _value: Any = None) -> None:
        self.file.visible = self.source.value == FILE_CHOICE
        try:
            den = self.load()
        except (CheckpointError, ValueError) as exc:
            self._denoiser = None
            unset = self.source.value == FILE_CHOICE and str(self.file.value) in ("", ".")
            self.info.value = "choose a checkpoint file" if unset else wrap(str(exc))
            return
        self.info.value = wrap(AUTO_TEXT if self.is_auto else den.describe())


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
