"""One file per trained model: weights plus the metadata needed to use it well.

A checkpoint is a ``torch.save`` of a plain dictionary (tensors, strings,
numbers, lists and dicts only)::

    {"format": "napari-sbd-checkpoint", "format_version": 1,
     "metadata": {...}, "state_dict": {...}, "weights_sha256": "..."}

It is read with ``torch.load(weights_only=True)``, which unpickles nothing but
those plain types: opening a checkpoint never runs code from the file.

A damaged file must not denoise silently: ``weights_sha256`` (the SHA-256 of
every tensor's name, dtype, shape and bytes, written at save) is checked at
load, and every loaded network is run once on a small fixed probe frame and
refused if its output is not finite or is clearly negative on average. (Files
written before the checksum existed are probed only.)

Every problem with a file raises :class:`CheckpointError`, whose message names
the file and what is wrong with it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_sbd.core.files import atomic_write
from napari_sbd.core.models import ARCHITECTURES, SBDNetwork, build_model
from napari_sbd.core.noise import poisson_noise

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "ModelCard",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "napari-sbd-checkpoint"
CHECKPOINT_VERSION = 1

# Metadata every checkpoint carries; the values are what a user needs to judge
# whether the model fits their data.
REQUIRED_METADATA = ("architecture", "params", "dose", "pixel_size_pm", "contrast")


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):  # "?" or another label written by hand
        return None


def _span(value: Any) -> tuple[float, float] | None:
    if not value:
        return None
    lo, hi = (float(v) for v in value)
    return lo, hi


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint says about its model, typed: the fields a user judges a model by.

    Attributes
    ----------
    architecture : str
        Registered architecture name (:data:`~napari_sbd.core.models.ARCHITECTURES`).
    params : dict
        Its constructor arguments.
    dose : float or None
        Training (nominal) vacuum dose, counts/pixel per frame.
    pixel_size_pm : float or None
        Pixel size of the training data, pm.
    contrast : str
        Contrast class of the training images ("white", "black", "mixed"...).
    training_data : str
        Where the training images came from, in words.
    validation_psnr : float or None
        Validation PSNR of the saved weights, dB.
    dose_range, pixel_size_range_pm : tuple of float or None
        The envelope the model was trained over (None: one point).
    bin_to_pm : float or None
        Frames finer than this are binned k x k (the smallest k that reaches it while
        k x the pixel size stays inside ``pixel_size_range_pm``), measured per model on
        validation frames; None: only frames finer than the range are binned.
    bin_below_dose : float or None
        ``bin_to_pm`` holds only for frames with fewer counts per pixel than this (the
        mean on the frame's own grid, a movie's first frames' for all its frames:
        ``Denoiser.frame_binning``; above it only frames finer than the range are
        binned: a pixel that already holds many counts loses more detail to binning
        than it gains in counts); None: at every dose.
    path : str or None
        The file it was loaded from.
    """

    architecture: str
    params: dict[str, Any] = field(default_factory=dict)
    dose: float | None = None
    pixel_size_pm: float | None = None
    contrast: str = "unknown"
    training_data: str = ""
    validation_psnr: float | None = None
    dose_range: tuple[float, float] | None = None
    pixel_size_range_pm: tuple[float, float] | None = None
    bin_to_pm: float | None = None
    bin_below_dose: float | None = None
    path: str | None = None

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> ModelCard:
        """Read the card from a checkpoint's (or a Denoiser's) metadata dict."""
        return cls(
            architecture=str(meta.get("architecture", "unknown")),
            params=dict(meta.get("params") or {}),
            dose=_number(meta.get("dose")),
            pixel_size_pm=_number(meta.get("pixel_size_pm")),
            contrast=str(meta.get("contrast", "unknown")),
            training_data=str(meta.get("training_data", "")),
            validation_psnr=_number(meta.get("validation_psnr")),
            dose_range=_span(meta.get("dose_range")),
            pixel_size_range_pm=_span(meta.get("pixel_size_range_pm")),
            bin_to_pm=_number(meta.get("bin_to_pm")),
            bin_below_dose=_number(meta.get("bin_below_dose")),
            path=meta.get("path"),
        )


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, foreign or inconsistent."""


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}:{t!r};".encode())
            continue
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        # the bytes in logical (C) order whatever the memory layout (channels-last weights)
        flat = t.detach().cpu().reshape(-1).contiguous()
        h.update(flat.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("napari-sbd")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "unknown"


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    architecture: str,
    params: Mapping[str, Any],
    dose: float,
    pixel_size_pm: float,
    contrast: str,
    training_data: str = "",
    validation_psnr: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` and its metadata to ``path`` atomically.

    Parameters
    ----------
    path : path-like
        Destination file (conventionally ``*.pt``).
    model : torch.nn.Module
        The trained network (un-folded: BatchNorm layers present).
    architecture : str
        Registered architecture name (see :data:`napari_sbd.core.models.ARCHITECTURES`).
    params : mapping
        Constructor arguments of the architecture.
    dose : float
        Training dose, counts per pixel in vacuum per frame.
    pixel_size_pm : float
        Pixel size of the training images, picometres.
    contrast : str
        Column contrast of the training images ("white", "black", "intermediate", "mixed").
    training_data : str
        Free-text description of the training set.
    validation_psnr : float, optional
        Best validation PSNR in dB (papers' convention).
    extra : mapping, optional
        Further plain-typed metadata (training command, epochs, ...).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}")
    metadata: dict[str, Any] = {
        "architecture": architecture,
        "params": dict(params),
        "dose": float(dose),
        "pixel_size_pm": float(pixel_size_pm),
        "contrast": str(contrast),
        "training_data": str(training_data),
        "validation_psnr": None if validation_psnr is None else float(validation_psnr),
        "package_version": _package_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        metadata.update(dict(extra))
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "metadata": metadata,
        "state_dict": state,
        "weights_sha256": weights_digest(state),
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint file without building the network.

    Parameters
    ----------
    path : path-like
        The checkpoint.

    Returns
    -------
    dict
        The payload (``metadata`` and ``state_dict``).

    Raises
    ------
    CheckpointError
        Missing, unreadable, truncated or foreign file, or incomplete metadata.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model file {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"model path {path} is a folder, not a checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: our message says it
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types here
        text = str(exc)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        # torch's own text advises weights_only=False, which would run the file's code:
        # only its diagnosis is ever shown
        detail = [ln for ln in lines if "weights_only" not in ln and "torch.load" not in ln
                  and not ln.startswith(("Please", "Check the documentation"))]
        reason = (detail[0] if detail else type(exc).__name__).replace("WeightsUnpickler error:", "")
        code = re.search(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.]+)", text, re.IGNORECASE)
        if code is not None:
            found = code.group(1)
            why = (f"this file contains code or Python objects, not only weights (it refers to "
                   f"{found}); it was refused for safety and nothing in it was run. Use a "
                   "checkpoint written by napari-sbd-train, from a source you trust")
        elif path.stat().st_size == 0:
            why = "it is empty"
        else:
            why = f"it is not a readable PyTorch file, or it is truncated ({reason.strip()})"
        raise CheckpointError(f"cannot load model file {path}: {why}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"model file {path} is not a napari-sbd checkpoint (a PyTorch file without "
            "the napari-sbd header; train one with napari-sbd-train, or save one with "
            "napari_sbd.core.checkpoint.save_checkpoint)"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"model file {path} has checkpoint format version {version!r}; this napari-sbd "
            f"reads up to version {CHECKPOINT_VERSION}: upgrade napari-sbd"
        )
    meta = payload.get("metadata")
    state = payload.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise CheckpointError(f"model file {path} lacks its metadata or its weights")
    digest = payload.get("weights_sha256")
    if digest is not None and weights_digest(state) != digest:
        raise CheckpointError(
            f"model file {path} is damaged: its weights do not match the checksum written when "
            "it was saved (a corrupted download, copy or disk); copy it again from its source"
        )
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise CheckpointError(f"model file {path} lacks metadata: {', '.join(missing)}")
    if meta["architecture"] not in ARCHITECTURES:
        raise CheckpointError(
            f"model file {path} uses architecture {meta['architecture']!r}, unknown to this "
            f"napari-sbd (known: {', '.join(sorted(ARCHITECTURES))})"
        )
    return payload


def load_checkpoint(path: str | os.PathLike) -> tuple[SBDNetwork, dict[str, Any]]:
    """Build the network stored in ``path`` and load its weights.

    Parameters
    ----------
    path : path-like
        The checkpoint.

    Returns
    -------
    network : SBDNetwork
        The network on the CPU, in eval mode.
    metadata : dict
        Its metadata.

    Raises
    ------
    CheckpointError
        For any problem, with the file named.
    """
    payload = read_checkpoint(path)
    meta, state = payload["metadata"], payload["state_dict"]
    params = meta["params"] if isinstance(meta["params"], dict) else {}
    try:
        # built first without memory ("meta" tensors), so that parameters asking for a
        # network far larger than the file's weights are refused instead of allocated
        with torch.device("meta"):
            skeleton = build_model(meta["architecture"], **params)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"model file {path}: its architecture parameters {meta['params']} are invalid ({exc})"
        ) from None
    expected = skeleton.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(state)
        if not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})")
        raise CheckpointError(
            f"model file {path}: the weights do not match its declared architecture "
            f"{meta['architecture']} {meta['params']}: " + "; ".join(parts)
        )
    net = build_model(meta["architecture"], **params)
    net.load_state_dict(state)
    net.eval()
    _probe(net, path)
    return net, dict(meta)


def _probe(net: SBDNetwork, path: str | os.PathLike) -> None:
    """Run the network once on a fixed noisy frame; refuse output no denoiser gives.

    The probe is a Poisson draw (fixed seed) of a small synthetic particle at
    0.45 counts/pixel. A network with NaN weights gives NaN; flipped bytes in
    the weights gave frames of -5 counts on average. A trained denoiser
    returns about the input's mean (phase contrast conserves it); an
    untrained one about zero: only a clearly negative mean is refused.
    """
    from napari_sbd.core.phantom import pt_on_ceo2_phantom

    m = int(getattr(net, "size_multiple", 1))
    side = max(64, -(-64 // m) * m)
    clean = pt_on_ceo2_phantom((side, side), particle_radius_a=5, seed=0).image

    x = poisson_noise(clean, rng=20211431)
    with torch.no_grad():
        y = net(torch.from_numpy(x)[None, None]).float()
    if not bool(torch.isfinite(y).all()):
        raise CheckpointError(
            f"model file {path} gives NaN or infinite values on a test frame: its weights are "
            "damaged or training diverged; use another checkpoint (for a training run, an "
            "earlier best.pt)"
        )
    if float(y.mean()) < -0.25 * float(x.mean()):
        raise CheckpointError(
            f"model file {path} gives negative counts on a test frame (mean {float(y.mean()):.3g} "
            f"for an input of mean {float(x.mean()):.3g}): its weights are damaged; copy it "
            "again from its source"
        )
