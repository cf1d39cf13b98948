"""Auto's contrast choice: the skew of the counts against held-out counts (binomial thinning).

    python benchmarks/contrast_choice.py --data /work/data-sim/v1 [--per-class 20]

At the default's point there are two bundled models, the default (white
contrast) and the black-contrast model; model "auto" picks one per movie. This
scores two ways of picking on simulated frames of a training set (the choice
is not trained, so they are fair to it; the test frames of the other pages stay
unseen): the skew of the raw counts (``estimate_contrast``) and the model that
better predicts counts held out of the frame (``auto_contrast``). For each
frame (one Poisson draw at its own 0.45 counts/pixel, 6.1 pm) both models
denoise it, and a picker's loss is the better model's PSNR minus the picked
one's (0 when it picks the better). Writes docs/contrast-choice.md.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import tifffile
from _common import header, write_page

from napari_sbd.core.inference import estimate_contrast, load_model
from napari_sbd.core.metrics import psnr
from napari_sbd.core.selection import CONTRAST_MODELS, KEEP_FRACTION, SPLITS, auto_contrast

CLASSES = ("white", "black", "intermediate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True,
                        help="a napari-sbd-simulate folder (6.1 pm, 0.45 counts/pixel)")
    parser.add_argument("--per-class", type=int, default=20, help="frames of each contrast class")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    t0 = time.monotonic()
    with open(args.data / "metadata.csv") as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(args.seed)
    chosen = {c: list(rng.choice([r for r in rows if r["contrast"] == c],
                                 args.per_class, replace=False)) for c in CLASSES}
    models = {c: load_model(name) for c, name in CONTRAST_MODELS.items()}
    loss: dict[str, dict[str, list[float]]] = {p: {c: [] for c in CLASSES}
                                               for p in ("skew", "held-out")}
    for c, sel in chosen.items():
        for j, r in enumerate(sel):
            clean = tifffile.imread(args.data / r["file"]).astype(np.float32)
            noisy = np.random.default_rng([args.seed, j, CLASSES.index(c)]).poisson(clean)
            noisy = noisy.astype(np.float32)
            px = float(r["pixel_size_pm"])
            score = {k: psnr(clean, m.denoise(noisy)) for k, m in models.items()}
            picks = {"skew": estimate_contrast(noisy, px) or "white",
                     "held-out": auto_contrast(noisy, px, 0.45, models=models)}
            for p, pick in picks.items():
                loss[p][c].append(max(score.values()) - score[pick])
            print(c, r["file"], {k: round(v, 2) for k, v in score.items()}, picks, flush=True)
    lines = [
        *header("Auto's contrast choice: skew of the counts against held-out counts",
                [f"--data {args.data}", f"--per-class {args.per_class}"], time.monotonic() - t0),
        (f"Frames: {args.per_class} of each contrast class, drawn at random (seed {args.seed}) from "
         f"the simulated set in `{args.data}` (the labels are the simulator's), one Poisson "
         "draw each at the set's 0.45 counts/pixel. Both bundled models (default: white, "
         "black) denoise every frame; a picker's loss is the better model's PSNR minus the "
         "picked model's (dB; 0 when it picks the better one)."),
        "",
        ("- skew: `estimate_contrast` (raw counts binned to about 24 pm, Anscombe transform, "
         "the skew of the high-passed frame; white where it cannot tell)"),
        (f"- held-out: `auto_contrast` (binomial thinning: {KEEP_FRACTION:.0%} of the counts "
         f"denoised by each model, the rest scored by their Poisson likelihood, summed over "
         f"{SPLITS} splits; what auto uses)"),
        "",
        "| picker | " + " | ".join(f"{c}: mean loss (worse picks)" for c in CLASSES)
        + " | all: mean loss (worse picks) |",
        "|---|" + "---|" * (len(CLASSES) + 1),
    ]
    for p, by_class in loss.items():
        every = [v for vals in by_class.values() for v in vals]
        cells = [f"{np.mean(v):.2f} ({sum(x > 0 for x in v)} of {len(v)})"
                 for v in [*by_class.values(), every]]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    write_page("contrast-choice.md", lines)


if __name__ == "__main__":
    main()
