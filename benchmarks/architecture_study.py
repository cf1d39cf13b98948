"""Equal-budget architecture study (issue 20): candidates trained one at a time, same data and seeds.

    python benchmarks/architecture_study.py DATA [--root model-training/study] [--minutes 45]
        [--only NAME ...]

Every candidate is trained from scratch with the envelope run's options (the
same dose and pixel-size envelope, patches, batch, schedule and seed; see
model-training/README.md), for ``--minutes`` of wall time each, one after the
other so that none shares the cores with another. A candidate whose log already
holds that much time is skipped, an unfinished one resumes: the study survives
an interrupted session. The comparison is made on the x-axis that does not
depend on what else ran on the machine, the run's own CPU seconds (log.csv
``cpu_seconds``), by ``training_curves.py --x cpu``, which this script runs last.

Only the logs and configs are kept in git (the checkpoints are ignored: the
winner is trained on in its own folder).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The envelope run's options minus its architecture and --init-from (a study starts from scratch).
COMMON = [
    "--where", "contrast=white", "--contrast", "white", "--centre-sigma", "6",
    "--activation", "leaky_relu", "--norm", "none", "--patch", "256", "--batch", "8",
    "--steps-per-epoch", "60", "--val-images", "6", "--val-crop", "512", "--warmup-steps", "100",
    "--clip-grad", "1.0", "--early-stop", "25", "--lr-patience", "10", "--lr", "2.5e-4",
    "--dose-range", "0.1:5", "--pixel-size-range", "4.8:10.5",
    # float32 throughout: the first candidates were trained before bfloat16 was used on CPUs
    # that have it, and an equal-budget comparison needs one arithmetic for all
    "--no-amp",
]

# name -> architecture flags; receptive fields from the network's own receptive_field
CANDIDATES = {
    "s4-c32-u2": ["--scales", "4", "--base", "32", "--unshuffle", "2"],  # what ships today
    "s5-c64-u4": ["--scales", "5", "--base", "64", "--unshuffle", "4"],
    "s4-c64-u4": ["--scales", "4", "--base", "64", "--unshuffle", "4"],
    "s5-c32-u2": ["--scales", "5", "--base", "32", "--unshuffle", "2"],
    "s6-c32-u2": ["--scales", "6", "--base", "32", "--unshuffle", "2"],
}


def wall_minutes(run: Path) -> float:
    """Wall minutes of training the run's log records (0 for a run not started)."""
    log = run / "log.csv"
    if not log.exists():
        return 0.0
    with open(log) as fh:
        return sum(float(r["epoch_seconds"]) for r in csv.DictReader(fh)) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="the simulated training set (napari-sbd-simulate output)")
    parser.add_argument("--root", default=str(REPO / "model-training" / "study"),
                        help="one folder per candidate is made here")
    parser.add_argument("--minutes", type=float, default=45.0, help="wall minutes per candidate")
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="these candidates")
    parser.add_argument("--png", default=str(REPO / "docs" / "images" / "architecture-study.png"))
    args = parser.parse_args()
    names = args.only or list(CANDIDATES)
    root = Path(args.root)
    train = Path(sys.executable).with_name("napari-sbd-train")
    for name in names:
        run = root / name
        left = args.minutes - wall_minutes(run)
        if left < 1:
            print(f"{name}: {args.minutes:g} minutes already trained", file=sys.stderr)
            continue
        cmd = [str(train), args.data, "--out", str(run), *CANDIDATES[name], *COMMON,
               "--max-minutes", f"{left:.1f}", "--quiet", "--resume"]
        print(f"{name}: training {left:.0f} more minutes", file=sys.stderr)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        subprocess.run(cmd, check=True, env=env)
    done = [n for n in CANDIDATES if (root / n / "log.csv").exists()]
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "training_curves.py"),
                    *(f"{n}={root / n}" for n in done), "--x", "cpu", "--png", args.png],
                   check=True)


if __name__ == "__main__":
    main()
