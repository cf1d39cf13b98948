"""Validation PSNR against patches seen or CPU time, for training runs' log.csv files.

    python benchmarks/training_curves.py NAME=RUN_DIR [NAME=RUN_DIR ...] [--x patches|cpu]
        [--at N,N,...] [--png FILE.png] [--logx]

Prints a markdown table (the validation PSNR of the last epoch at or before
given numbers of patches, or CPU minutes with ``--x cpu``, and the best) and
draws the curves. ``--x cpu`` reads the log's ``cpu_seconds`` column (the run's
CPU time over all its threads and sessions): the equal-budget axis.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

AXES = {  # --x -> (log column, divisor to the table's unit, table unit, plot label, default --at)
    "patches": ("patches_seen", 1000, "k patches", "training patches seen", "2400,4800,7200,14400"),
    "cpu": ("cpu_seconds", 60, "CPU min", "CPU time of the run (minutes, all threads)",
            "10,20,40,60,80"),
}


def read(run: Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    """The log's x column and validation PSNR, rows without an x value left out."""
    with open(run / "log.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get(column)]
    if not rows:
        raise SystemExit(f"{run / 'log.csv'}: no {column!r} values (runs before that column "
                         "can only be compared by patches: --x patches)")
    return (np.array([float(r[column]) for r in rows]),
            np.array([float(r["val_psnr"]) for r in rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--x", choices=sorted(AXES), default="patches", help="the budget axis")
    parser.add_argument("--at", help="budgets for the table, in the axis' unit "
                        "(patches, or CPU minutes)")
    parser.add_argument("--png", help="write the plot here")
    parser.add_argument("--logx", action="store_true",
                        help="logarithmic x axis (gains per doubling read as slopes)")
    args = parser.parse_args()
    column, div, unit, label, default_at = AXES[args.x]
    scale = 1 if args.x == "patches" else div  # --at is in patches, or in minutes
    at = [float(a) * scale for a in (args.at or default_at).split(",")]
    curves = {}
    for spec in args.runs:
        name, path = spec.split("=", 1)
        curves[name] = read(Path(path), column)
    print("| run | " + " | ".join(f"{a / div:g} {unit}" for a in at) + f" | best ({unit}) |")
    print("|---|" + "---|" * (len(at) + 1))
    for name, (x, y) in curves.items():
        cells = []
        for a in at:
            # the epoch that ended at or just before `a`; '-' outside the run
            idx = np.flatnonzero(x <= a)
            cells.append(f"{y[idx[-1]]:.2f}" if len(idx) and a <= x[-1] else "-")
        b = int(np.argmax(y))
        print(f"| {name} | " + " | ".join(cells) + f" | {y[b]:.2f} ({x[b] / div:.4g}) |")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, (x, y) in curves.items():
            ax.plot(x / (div if args.x == "cpu" else 1), y, label=name)
        if args.logx:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("validation PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)


if __name__ == "__main__":
    main()
