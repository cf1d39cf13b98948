"""The training loop: MSE on counts, Adam, LR halving on plateau, early stopping.

Output folder layout (all written atomically)::

    OUT/best.pt     checkpoint of the best validation PSNR (napari-sbd format)
    OUT/last.pt     checkpoint after the last finished epoch
    OUT/state.pt    everything --resume needs (weights, optimiser, scheduler, counters,
                    the weights' moving average with --ema)
    OUT/log.csv     one row per epoch: loss, validation PSNR, lr, dead channels, wall seconds
                    of the epoch, the run's CPU seconds so far (all threads, all sessions)
                    (and the PSNR of each validation band, for an envelope run)
    OUT/config.json the run's options; --resume refuses options that would change the run

Training over an operating envelope (``dose_range``, ``pixel_size_range_pm``):
every patch gets its own dose, drawn log-uniformly, and its own pixel size
(a log-uniform rescale of the clean image), so that one network learns to read
the noise level and the scale from the frame itself (a bias-free network
cannot be fixed by rescaling the counts: f(cy) = c f(y)). The squared error
of each patch is multiplied by nominal dose / its dose: a denoiser's error in
counts^2 grows about linearly with the dose (Poisson variance), so this gives
every dose about the same share of the loss in the relative terms PSNR
measures; plain MSE would let the highest doses drown the lowest.
Validation then scores fixed crops at the nominal point and at both ends of
each range ("bands"); the epoch's validation PSNR is their mean.

Each epoch draws its patches and noise from a generator seeded by
(seed, epoch, rank), so a resumed run repeats exactly what an uninterrupted
run would have done from that epoch on; a kill loses at most the epoch in
progress.

With ``ema`` (a decay per step) the run keeps an exponential moving average
of the weights beside them: the optimiser moves the raw weights, and the
average is what is validated, steers the rate schedule and early stopping,
and is saved as best.pt and last.pt (an average over the last steps sits
nearer the minimum than any one step's weights; log.csv adds the raw
weights' validation, ``val_psnr_raw``, so the two compare epoch by epoch).

Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in
DistributedDataParallel (gloo on CPU, NCCL on CUDA); every rank trains on its
own random patches and rank 0 validates, logs and saves.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from napari_sbd.core.checkpoint import save_checkpoint
from napari_sbd.core.files import atomic_write
from napari_sbd.core.inference import resolve_device
from napari_sbd.core.metrics import psnr
from napari_sbd.core.models import build_model
from napari_sbd.core.noise import poisson_noise
from napari_sbd.core.units import PAPERS_PIXEL_SIZE_PM
from napari_sbd.training.augment import (
    Augmentation,
    centre_resample,
    max_patch_size,
    random_patch,
)
from napari_sbd.training.config import TrainConfig, with_run_options
from napari_sbd.training.data import (
    TrainingDataError,
    TrainingImage,
    load_images,
    split_by_structure,
)

__all__ = ["ConsoleProgress", "EpochReport", "TrainConfig", "Trainer", "TrainingCallback", "train"]

LOG_FIELDS = [
    "epoch", "steps", "train_loss", "val_psnr", "best_val_psnr", "lr", "dead_fraction",
    "epoch_seconds", "patches_seen", "cpu_seconds",
]


# Options a resumed run may change: where the data and the run live, how long
# and where it runs, how it reports, and the rate schedule's knobs (a warm
# restart with --restart-lr usually comes with a new --lr-patience). Every other option shapes what is
# learned, and a resume with a different value would mix two runs in one.
RESUMABLE_OPTIONS = frozenset({
    "data", "out", "resume", "restart_lr", "lr_patience", "max_minutes", "epochs", "early_stop",
    "device", "amp", "progress", "init_from", "ema",
})
# Of those, the ones a plain --resume keeps from the run (its config.json) rather than
# resetting to the command's defaults: a run begun with --early-stop 40 resumed without the
# flag stopped after 10 epochs without a gain (the default), at 0.003 dB per epoch of gain.
# Given on a resume, the new value is recorded, so the next resume keeps it.
KEPT_ON_RESUME = frozenset({"ema", "lr_patience", "early_stop"})


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    Elsewhere (AVX2 only) PyTorch emulates bfloat16 and a training step is
    10-100x slower than in float32 (shared/notes/torch-cpu.md); with it, a step
    of the 4-scale, 64-channel network took 0.19 s instead of 0.62 s here.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def mixed_precision_dtype(device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype training uses on ``device``, or None for plain float32."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bfloat16():
        return torch.bfloat16
    return None


def _config_record(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(_plain(asdict(cfg))))


def _check_resume_config(out: Path, cfg: TrainConfig) -> None:
    """Refuse a resume whose learning-relevant options differ from the run's own."""
    path = out / "config.json"
    if not path.exists():  # a run from before config.json: adopt the current options
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainingDataError(f"cannot read {path} ({exc}); restore it or start a new --out") from None
    now = _config_record(cfg)
    # an option added after the run began reads as its default in the run's record
    saved = {**_config_record(TrainConfig(data=cfg.data, out=cfg.out)), **saved}
    diffs = [
        f"{k}: run has {saved.get(k)!r}, now {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if k not in RESUMABLE_OPTIONS and saved.get(k) != now.get(k)
    ]
    if diffs:
        raise TrainingDataError(
            f"--resume with options that differ from the run in {out}: " + "; ".join(diffs)
            + ". Resume with the run's own options, or train with the new ones into a new --out "
            f"(options that may change on resume: {', '.join(sorted(RESUMABLE_OPTIONS - {'resume', 'out'}))})"
        )


