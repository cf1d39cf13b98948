"""One declaration of every training option: the dataclass, the command line and its help.

Each field of :class:`TrainConfig` carries its command-line flag, help text
(with its unit), parser and group in its metadata; ``napari-sbd-train``'s
parser is generated from them (:func:`build_parser`), so an option is written
once. Defaults appear in ``--help`` from the field itself.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from napari_sbd._cli import number
from napari_sbd.training.data import TrainingDataError

__all__ = ["MIN_DOSE", "TrainConfig", "add_options", "config_from_args"]

MIN_DOSE = 0.01  # counts/pixel: below this a frame is almost all zeros and PSNR meaningless


def span(text: str) -> tuple[float, float]:
    """``LO:HI`` -> (lo, hi), both positive and finite, lo <= hi."""
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use LO:HI, e.g. 0.1:5") from None
    if not (0 < lo <= hi < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 < LO <= HI")
    return lo, hi


def dose_span(text: str) -> tuple[float, float]:
    """Return a dose range ``LO:HI`` in counts/pixel (LO at least :data:`MIN_DOSE`)."""
    lo, hi = span(text)
    if lo < MIN_DOSE:
        raise argparse.ArgumentTypeError(f"{text!r}: doses below {MIN_DOSE} counts/pixel are "
                                         "almost all zeros; raise LO")
    return lo, hi


def structure_list(text: str) -> tuple[str, ...]:
    """``ID,ID,...`` or ``@FILE`` (ids separated by commas, spaces or lines) -> sorted ids."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read the structure list {text[1:]}: "
                                             f"{exc.strerror}") from None
    ids = sorted({t for t in text.replace(",", " ").split() if t})
    if not ids:
        raise argparse.ArgumentTypeError(f"{text!r}: no structure ids (e.g. s01003,s01017)")
    return tuple(ids)


