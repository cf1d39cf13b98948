"""``napari-sbd-train``: train a denoiser on clean simulated images, headless."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from napari_sbd.training.config import TrainConfig

EPILOG = """\
examples:
  # the papers' recipe on a simulator folder, white-contrast images only
  napari-sbd-train data-sim/ --out runs/white --where contrast=white

  # continue after an interruption: the run's own options come from its config.json
  napari-sbd-train data-sim/ --out runs/white --resume --max-minutes 60

  # one network over an operating envelope of dose and pixel size, started from
  # the bundled model's weights
  napari-sbd-train data-sim/ --out runs/envelope --where contrast=white \
      --dose-range 0.1:5 --pixel-size-range 5:10 --init-from default

  # two processes (or GPUs) with distributed data parallel
  torchrun --nproc_per_node 2 -m napari_sbd.training.cli data-sim/ --out runs/ddp

A resumed run keeps the options that shape what is learned (data filters,
noise, augmentation, model, optimiser): those not written on the command line
are taken from the run's config.json, and one written with another value is
refused, naming each difference. These may change on resume: the data folder's path, --max-minutes,
--epochs, --early-stop, --restart-lr, --lr-patience, --ema, --device, --no-amp, --quiet
(--early-stop, --lr-patience and --ema left out keep the run's last values).

Units: doses in counts (electrons) per pixel per frame in vacuum; pixel sizes
in picometres; patch sizes in pixels; angles in degrees.
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser, generated from :class:`TrainConfig`'s declared options."""
    from napari_sbd.training.config import add_options

    p = argparse.ArgumentParser(
        prog="napari-sbd-train",
        description="Train a bias-free denoising network on clean simulated count images, "
        "with Poisson noise drawn afresh at every step (simulation-based denoising).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p)
    p.add_argument("--dose-of-data", action="store_true",
                   help="use each clean image's own counts as the Poisson mean (no rescaling; "
                   "replaces --dose)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    from napari_sbd.training.config import config_from_args
    from napari_sbd.training.data import TrainingDataError
    from napari_sbd.training.loop import train

    if args.restart_lr and not args.resume:
        print("napari-sbd-train: error: --restart-lr only applies with --resume", file=sys.stderr)
        return 2
    cfg = config_from_args(args, dose=None if args.dose_of_data else args.dose,
                           init_from=_checkpoint_path(args.init_from))
    if args.resume:
        cfg = _with_the_runs_options(cfg, argv)
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
    except (MemoryError, RuntimeError) as exc:
        from napari_sbd.core.inference import is_out_of_memory

        if not is_out_of_memory(exc):
            raise
        print(f"napari-sbd-train: error: out of {'GPU' if 'CUDA' in str(exc) else 'CPU'} memory "
              f"with batches of {cfg.batch} patches of {cfg.patch}x{cfg.patch} (validation "
              f"crops {cfg.val_crop}x{cfg.val_crop}): free the device, or start a new run "
              "(another --out) with a smaller --batch, --patch or --val-crop; the epochs "
              "finished here are kept (--resume continues them)", file=sys.stderr)
        return 1
    if summary.get("epochs") is not None:
        print(f"best validation PSNR {summary['best_val_psnr']:.2f} dB after "
              f"{summary['epochs']} epochs ({summary['stopped']}); checkpoints in {summary['out']}")
    return 0


def _with_the_runs_options(cfg: TrainConfig, argv: Sequence[str] | None) -> TrainConfig:
    """On --resume, take every learning option not written out from the run's config.json."""
    import json
    from dataclasses import fields
    from pathlib import Path

    from napari_sbd.training.config import TrainConfig, with_run_options
    from napari_sbd.training.loop import KEPT_ON_RESUME, RESUMABLE_OPTIONS

    path = Path(cfg.out) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return cfg  # no record (or a damaged one: the resume itself reports it)
    # which options the command line gave, by their flags (as add_options spells them)
    tokens = list(sys.argv[1:] if argv is None else argv)
    flags = {"dose": ["--dose", "--dose-of-data"]}
    for f in fields(TrainConfig):
        if "group" in f.metadata and not f.metadata.get("positional"):
            flags.setdefault(f.name, []).append(
                f.metadata.get("flag") or "--" + f.name.replace("_", "-"))
    given = {name for name, opts in flags.items()
             if any(t == o or t.startswith(o + "=") for t in tokens for o in opts)}
    # the weight average and the plateau schedule's knobs may change on resume, but one left
    # out keeps the run's (the trainer records the latest values in config.json), so a plain
    # --resume neither drops the average nor stops the run at the default's patience
    return with_run_options(cfg, saved, given, RESUMABLE_OPTIONS - KEPT_ON_RESUME)


def _checkpoint_path(name: str | None) -> str | None:
    from napari_sbd.core.inference import BUNDLED, bundled_model_path

    return str(bundled_model_path(name)) if name in BUNDLED else name


if __name__ == "__main__":
    sys.exit(main())