# what a run writes into OUT (besides .lock, which holds nothing)
RUN_FILES = ("state.pt", "config.json", "log.csv", "best.pt", "last.pt")


def _check_output_folder(out: Path, cfg: TrainConfig) -> None:
    """Refuse an OUT whose files a run would overwrite without continuing them.

    A new run writes every file of :data:`RUN_FILES`: into a folder that holds
    any of them (a finished run, a start killed in its first epoch, or files
    of the same names that are not ours) it stops before writing anything. A
    resume continues the run whose state.pt is there; one without state.pt
    starts afresh only where nothing but a config.json (a first epoch that
    never finished) would be replaced.
    """
    present = [name for name in RUN_FILES if (out / name).is_file()]
    if cfg.resume and "state.pt" in present:
        _check_resume_config(out, cfg)
        return
    if not present:
        return
    if not cfg.resume:
        raise TrainingDataError(
            f"{out} already holds a training run ({', '.join(present)}); pass --resume to "
            "continue it, or choose another --out (nothing was written)"
        )
    if present != ["config.json"]:  # files of a run that cannot be continued
        raise TrainingDataError(
            f"cannot resume: {out} holds {', '.join(present)} but no state.pt, the run's "
            "resumable state; choose another --out (--init-from OUT/best.pt keeps learned "
            "weights); nothing was written"
        )
    _check_resume_config(out, cfg)  # a first epoch that never finished: its own options


def _load_state(path: Path, device: torch.device) -> dict[str, Any]:
    try:
        st = torch.load(path, map_location=device, weights_only=True)
        missing = {"model", "optimizer", "scheduler", "scaler", "epoch", "best"} - set(st)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrainingDataError(
            f"cannot resume: {path} is unreadable ({first}); "
            "it may be truncated. Restore it from a copy, or start again into a new --out "
            "(--init-from OUT/best.pt keeps the learned weights)"
        ) from None
    if missing:
        raise TrainingDataError(f"cannot resume: {path} lacks {', '.join(sorted(missing))}")
    return st


