"""``napari-sbd-train``: train a denoiser on clean simulated images, headless."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_sbd._cli import number

MIN_DOSE = 0.01  # counts/pixel: below this a frame is almost all zeros and PSNR meaningless

EPILOG = """\
examples:
  # the papers' recipe on a simulator folder, white-contrast images only
  napari-sbd-train data-sim/ --out runs/white --where contrast=white

  # continue after an interruption (same command plus --resume)
  napari-sbd-train data-sim/ --out runs/white --where contrast=white --resume

  # one network over an operating envelope of dose and pixel size, started from
  # the bundled model's weights
  napari-sbd-train data-sim/ --out runs/envelope --where contrast=white \
      --dose-range 0.1:5 --pixel-size-range 5:10 --init-from default

  # two processes (or GPUs) with distributed data parallel
  torchrun --nproc_per_node 2 -m napari_sbd.training.cli data-sim/ --out runs/ddp

A resumed run must keep the options that shape what is learned (data filters,
noise, augmentation, model, optimiser); --resume refuses others and names each
difference. These may change on resume: the data folder's path, --max-minutes,
--epochs, --early-stop, --restart-lr, --lr-patience, --device, --no-amp, --quiet.

Units: doses in counts (electrons) per pixel per frame in vacuum; pixel sizes
in picometres; patch sizes in pixels; angles in degrees.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every option documented with its unit)."""
    p = argparse.ArgumentParser(
        prog="napari-sbd-train",
        description="Train a bias-free denoising network on clean simulated count images, "
        "with Poisson noise drawn afresh at every step (simulation-based denoising).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("data", help="folder of clean float32 TIFF images in counts per pixel, "
                   "optionally with the simulator's metadata.csv")
    d.add_argument("--out", required=True, help="output folder for checkpoints, state and log")
    d.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="keep images whose metadata KEY equals VALUE (a,b for several, lo:hi "
                   "for a numeric range); repeatable, e.g. --where contrast=white")
    d.add_argument("--val-fraction", type=number(float, above=0, below=1), default=0.1,
                   help="fraction of STRUCTURES held out for validation (default 0.1)")
    d.add_argument("--val-images", type=int, default=12,
                   help="validation images used per epoch (default 12)")
    d.add_argument("--val-crop", type=int, default=512,
                   help="side in pixels of the validation centre crops (default 512)")
    n = p.add_argument_group("noise and metadata")
    n.add_argument("--dose", type=number(float, at_least=MIN_DOSE, unit="counts/pixel"),
                   default=0.45,
                   help="vacuum dose of the noisy inputs, counts/pixel/frame (default 0.45, "
                   "the papers'; at least 0.01)")
    n.add_argument("--dose-range", type=_dose_span, metavar="LO:HI",
                   help="train over an envelope of doses: each patch's vacuum dose is drawn "
                   "log-uniformly in [LO, HI] counts/pixel/frame (e.g. 0.1:5); --dose is then "
                   "the nominal dose the validation and the loss are expressed at")
    n.add_argument("--dose-of-data", action="store_true",
                   help="use each clean image's own counts as the Poisson mean (no rescaling)")
    n.add_argument("--contrast", help="contrast label stored in the checkpoint (default: from "
                   "the metadata table)")
    n.add_argument("--pixel-size-pm", type=float,
                   help="pixel size of the data, pm (default: from the metadata table, else 6.1)")
    a = p.add_argument_group("augmentation")
    a.add_argument("--patch", type=int, default=256, help="patch side in pixels (default 256)")
    a.add_argument("--max-angle", type=float, default=45.0,
                   help="random rotation in [-A, A] degrees (default 45)")
    a.add_argument("--scale-min", type=float, default=0.955, help="smallest rescale (0.955)")
    a.add_argument("--scale-max", type=float, default=1.055, help="largest rescale (1.055)")
    a.add_argument("--pixel-size-range", type=_span, metavar="LO:HI",
                   help="train over an envelope of pixel sizes: each patch is resampled to a "
                   "pixel size drawn log-uniformly in [LO, HI] pm (e.g. 5:10); replaces "
                   "--scale-min/--scale-max")
    m = p.add_argument_group("model")
    m.add_argument("--arch", choices=["bf_unet", "dncnn", "small_unet"], default="bf_unet",
                   help="bias-free UNet (default), or DnCNN / small UNet for comparisons")
    m.add_argument("--scales", type=int, default=4, help="UNet down-samplings (default 4)")
    m.add_argument("--base", type=int, default=32, help="UNet base channels (default 32)")
    m.add_argument("--unshuffle", type=int, default=1,
                   help="space-to-depth factor of the input (1: none; 2 cuts the full-"
                   "resolution cost about 4x)")
    m.add_argument("--centre-sigma", type=float, default=0.0,
                   help="sigma in pixels of the linear centring blur (0: none)")
    m.add_argument("--activation", choices=["relu", "leaky_relu"], default="relu",
                   help="non-linearity (default relu, as in the papers)")
    m.add_argument("--norm", choices=["batch", "none"], default="batch",
                   help="bias-free BatchNorm after each convolution (default, the papers') or none")
    o = p.add_argument_group("optimisation")
    o.add_argument("--batch", type=int, default=4, help="patches per step per process (4)")
    o.add_argument("--steps-per-epoch", type=int, default=100, help="steps per epoch (100)")
    o.add_argument("--epochs", type=int, default=1000, help="maximum epochs (1000)")
    o.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (1e-3)")
    o.add_argument("--warmup-steps", type=int, default=0,
                   help="linear learning-rate warm-up, steps (0: none)")
    o.add_argument("--clip-grad", type=float, default=0.0,
                   help="gradient-norm clipping (0: none)")
    o.add_argument("--lr-patience", type=int, default=3,
                   help="epochs without improvement before the lr is halved (3)")
    o.add_argument("--early-stop", type=int, default=10,
                   help="epochs without improvement before stopping (10)")
    o.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop cleanly after this many minutes of training (0: no limit)")
    r = p.add_argument_group("running")
    r.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
    r.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    r.add_argument("--seed", type=int, default=0, help="random seed (0)")
    r.add_argument("--init-from", metavar="CKPT",
                   help="start from the weights of this checkpoint ('default': the bundled "
                   "model); it must have the same architecture and parameters")
    r.add_argument("--resume", action="store_true", help="continue the run in --out")
    r.add_argument("--restart-lr", type=float, default=0.0,
                   help="with --resume: set the learning rate to this value and start a fresh "
                   "plateau schedule (a warm restart, when the rate has decayed too far; 0: keep)")
    r.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    return p


def _span(text: str) -> tuple[float, float]:
    """``LO:HI`` -> (lo, hi), both positive and finite, lo <= hi."""
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use LO:HI, e.g. 0.1:5") from None
    if not (0 < lo <= hi < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 < LO <= HI")
    return lo, hi


def _dose_span(text: str) -> tuple[float, float]:
    lo, hi = _span(text)
    if lo < MIN_DOSE:
        raise argparse.ArgumentTypeError(f"{text!r}: doses below {MIN_DOSE} counts/pixel are "
                                         "almost all zeros; raise LO")
    return lo, hi


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    from napari_sbd.training.data import TrainingDataError
    from napari_sbd.training.loop import TrainConfig, train

    if args.restart_lr and not args.resume:
        print("napari-sbd-train: error: --restart-lr only applies with --resume", file=sys.stderr)
        return 2
    if not args.dose_of_data and not args.dose > 0:
        print(f"napari-sbd-train: error: --dose must be > 0 counts/pixel, got {args.dose}",
              file=sys.stderr)
        return 2
    cfg = TrainConfig(
        data=args.data, out=args.out, where=args.where, val_fraction=args.val_fraction,
        val_images=args.val_images, val_crop=args.val_crop,
        dose=None if args.dose_of_data else args.dose, dose_range=args.dose_range,
        contrast=args.contrast, pixel_size_pm=args.pixel_size_pm,
        pixel_size_range_pm=args.pixel_size_range, patch=args.patch, batch=args.batch,
        steps_per_epoch=args.steps_per_epoch, epochs=args.epochs, lr=args.lr,
        warmup_steps=args.warmup_steps, clip_grad=args.clip_grad, lr_patience=args.lr_patience,
        early_stop=args.early_stop, arch=args.arch, scales=args.scales, base=args.base,
        unshuffle=args.unshuffle, centre_sigma=args.centre_sigma, activation=args.activation, norm=args.norm,
        max_angle=args.max_angle, scale_min=args.scale_min, scale_max=args.scale_max,
        device=args.device, amp=not args.no_amp, seed=args.seed, resume=args.resume,
        init_from=_checkpoint_path(args.init_from),
        restart_lr=args.restart_lr,
        max_minutes=args.max_minutes, progress=not args.quiet,
    )
    try:
        summary = train(cfg)
    except (TrainingDataError, ValueError) as exc:
        print(f"napari-sbd-train: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        from napari_sbd._cli import os_error_message

        print(os_error_message("napari-sbd-train", exc, "then continue with the same command "
                               "plus --resume (finished epochs are kept)"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("napari-sbd-train: interrupted; continue with the same command plus --resume",
              file=sys.stderr)
        return 130
    if summary.get("epochs") is not None:
        print(f"best validation PSNR {summary['best_val_psnr']:.2f} dB after "
              f"{summary['epochs']} epochs ({summary['stopped']}); checkpoints in {summary['out']}")
    return 0


def _checkpoint_path(name: str | None) -> str | None:
    if name == "default":
        from napari_sbd.core.inference import default_model_path

        return str(default_model_path())
    return name


if __name__ == "__main__":
    sys.exit(main())