def opt(default: Any, help: str, group: str, *, flag: str | None = None, show_default: bool = True,
        **argparse_kw: Any) -> Any:
    """Return a TrainConfig field declared with its command-line option."""
    meta = {"help": help, "group": group, "flag": flag, "show_default": show_default,
            "argparse": argparse_kw}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every option of ``napari-sbd-train`` (see its --help for units)."""

    data: str = field(metadata={"help": "folder of clean float32 TIFF images in counts per "
                                "pixel, optionally with the simulator's metadata.csv",
                                "group": "data", "positional": True})
    out: str = field(metadata={"help": "output folder for checkpoints, state and log",
                               "group": "data", "argparse": {"required": True}})
    where: list[str] = opt([], "keep images whose metadata KEY equals VALUE (a,b for several, "
                           "lo:hi for a numeric range); repeatable, e.g. --where contrast=white",
                           "data", action="append", metavar="KEY=VALUE", show_default=False)
    val_fraction: float = opt(0.1, "fraction of STRUCTURES held out for validation", "data",
                              type=number(float, above=0, below=1))
    val_structures: tuple[str, ...] | None = opt(
        None, "hold out exactly these structures (ids of the metadata's structure_id column, "
        "comma-separated, or @FILE); replaces --val-fraction. Keeps a run grown from "
        "--init-from on a larger data set from validating on what its parent trained on",
        "data", type=structure_list, metavar="IDS", show_default=False)
    val_images: int = opt(12, "validation images used per epoch", "data", type=int)
    val_crop: int = opt(512, "side in pixels of the validation centre crops", "data", type=int)
    dose: float | None = opt(0.45, "vacuum dose of the noisy inputs, counts/pixel/frame (the "
                             "papers'; at least 0.01)", "noise and metadata",
                             type=number(float, at_least=MIN_DOSE, unit="counts/pixel"))
    dose_range: tuple[float, float] | None = opt(
        None, "train over an envelope of doses: each patch's vacuum dose is drawn log-uniformly "
        "in [LO, HI] counts/pixel/frame (e.g. 0.1:5); --dose is then the nominal dose the "
        "validation and the loss are expressed at", "noise and metadata", type=dose_span,
        metavar="LO:HI", show_default=False)
    contrast: str | None = opt(None, "contrast label stored in the checkpoint (default: from the "
                               "metadata table)", "noise and metadata", show_default=False)
    pixel_size_pm: float | None = opt(None, "pixel size of the data, pm (default: from the "
                                      "metadata table, else 6.1)", "noise and metadata",
                                      type=float, show_default=False)
    patch: int = opt(256, "patch side in pixels", "augmentation", type=int)
    max_angle: float = opt(45.0, "random rotation in [-A, A] degrees", "augmentation", type=float)
    scale_min: float = opt(0.955, "smallest rescale", "augmentation", type=float)
    scale_max: float = opt(1.055, "largest rescale", "augmentation", type=float)
    pixel_size_range_pm: tuple[float, float] | None = opt(
        None, "train over an envelope of pixel sizes: each patch is resampled to a pixel size "
        "drawn log-uniformly in [LO, HI] pm (e.g. 5:10); replaces --scale-min/--scale-max",
        "augmentation", flag="--pixel-size-range", type=span, metavar="LO:HI",
        show_default=False)
    arch: str = opt("bf_unet", "bias-free UNet, or DnCNN / small UNet for comparisons", "model",
                    choices=["bf_unet", "dncnn", "small_unet"])
    scales: int = opt(4, "UNet down-samplings", "model", type=int)
    base: int = opt(32, "UNet base channels", "model", type=int)
    unshuffle: int = opt(1, "space-to-depth factor of the input (1: none; 2 cuts the full-"
                         "resolution cost about 4x)", "model", type=int)
    centre_sigma: float = opt(0.0, "sigma in pixels of the linear centring blur (0: none)",
                              "model", type=float)
    activation: str = opt("relu", "non-linearity (relu: the papers')", "model",
                          choices=["relu", "leaky_relu"])
    norm: str = opt("batch", "bias-free BatchNorm after each convolution (the papers') or none",
                    "model", choices=["batch", "none"])
    level_gain: bool = opt(False, "condition every block on the frame's count level (per-channel "
                           "gains from the mean counts per pixel): one network over a dose range "
                           "need not read the noise level from the texture; with --init-from a "
                           "checkpoint without it, the gains start at 1", "model",
                           action="store_true", show_default=False)
    batch: int = opt(4, "patches per step per process", "optimisation", type=int)
    steps_per_epoch: int = opt(100, "steps per epoch", "optimisation", type=int)
    epochs: int = opt(1000, "maximum epochs", "optimisation", type=int)
    lr: float = opt(1e-3, "Adam learning rate", "optimisation", type=float)
    warmup_steps: int = opt(0, "linear learning-rate warm-up, steps (0: none)", "optimisation",
                            type=int)
    clip_grad: float = opt(0.0, "gradient-norm clipping (0: none)", "optimisation", type=float)
    lr_patience: int = opt(3, "epochs without improvement before the lr is halved",
                           "optimisation", type=int)
    early_stop: int = opt(10, "epochs without improvement before stopping", "optimisation",
                          type=int)
    ema: float = opt(0.0, "keep an exponential moving average of the weights, DECAY per step "
                     "(e.g. 0.999: about the last 1,000 steps); validation, the rate schedule, "
                     "best.pt and last.pt use the average, the optimiser the raw weights, whose "
                     "validation is logged beside it (val_psnr_raw). May be switched on when "
                     "resuming (0: none)", "optimisation", metavar="DECAY",
                     type=number(float, at_least=0, below=1))
    min_lr: float = 1e-6  # the plateau schedule's floor (not a command-line option)
    max_minutes: float = opt(0.0, "stop cleanly after this many minutes of training (0: no "
                             "limit)", "optimisation", type=float)
    device: str = opt("auto", "auto (CUDA if present), cpu or cuda[:N]", "running")
    amp: bool = opt(True, "train in float32 only: no mixed precision (by default float16 on "
                    "CUDA, bfloat16 on CPUs that have it natively: AVX512-BF16 or AMX)",
                    "running", flag="--no-amp",
                    action="store_false", show_default=False)
    seed: int = opt(0, "random seed", "running", type=int)
    init_from: str | None = opt(None, "start from the weights of this checkpoint (or a bundled "
                                "model by name: 'default', 'envelope', 'high-dose', 'black'); "
                                "it must have the same architecture and parameters (level gains "
                                "may be added; a bias-free UNet without BatchNorm may grow a "
                                "larger --base: its new channels start out changing nothing)",
                                "running", metavar="CKPT",
                                show_default=False)
    resume: bool = opt(False, "continue the run in --out", "running", action="store_true",
                       show_default=False)
    restart_lr: float = opt(0.0, "with --resume: set the learning rate to this value and start a "
                            "fresh plateau schedule (a warm restart, when the rate has decayed "
                            "too far; 0: keep)", "running", type=float)
    progress: bool = opt(True, "no progress bar or epoch lines", "running", flag="--quiet",
                         action="store_false", show_default=False)

    def model_params(self) -> dict[str, Any]:
        """Return the constructor arguments of the chosen architecture."""
        if self.arch == "bf_unet":
            return {
                "scales": self.scales,
                "base": self.base,
                "unshuffle": self.unshuffle,
                "centre_sigma": self.centre_sigma,
                "activation": self.activation,
                "norm": self.norm,
                # only when set, so that the runs and checkpoints from before it compare equal
                **({"level_gain": True} if self.level_gain else {}),
            }
        unet_only = {k: getattr(self, k) for k in ("scales", "base", "unshuffle", "centre_sigma",
                                                    "activation", "norm", "level_gain")
                     if getattr(self, k) != getattr(TrainConfig, k)}
        if self.arch in ("dncnn", "small_unet") and unet_only:
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in unet_only)
            fixed = "DnCNN, 20 layers x 64" if self.arch == "dncnn" else "small UNet, 32 channels"
            raise TrainingDataError(
                f"{flags} set the bias-free UNet; --arch {self.arch} is the papers' fixed "
                f"comparison network ({fixed}): leave them out, or use --arch bf_unet"
            )
        if self.arch == "dncnn":
            return {"depth": 20, "width": 64}
        if self.arch == "small_unet":
            return {"width": 32}
        raise TrainingDataError(f"unknown architecture {self.arch!r}")


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add every TrainConfig option to ``parser``, by group, from the field declarations."""
    groups: dict[str, Any] = {}
    for f in fields(TrainConfig):
        meta = f.metadata
        if "group" not in meta:
            continue
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        kw = dict(meta.get("argparse") or {})
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        help_text = meta["help"]
        if meta.get("show_default", True) and default is not MISSING:
            help_text += f" (default {default})"
        if meta.get("positional"):
            group.add_argument(f.name, help=help_text)
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        if default is not MISSING:
            kw.setdefault("default", default)
        group.add_argument(flag, dest=f.name, help=help_text, **kw)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """Return the TrainConfig of parsed arguments (fields absent from the command line keep defaults)."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values.update(overrides)
    return TrainConfig(**values)


def with_run_options(cfg: TrainConfig, saved: dict[str, Any], given: set[str],
                     keep: frozenset[str]) -> TrainConfig:
    """Fill the options a resume did not give from the run's own record (its config.json).

    Every option that shapes what is learned and is not in ``given`` (the
    options written on the command line) takes the run's value, so ``--resume``
    needs only the data and the folder. Options in ``keep`` (those a resume may
    change: time limits, device, reporting) stay as given or defaulted. A
    value that is given and differs from the run is left for the resume check
    to refuse, naming it.
    """
    values: dict[str, Any] = {}
    for f in fields(TrainConfig):
        if f.name in given or f.name in keep or f.name not in saved:
            continue
        value = saved[f.name]
        # JSON has no tuples: the ranges come back as lists
        values[f.name] = tuple(value) if isinstance(value, list) and "tuple" in str(f.type) else value
    return replace(cfg, **values)