def _init_weights(model: nn.Module, cfg: TrainConfig) -> None:
    """Start from a checkpoint's weights (same architecture and parameters, or more channels).

    A bias-free UNet without BatchNorm grows into the same network with a larger
    ``--base``: its weights are kept and the new channels start out changing
    nothing (:func:`~napari_sbd.core.models.widen_unet`), so the hours it was
    trained are kept.
    """
    from napari_sbd.core.checkpoint import CheckpointError, read_checkpoint

    assert cfg.init_from is not None

    try:
        payload = read_checkpoint(cfg.init_from)
    except CheckpointError as exc:
        raise TrainingDataError(f"--init-from: {exc}") from None
    meta = payload["metadata"]
    want = (cfg.arch, cfg.model_params())
    have = (meta["architecture"], dict(meta["params"]))
    # a network without level gains can start one with them: the gains begin at 1
    adds_gain = want[1].get("level_gain") and not have[1].get("level_gain")
    if adds_gain:
        have = (have[0], {**have[1], "level_gain": True})
    from napari_sbd.core.models import BiasFreeUNet, widen_unet, widens

    if have != want and have[0] == want[0] == "bf_unet" and widens(have[1], want[1]):
        from napari_sbd.core.checkpoint import load_checkpoint

        small, _ = load_checkpoint(cfg.init_from)
        assert isinstance(small, BiasFreeUNet) and isinstance(model, BiasFreeUNet)
        widen_unet(small, model)
        return
    if have != want:
        raise TrainingDataError(
            f"--init-from {cfg.init_from} holds {have[0]} {have[1]}, but this run builds "
            f"{want[0]} {want[1]}: pass the same --arch/--scales/--base/--unshuffle/"
            "--centre-sigma/--activation/--norm"
        )
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=not adds_gain)
    if any(not k.startswith("gain.") for k in missing) or unexpected:
        raise TrainingDataError(f"--init-from {cfg.init_from}: its weights do not fit this network "
                                f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def inherited_held_out(cfg: TrainConfig, structures: Sequence[str]) -> list[str] | None:
    """Return the structures a run from ``cfg.init_from`` holds out, from its parent's card.

    The parent's own held-out structures stay held out, its training structures
    stay in training, and structures it never saw are split at
    ``cfg.val_fraction`` (``cfg.seed``): validation never scores what the
    starting weights were fitted to. None where the parent's card does not
    record its split (checkpoints from before it): the usual split applies.
    """
    from napari_sbd.core.checkpoint import CheckpointError, read_checkpoint

    if cfg.init_from is None:
        return None
    try:
        meta = read_checkpoint(cfg.init_from)["metadata"]
    except CheckpointError as exc:
        raise TrainingDataError(f"--init-from: {exc}") from None
    if "val_structures" not in meta or "train_structures" not in meta:
        return None
    present = set(structures)
    seen = set(meta["val_structures"]) | set(meta["train_structures"])
    new = sorted(present - seen)
    held = present & set(meta["val_structures"])
    if new:
        rng = np.random.default_rng(cfg.seed)
        n = max(1, round(cfg.val_fraction * len(new))) if len(new) > 1 else 0
        held |= set(rng.permutation(new)[:n].tolist())
    if not held:
        raise TrainingDataError(
            f"--init-from {cfg.init_from} trained on every structure in {cfg.data}: no structure "
            "is left to validate on; add structures it has not seen, or give --val-structures"
        )
    return sorted(held)


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _check_config(cfg: TrainConfig, shapes: list[tuple[int, int]], aug: Augmentation) -> None:
    if cfg.dose is not None and not (cfg.dose > 0 and math.isfinite(cfg.dose)):
        raise TrainingDataError(
            f"--dose must be a positive number of counts per pixel in vacuum, got {cfg.dose}"
        )
    for name, rng_ in (("--dose-range", cfg.dose_range), ("--pixel-size-range", cfg.pixel_size_range_pm)):
        if rng_ is not None and not (len(rng_) == 2 and 0 < rng_[0] <= rng_[1] < math.inf):
            raise TrainingDataError(f"{name} must be LO:HI with 0 < LO <= HI, got {rng_}")
    if cfg.dose_range is not None and cfg.dose is None:
        raise TrainingDataError("--dose-range draws a dose per patch; it cannot be combined "
                                "with --dose-of-data")
    if cfg.patch < 16 or cfg.batch < 1 or cfg.steps_per_epoch < 1 or cfg.epochs < 1:
        raise TrainingDataError("--patch must be >= 16, --batch, --steps-per-epoch, --epochs >= 1")
    if not 0 < cfg.lr < 1:
        raise TrainingDataError(f"--lr must be in (0, 1), got {cfg.lr}")
    if not 0 < cfg.scale_min <= cfg.scale_max:
        raise TrainingDataError("--scale-min/--scale-max must satisfy 0 < min <= max")
    fit = min(max_patch_size(s, aug) for s in shapes)
    if cfg.patch > fit:
        small = min(shapes, key=min)
        raise TrainingDataError(
            f"--patch {cfg.patch} is larger than the images allow: the smallest image is "
            f"{small[0]}x{small[1]} px, which holds at most a {fit} px patch at every rotation "
            f"up to {aug.max_angle_deg:g} degrees and scale {aug.scale_range[0]}; use --patch {fit} "
            "or less (or reduce --max-angle)"
        )
    m = build_model(cfg.arch, **cfg.model_params()).size_multiple
    if cfg.patch % m:
        raise TrainingDataError(
            f"--patch must be a multiple of {m} for this network (2^scales x unshuffle)"
        )


class _DeadChannelMeter:
    """Fraction of activation channels that are never positive over a batch."""

    def __init__(self, model: nn.Module) -> None:
        self.handles = []
        self.alive: list[torch.Tensor] = []
        for m in model.modules():
            if isinstance(m, (nn.ReLU, nn.LeakyReLU)):
                self.handles.append(m.register_forward_hook(self._hook))

    def _hook(self, _m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        self.alive.append((out.detach() > 0).flatten(2).any(2).any(0).cpu())

    def fraction(self) -> float:
        total = sum(a.numel() for a in self.alive)
        dead = sum(int((~a).sum()) for a in self.alive)
        return dead / total if total else 0.0

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _noisy(clean: np.ndarray, dose: float | None, vacuum: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return (noisy, expected counts) of a clean patch at ``dose`` (its own level when None)."""
    # the expected counts in float32, as the network sees them; the draw is core.noise's
    lam = (clean if dose is None else clean * np.float32(dose / vacuum)).astype(np.float32)
    return poisson_noise(lam, rng=rng), lam


def _draw_dose(cfg: TrainConfig, rng: np.random.Generator) -> float | None:
    """Return the patch's vacuum dose: the fixed one, or log-uniform over the envelope."""
    if cfg.dose_range is None:
        return cfg.dose
    lo, hi = cfg.dose_range
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def validation_bands(cfg: TrainConfig, data_pixel_pm: float) -> list[tuple[str, float | None, float]]:
    """Return the validation conditions: (name, dose, pixel size pm).

    The nominal point alone for a single-point run; for an envelope run also
    each end of each range, the other quantity at its nominal value.
    """
    bands: list[tuple[str, float | None, float]] = [("nominal", cfg.dose, data_pixel_pm)]
    if cfg.dose_range is not None:
        bands += [(f"dose_{d:g}", d, data_pixel_pm) for d in cfg.dose_range if d != cfg.dose]
    if cfg.pixel_size_range_pm is not None:
        bands += [(f"px_{p:g}pm", cfg.dose, p) for p in cfg.pixel_size_range_pm
                  if p != data_pixel_pm]
    return bands


def _validation_set(
    val: list[TrainingImage], cfg: TrainConfig, multiple: int, data_pixel_pm: float
) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """Build fixed centre crops with fixed noise per band: comparable from epoch to epoch.

    Each item is (band, noisy, clean, scale), with scale = nominal dose / dose:
    every band is scored in the papers' convention at the nominal dose (output
    and clean image divided back, as the dose benchmarks do).
    """
    out = []
    step = max(1, len(val) // max(1, cfg.val_images))
    for b, (band, dose, px) in enumerate(validation_bands(cfg, data_pixel_pm)):
        for k, im in enumerate(val[::step][: cfg.val_images]):
            if px == data_pixel_pm:
                h, w = im.image.shape
                ch = min(h, cfg.val_crop) // multiple * multiple
                cw = min(w, cfg.val_crop) // multiple * multiple
                r0, c0 = (h - ch) // 2, (w - cw) // 2
                crop = im.image[r0 : r0 + ch, c0 : c0 + cw]
            else:
                crop = centre_resample(im.image, cfg.val_crop, data_pixel_pm / px, multiple)
            seed = [cfg.seed, 7, k] if b == 0 else [cfg.seed, 7, k, b]
            noisy, clean = _noisy(crop, dose, im.vacuum_level, np.random.default_rng(seed))
            scale = 1.0 if dose is None or cfg.dose is None else cfg.dose / dose
            out.append((band, noisy, clean, scale))
    return out


@torch.no_grad()
def _validate(model: nn.Module, vset, device: torch.device) -> tuple[float, float, dict[str, float]]:
    """Mean validation PSNR over all bands, dead-channel fraction, PSNR per band."""
    model.eval()
    meter = _DeadChannelMeter(model)
    scores: dict[str, list[float]] = {}
    try:
        for band, noisy, clean, scale in vset:
            x = torch.from_numpy(noisy)[None, None].to(device)
            den = model(x)[0, 0].float().cpu().numpy()
            if scale != 1.0:
                clean, den = clean * np.float32(scale), den * np.float32(scale)
            scores.setdefault(band, []).append(float(psnr(clean, den)))
    finally:
        meter.close()
    per_band = {b: float(np.mean(v)) for b, v in scores.items()}
    return float(np.mean(list(per_band.values()))), meter.fraction(), per_band


def run_config(out: str | os.PathLike) -> TrainConfig:
    """Return the options a run in ``out`` was started with (its config.json).

    Options added after the run began take their defaults, as a resume does.

    Raises
    ------
    TrainingDataError
        When ``out`` holds no readable config.json.
    """
    path = Path(out) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainingDataError(f"cannot read {path} ({exc}): is {out} a training run?") from None
    if not isinstance(saved, dict) or "data" not in saved:
        raise TrainingDataError(f"{path} is not a training run's record")
    base = TrainConfig(data=saved["data"], out=str(out))
    return with_run_options(base, saved, set(), frozenset())


def score_on_run(net: nn.Module, cfg: TrainConfig, *, training: int = 0,
                 device: str = "cpu") -> dict[str, float]:
    """Score a network on a run's validation crops, as its log.csv does (same crops, same noise).

    Parameters
    ----------
    net : torch.nn.Module
        The network (:func:`napari_sbd.core.checkpoint.load_checkpoint`).
    cfg : TrainConfig
        The run's options (:func:`run_config`): data, split, bands, crops, seed.
    training : int
        Also score this many images of the run's *training* structures with the
        same protocol (0: none): equal scores on held-out and training images mean
        the network underfits, not that it needs more data.
    device : str
        Where to run it.

    Returns
    -------
    dict
        ``"held-out"``: the validation PSNR (mean over bands, dB) and one entry per
        band; with ``training``, ``"training"`` too.
    """
    images = load_images(cfg.data, cfg.where)
    train, val = split_by_structure(images, cfg.val_fraction, cfg.seed, cfg.val_structures)
    data_pixel = cfg.pixel_size_pm or _median_of(images, "pixel_size_pm", PAPERS_PIXEL_SIZE_PM)
    multiple = int(getattr(net, "size_multiple", 1))
    dev = torch.device(device)
    net = net.to(dev).eval()
    mean, _, bands = _validate(net, _validation_set(val, cfg, multiple, data_pixel), dev)
    out = {"held-out": mean, **{f"held-out {b}": v for b, v in bands.items()}}
    if training:
        pick = np.random.default_rng(cfg.seed).choice(len(train), min(training, len(train)),
                                                      replace=False)
        tcfg = replace(cfg, val_images=len(pick))
        out["training"] = _validate(net, _validation_set([train[i] for i in sorted(pick)], tcfg,
                                                         multiple, data_pixel), dev)[0]
    return out


def _read_log(path: Path, upto_epoch: int) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["epoch"]) <= upto_epoch]


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    extra = [k for r in rows for k in r if k not in LOG_FIELDS]
    wr = csv.DictWriter(buf, fieldnames=LOG_FIELDS + list(dict.fromkeys(extra)), restval="")
    wr.writeheader()
    wr.writerows(rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


@dataclass
class EpochReport:
    """What one finished epoch measured (one row of log.csv)."""

    epoch: int
    steps: int
    train_loss: float
    val_psnr: float
    best_val_psnr: float
    improved: bool
    lr: float
    dead_fraction: float
    epoch_seconds: float
    patches_seen: int
    cpu_seconds: float
    bands: dict[str, float] = field(default_factory=dict)
    val_psnr_raw: float | None = None  # the raw weights' validation, beside the average's

    def log_row(self) -> dict[str, Any]:
        """Return the log.csv row (fixed-precision text, one column per validation band)."""
        row: dict[str, Any] = {
            "epoch": self.epoch, "steps": self.steps, "train_loss": f"{self.train_loss:.6g}",
            "val_psnr": f"{self.val_psnr:.4f}", "best_val_psnr": f"{self.best_val_psnr:.4f}",
            "lr": f"{self.lr:.3g}", "dead_fraction": f"{self.dead_fraction:.4f}",
            "epoch_seconds": f"{self.epoch_seconds:.1f}", "patches_seen": self.patches_seen,
            # milliseconds: a tiny epoch on a fast machine takes under 0.05 s, which .1f logged as 0
            "cpu_seconds": "" if math.isnan(self.cpu_seconds) else f"{self.cpu_seconds:.3f}",
        }
        if len(self.bands) > 1:
            row.update({f"val_{b}": f"{v:.4f}" for b, v in self.bands.items()})
        if self.val_psnr_raw is not None:
            row["val_psnr_raw"] = f"{self.val_psnr_raw:.4f}"
        return row


class TrainingCallback:
    """Watch a :class:`Trainer` (a progress bar, a widget, a notebook); every hook is optional.

    Hooks run on the process that validates (rank 0 under torchrun, except
    ``on_step_end``, which runs on every rank). Set ``trainer.stop_requested``
    to end the run cleanly after the current epoch.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Run once the model is built (and resumed), before the first epoch."""

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        """Run before the epoch's first step (``epoch`` counts from 1)."""

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        """Run after each optimiser step (``step`` counts from 1 within the epoch)."""

    def on_epoch_end(self, trainer: Trainer, report: EpochReport) -> None:
        """Run after validation and saving, with what the epoch measured."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Run after the last epoch (not when training fails)."""


class ConsoleProgress(TrainingCallback):
    """A tqdm bar per epoch and one line per finished epoch, on stderr."""

    def __init__(self) -> None:
        self._bar: Any = None

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        """Open the epoch's bar."""
        from tqdm import tqdm

        self._bar = tqdm(total=trainer.cfg.steps_per_epoch, desc=f"epoch {epoch}", leave=False,
                         file=sys.stderr)

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        """Advance the bar, with the loss and the best validation PSNR so far."""
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.2e}", best=f"{trainer.best:.2f} dB")

    def on_epoch_end(self, trainer: Trainer, report: EpochReport) -> None:
        """Close the bar and print the epoch's line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        bands = ("  [" + " ".join(f"{b} {v:.2f}" for b, v in report.bands.items()) + "]"
                 if len(report.bands) > 1 else "")
        raw = f" (raw {report.val_psnr_raw:.2f})" if report.val_psnr_raw is not None else ""
        print(f"epoch {report.epoch}: loss {report.train_loss:.3e}  val {report.val_psnr:.2f} dB{raw}  "
              f"best {report.best_val_psnr:.2f} dB  lr {report.lr:.2g}  dead {report.dead_fraction:.1%}"
              + bands, file=sys.stderr)


class Trainer:
    """One training run: data and options checked at construction, then :meth:`fit`.

    :meth:`fit` holds the output folder's lock (and, under torchrun, the
    process group) in a :class:`contextlib.ExitStack`, so both are released
    however the run ends: finished, stopped, interrupted or failed.

    Parameters
    ----------
    cfg : TrainConfig
        The run's options.
    callbacks : sequence of TrainingCallback, optional
        Watchers of the run; a :class:`ConsoleProgress` is added when
        ``cfg.progress`` is set.

    Raises
    ------
    TrainingDataError
        Bad data or options, before anything is written.
    """

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[TrainingCallback] = ()) -> None:
        self.cfg = cfg
        self.rank, self.world = _dist()
        self.out = Path(cfg.out)
        if self.out.exists() and not self.out.is_dir():
            raise TrainingDataError(f"--out {self.out} is a file, not a folder; choose a folder name")
        self.images = load_images(cfg.data, cfg.where)
        self.data_pixel = cfg.pixel_size_pm or _median_of(self.images, "pixel_size_pm",
                                                          PAPERS_PIXEL_SIZE_PM)
        if cfg.pixel_size_range_pm is not None:  # scale = output pixels per data pixel
            lo, hi = cfg.pixel_size_range_pm
            self.aug = Augmentation(cfg.max_angle, (self.data_pixel / hi, self.data_pixel / lo),
                                    log_scale=True)
        else:
            self.aug = Augmentation(cfg.max_angle, (cfg.scale_min, cfg.scale_max))
        _check_config(cfg, [im.image.shape for im in self.images], self.aug)
        if cfg.val_structures is None and not (cfg.resume and (self.out / "state.pt").exists()):
            held = inherited_held_out(cfg, [im.structure for im in self.images])
            if held is not None:  # recorded in config.json, so a resume keeps the same split
                self.cfg = cfg = replace(cfg, val_structures=tuple(held))
        self.train_set, self.val_set = split_by_structure(self.images, cfg.val_fraction, cfg.seed,
                                                          cfg.val_structures)
        if not self.val_set:
            raise TrainingDataError("no validation images: early stopping needs --val-fraction > 0")
        self.state_path = self.out / "state.pt"
        self.log_path = self.out / "log.csv"
        if self.rank == 0:
            _check_output_folder(self.out, cfg)
        self.device = resolve_device(cfg.device)
        self.callbacks = list(callbacks)
        if cfg.progress and self.rank == 0:
            self.callbacks.append(ConsoleProgress())
        self.stop_requested = False
        # filled by _build() inside fit()
        self.model: Any = None
        self.best = -math.inf
        self.epoch = 0  # epochs finished

    # -- the run ---------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until the epochs, early stopping, the time limit or a callback end it.

        Returns
        -------
        dict
            ``best_val_psnr``, ``epochs`` (rows in log.csv), ``stopped`` (reason), ``out``.
        """
        with contextlib.ExitStack() as stack:
            if self.world > 1:
                import torch.distributed as dist

                if self.device.type == "cuda":
                    self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                    torch.cuda.set_device(self.device)
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
                stack.callback(dist.destroy_process_group)
            if self.rank == 0:
                stack.enter_context(_lock_output(self.out))
            return self._run()

    def _record_config(self) -> None:
        """Write OUT/config.json for a new run, or the kept options a resume changed.

        Called once the network is built (``--init-from`` read and matched): a
        start that fails leaves no record of a run that never began.
        """
        path = self.out / "config.json"
        record: dict[str, Any] | None = None
        if not path.exists():
            record = _config_record(self.cfg)
        else:
            with contextlib.suppress(OSError, ValueError):  # unreadable: left alone
                saved = json.loads(path.read_text())
                now = {k: getattr(self.cfg, k) for k in sorted(KEPT_ON_RESUME)}
                if any(saved.get(k) != v for k, v in now.items()):  # changed on resume: the
                    record = {**saved, **now}  # next resume keeps them
        if record is not None:
            text = json.dumps(record, indent=1)
            atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    def _build(self) -> None:
        cfg, device = self.cfg, self.device
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.arch, **cfg.model_params()).to(device)
        # Mixed precision where the hardware does it natively: float16 with loss scaling on
        # CUDA, bfloat16 on CPUs with AVX512-BF16 or AMX (no scaling needed: bfloat16 has
        # float32's range). Weights, optimiser state, loss and validation stay float32.
        self.amp_dtype = mixed_precision_dtype(device) if cfg.amp else None
        self.use_amp = self.amp_dtype is not None
        # channels-last is the fast layout for tensor cores and for oneDNN's bfloat16 kernels
        self.memory_format = (torch.channels_last if device.type == "cuda" or self.use_amp
                              else torch.contiguous_format)
        self.model = model.to(memory_format=self.memory_format)  # type: ignore[call-overload]
        self.vset = _validation_set(self.val_set, cfg, self.model.size_multiple, self.data_pixel)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.sched = self._plateau_schedule()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.bad_epochs, self.global_step, self.patches_seen = 0, 0, 0
        # CPU time of this process (all its threads) summed over every session of the run:
        # the x-axis of equal-budget comparisons, fair even when the machine is shared
        self.cpu_before = 0.0
        self._ema_state: dict[str, Any] | None = None
        if cfg.resume and self.state_path.exists():
            self._resume()
        elif cfg.init_from:
            _init_weights(self.model, cfg)
        # the weights' moving average starts from the weights (switched on at a resume: from
        # the run's weights then) and continues from the state where the run kept one
        self.ema: AveragedModel | None = None
        if cfg.ema > 0:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema),
                                     use_buffers=True)
            if self._ema_state is not None:
                self.ema.load_state_dict(self._ema_state)
        self.log_rows = _read_log(self.log_path, self.epoch) if self.rank == 0 else []
        self.net: nn.Module = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        meta: dict[str, Any] = {
            "dose": cfg.dose if cfg.dose is not None
            else float(np.median([im.vacuum_level for im in self.images])),
            "pixel_size_pm": self.data_pixel,
            "contrast": cfg.contrast or _common(self.images, "contrast", "unknown"),
            "training_data": f"{len(self.train_set)} images of "
            f"{len({i.structure for i in self.train_set})} structures from {cfg.data} "
            f"(filters: {cfg.where or 'none'})",
        }
        extra: dict[str, Any] = {}
        if cfg.dose_range is not None:
            extra["dose_range"] = [float(v) for v in cfg.dose_range]
        if cfg.pixel_size_range_pm is not None:
            extra["pixel_size_range_pm"] = [float(v) for v in cfg.pixel_size_range_pm]
        # so that a run grown from this one on more data keeps the same split
        extra["val_structures"] = sorted({i.structure for i in self.val_set})
        extra["train_structures"] = sorted({i.structure for i in self.train_set})
        self._meta, self._card_extra = meta, extra

    def _plateau_schedule(self) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="max", factor=0.5, patience=self.cfg.lr_patience, min_lr=self.cfg.min_lr
        )

    def _resume(self) -> None:
        cfg = self.cfg
        st = _load_state(self.state_path, self.device)
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.sched.patience = cfg.lr_patience  # the run's, or the one this resume gives
        # a run begun where no loss scaling was used (CPU: float32 or bfloat16) and resumed on
        # CUDA (float16) starts its scaler afresh; the other way the saved scale is unused
        if st["scaler"] or not self.scaler.is_enabled():
            self.scaler.load_state_dict(st["scaler"])
        self._ema_state = st.get("ema")
        self.epoch, self.best, self.bad_epochs = st["epoch"], st["best"], st["bad_epochs"]
        self.global_step, self.patches_seen = st["global_step"], st["patches_seen"]
        self.cpu_before = float(st.get("cpu_seconds", math.nan))  # runs before the column: unknown
        if cfg.restart_lr > 0:  # warm restart: a fresh plateau schedule from a higher rate
            for g in self.opt.param_groups:
                g["lr"] = cfg.restart_lr
            self.sched = self._plateau_schedule()
            self.sched.best = self.best
            self.bad_epochs = 0
        if self.rank == 0:
            print(f"resuming {self.out} after epoch {self.epoch} (best {self.best:.2f} dB"
                  + (f"; lr restarted at {cfg.restart_lr:g}" if cfg.restart_lr > 0 else "") + ")",
                  file=sys.stderr)

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        self._build()
        if self.rank == 0:
            self._record_config()
        for cb in self.callbacks:
            cb.on_train_begin(self)
        t_start, self._cpu_start = time.monotonic(), time.process_time()
        stopped = "epochs"
        while self.epoch < cfg.epochs:
            t0 = time.monotonic()
            for cb in self.callbacks:
                cb.on_epoch_begin(self, self.epoch + 1)
            loss = self.train_epoch()
            stop_now = False
            if self.rank == 0:
                val_psnr, dead, per_band = self.validate()
                raw = _validate(self.model, self.vset, self.device)[0] if self.ema is not None else None
                report = self._finish_epoch(loss, val_psnr, dead, per_band, time.monotonic() - t0,
                                            raw)
                self.save(report)
                for cb in self.callbacks:
                    cb.on_epoch_end(self, report)
                if self.bad_epochs >= cfg.early_stop:
                    stopped, stop_now = "early stopping", True
                elif cfg.max_minutes and (time.monotonic() - t_start) / 60 >= cfg.max_minutes:
                    stopped, stop_now = "time limit (resume with --resume)", True
                elif self.stop_requested:
                    stopped, stop_now = "stopped by a callback (resume with --resume)", True
            if self.world > 1:
                import torch.distributed as dist

                flag = torch.tensor([1.0 if stop_now else 0.0], device=self.device)
                dist.broadcast(flag, 0)
                stop_now = bool(flag.item())
            if stop_now:
                break
        summary = {"best_val_psnr": self.best, "stopped": stopped, "out": str(self.out),
                   "epochs": len(self.log_rows) if self.rank == 0 else None}
        for cb in self.callbacks:
            cb.on_train_end(self, summary)
        return summary

    # -- one epoch ---------------------------------------------------------------
    def train_epoch(self) -> float:
        """Run one epoch of optimiser steps on fresh random patches; return the mean loss.

        The epoch's patches and noise come from a generator seeded by (seed,
        epoch, rank): a resumed run repeats what an uninterrupted one would do.
        """
        cfg, device, fmt = self.cfg, self.device, self.memory_format
        rng = np.random.default_rng([cfg.seed, self.epoch, self.rank])
        self.net.train()
        losses = []
        for step in range(1, cfg.steps_per_epoch + 1):
            if cfg.warmup_steps and self.global_step < cfg.warmup_steps:
                for g in self.opt.param_groups:
                    g["lr"] = cfg.lr * (self.global_step + 1) / cfg.warmup_steps
            noisy, clean, weight = [], [], []
            for _b in range(cfg.batch):
                im = self.train_set[rng.integers(len(self.train_set))]
                patch = random_patch(im.image, cfg.patch, rng, self.aug)
                dose = _draw_dose(cfg, rng)
                n, c = _noisy(patch, dose, im.vacuum_level, rng)
                noisy.append(n)
                clean.append(c)
                weight.append(1.0 if dose is None or cfg.dose is None else math.sqrt(cfg.dose / dose))
            x = torch.from_numpy(np.stack(noisy)[:, None]).to(device, memory_format=fmt)
            y = torch.from_numpy(np.stack(clean)[:, None]).to(device, memory_format=fmt)
            with (torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                  else contextlib.nullcontext()):
                residual = self.net(x).float() - y
                if cfg.dose_range is not None:  # equal shares per dose (module docstring)
                    residual = residual * torch.tensor(weight, device=device).view(-1, 1, 1, 1)
                loss = torch.mean(residual**2)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.clip_grad > 0:
                self.scaler.unscale_(self.opt)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.global_step += 1
            self.patches_seen += cfg.batch * self.world
            losses.append(float(loss.detach()))
            for cb in self.callbacks:
                cb.on_step_end(self, step, losses[-1])
        self.epoch += 1
        return float(np.mean(losses))

    @property
    def kept(self) -> nn.Module:
        """The weights that are validated and saved: the moving average where there is one."""
        return self.ema.module if self.ema is not None else self.model

    def validate(self) -> tuple[float, float, dict[str, float]]:
        """Score the fixed validation crops with :attr:`kept`.

        Returns
        -------
        tuple
            Mean PSNR over the bands (dB), fraction of dead activation
            channels, PSNR per band.
        """
        return _validate(self.kept, self.vset, self.device)

    def _finish_epoch(self, loss: float, val_psnr: float, dead: float, per_band: dict[str, float],
                      seconds: float, raw: float | None = None) -> EpochReport:
        improved = val_psnr > self.best
        if improved:
            self.best, self.bad_epochs = val_psnr, 0
        else:
            self.bad_epochs += 1
        if not (self.cfg.warmup_steps and self.global_step < self.cfg.warmup_steps):
            self.sched.step(val_psnr)
        return EpochReport(
            epoch=self.epoch, steps=self.global_step, train_loss=loss, val_psnr=val_psnr,
            best_val_psnr=self.best, improved=improved, lr=float(self.opt.param_groups[0]["lr"]),
            dead_fraction=dead, epoch_seconds=seconds, patches_seen=self.patches_seen,
            cpu_seconds=self.cpu_before + time.process_time() - self._cpu_start, bands=per_band,
            val_psnr_raw=raw,
        )

    def save(self, report: EpochReport) -> None:
        """Write last.pt (and best.pt when improved), the resume state and the log row."""
        cfg = self.cfg
        ckpt_kw = dict(architecture=cfg.arch, params=cfg.model_params(), **self._meta,
                       extra={"epoch": report.epoch, "patches_seen": report.patches_seen,
                              **self._card_extra,
                              **({"validation_bands": report.bands} if len(report.bands) > 1 else {}),
                              "train_config": _plain(asdict(cfg))})
        save_checkpoint(self.out / "last.pt", self.kept, validation_psnr=report.val_psnr, **ckpt_kw)
        if report.improved:
            save_checkpoint(self.out / "best.pt", self.kept, validation_psnr=report.val_psnr,
                            **ckpt_kw)
        state = {
            "cpu_seconds": report.cpu_seconds,
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": report.epoch, "best": self.best, "bad_epochs": self.bad_epochs,
            "global_step": self.global_step, "patches_seen": self.patches_seen,
        }
        atomic_write(self.state_path, lambda tmp: torch.save(state, tmp))
        self.log_rows.append(report.log_row())
        _write_log(self.log_path, self.log_rows)


