"""Score checkpoints on one training run's own validation crops, side by side.

    python benchmarks/validation_scores.py RUN_DIR CKPT [CKPT ...] [--training N] [--threads T]

RUN_DIR is a ``napari-sbd-train`` output folder: its config.json gives the data,
the split by structure, the bands, the crops and the noise seeds, so every
checkpoint is scored on exactly what that run's log.csv scores (a model trained
elsewhere included: the bundled ``black`` on a new black run's validation
structures, say). CKPT is a checkpoint path or a bundled model's name.
``--training N`` also scores N images of the run's training structures the same
way: a network that scores no better there than on held-out structures underfits
(more capacity or training helps it), one far better there is short of data.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from napari_sbd.core.checkpoint import load_checkpoint
from napari_sbd.core.inference import BUNDLED, bundled_model_path
from napari_sbd.training.loop import run_config, score_on_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a training run's output folder (its config.json)")
    parser.add_argument("checkpoints", nargs="+", help="checkpoint paths or bundled names")
    parser.add_argument("--training", type=int, default=0,
                        help="also score this many images of the run's training structures")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads (1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = run_config(args.run)
    t0 = time.perf_counter()
    rows = []
    for name in args.checkpoints:
        path = bundled_model_path(name) if name in BUNDLED else name
        net, meta = load_checkpoint(path)
        scores = score_on_run(net, cfg, training=args.training)
        rows.append((name, meta.get("epoch"), scores))
        print(name, {k: round(v, 3) for k, v in scores.items()}, file=sys.stderr)
    bands = [k for k in rows[0][2] if k.startswith("held-out ")]
    bands = bands if len(bands) > 1 else []  # a run at one point: its one band is the mean
    head = ["checkpoint", "epoch", "validation PSNR (dB)", *bands] + (
        [f"{args.training} training images (dB)"] if args.training else [])
    print(f"Run: `{args.run}` ({', '.join(cfg.where) or 'all images'}; validation structures "
          f"{', '.join(cfg.val_structures or ()) or f'{cfg.val_fraction:.0%} by seed {cfg.seed}'}; "
          f"{cfg.val_images} crops of {cfg.val_crop} px per band). "
          f"{time.perf_counter() - t0:.0f} s.\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, epoch, s in rows:
        cells = [f"`{name}`", str(epoch), f"{s['held-out']:.3f}", *(f"{s[b]:.3f}" for b in bands)]
        if args.training:
            cells.append(f"{s['training']:.3f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
