"""Validation PSNR against patches seen, for training runs' log.csv files.

    python benchmarks/training_curves.py NAME=RUN_DIR [NAME=RUN_DIR ...] [--png FILE.png]

Prints a markdown table (the validation PSNR of the last epoch at or before
given numbers of patches, and the best) and draws the curves.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def read(run: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(run / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    return (np.array([float(r["patches_seen"]) for r in rows]),
            np.array([float(r["val_psnr"]) for r in rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--at", default="2400,4800,7200,14400", help="patches for the table")
    parser.add_argument("--png", help="write the plot here")
    parser.add_argument("--logx", action="store_true",
                        help="logarithmic patch axis (gains per doubling read as slopes)")
    args = parser.parse_args()
    at = [int(a) for a in args.at.split(",")]
    curves = {}
    for spec in args.runs:
        name, path = spec.split("=", 1)
        curves[name] = read(Path(path))
    print("| run | " + " | ".join(f"{a / 1000:g}k patches" for a in at) + " | best (patches) |")
    print("|---|" + "---|" * (len(at) + 1))
    for name, (x, y) in curves.items():
        cells = []
        for a in at:
            # the epoch that ended at or just before `a` patches; '-' outside the run
            idx = np.flatnonzero(x <= a)
            cells.append(f"{y[idx[-1]]:.2f}" if len(idx) and a <= x[-1] else "-")
        b = int(np.argmax(y))
        print(f"| {name} | " + " | ".join(cells) + f" | {y[b]:.2f} ({int(x[b])}) |")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, (x, y) in curves.items():
            ax.plot(x, y, label=name)
        if args.logx:
            ax.set_xscale("log", base=2)
        ax.set_xlabel("training patches seen")
        ax.set_ylabel("validation PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)


if __name__ == "__main__":
    main()