def train(cfg: TrainConfig, callbacks: Sequence[TrainingCallback] = ()) -> dict[str, Any]:
    """Train a denoiser as configured (``Trainer(cfg, callbacks).fit()``).

    Parameters
    ----------
    cfg : TrainConfig
        The configuration.
    callbacks : sequence of TrainingCallback, optional
        Watchers of the run (see :class:`TrainingCallback`).

    Returns
    -------
    dict
        ``best_val_psnr``, ``epochs``, ``stopped`` (reason) and the output folder.

    Raises
    ------
    TrainingDataError
        Bad data or options, before any training starts.
    """
    return Trainer(cfg, callbacks).fit()


def _lock_output(out: Path):
    """Hold an exclusive lock on OUT for the whole run (released when the process ends).

    Two runs writing one folder would interleave checkpoints and logs; the
    second one stops before training instead.
    """
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / ".lock", "w")  # noqa: SIM115 - held for the run's lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise TrainingDataError(
            f"another napari-sbd-train is already writing to {out}; wait for it to finish or "
            "choose another --out"
        ) from None
    return fh


def _median_of(images: list[TrainingImage], key: str, default: float) -> float:
    values = []
    for im in images:
        with contextlib.suppress(KeyError, TypeError, ValueError):  # absent or not a number
            values.append(float(im.record[key]))
    return float(np.median(values)) if values else default


def _common(images: list[TrainingImage], key: str, default: Any) -> Any:
    values = {str(im.record[key]) for im in images if im.record.get(key)}
    if len(values) == 1:
        v = values.pop()
        try:
            return float(v)
        except ValueError:
            return v
    return default if not values else "mixed"


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
