"""Does bfloat16 training learn what float32 does? A paired test from one run's state.

    python benchmarks/precision_ab.py DATA [--candidate s4-c64-u4] [--epochs 8]
        [--scratch /tmp/precision-ab]

Copies the architecture-study candidate's folder (model-training/study/NAME:
its weights, Adam state, schedule and log) twice into --scratch and resumes
each copy for --epochs more epochs with the study's options, one in the
trainer's mixed precision (bfloat16 autocast on a CPU that has it natively)
and one with ``--no-amp`` (float32). Both see the same patches in the same
order (the patch draws are seeded by epoch) and are validated in float32 on
the same crops, so the per-epoch difference is the arithmetic's alone. A copy
already trained that far is only read. Writes docs/precision-ab.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

from _common import REPO, header, write_page
from architecture_study import CANDIDATES, COMMON

ARMS = {"mixed": [], "float32": ["--no-amp"]}


def read_log(run: Path) -> list[dict[str, str]]:
    """Return the rows of a run's log.csv."""
    with open(run / "log.csv") as fh:
        return list(csv.DictReader(fh))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="the study's training set (napari-sbd-simulate output)")
    parser.add_argument("--candidate", default="s4-c64-u4", choices=sorted(CANDIDATES))
    parser.add_argument("--epochs", type=int, default=8, help="epochs each arm trains on")
    parser.add_argument("--scratch", default="/tmp/precision-ab", help="where the copies go")
    args = parser.parse_args()
    source = REPO / "model-training" / "study" / args.candidate
    start = len(read_log(source))
    target = start + args.epochs
    train = Path(sys.executable).with_name("napari-sbd-train")
    common = [c for c in COMMON if c != "--no-amp"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    logs = {}
    for arm, flags in ARMS.items():
        run = Path(args.scratch) / arm
        if not (run / "log.csv").exists():
            shutil.copytree(source, run, ignore=shutil.ignore_patterns(".lock"))
        if len(read_log(run)) < target:
            subprocess.run([str(train), args.data, "--out", str(run), *CANDIDATES[args.candidate],
                            *common, *flags, "--epochs", str(target), "--quiet", "--resume"],
                           check=True, env=env)
        logs[arm] = {int(r["epoch"]): r for r in read_log(run)}
    epochs = range(start + 1, target + 1)
    rows = []
    for e in epochs:
        a, b = logs["mixed"][e], logs["float32"][e]
        rows.append((e, float(a["val_psnr"]), float(b["val_psnr"]),
                     float(a["cpu_seconds"]) - float(logs["mixed"][e - 1]["cpu_seconds"]),
                     float(b["cpu_seconds"]) - float(logs["float32"][e - 1]["cpu_seconds"])))
    mean = [sum(r[i] for r in rows) / len(rows) for i in range(1, 5)]
    lines = [
        *header("bfloat16 against float32 training, paired", [
            args.data, f"--candidate {args.candidate}", f"--epochs {args.epochs}"]),
        (f"Both arms resume {args.candidate} after its epoch {start} (the architecture study's "
         "state) with the study's options; same patches, same validation crops, validation in "
         "float32. PSNR: mean over the five validation bands (dB); CPU seconds: that epoch's "
         "training and validation, all threads."),
        "",
        ("| epoch | bfloat16 mixed (dB) | float32 (dB) | difference (dB) | CPU s, bfloat16 | "
         "CPU s, float32 |"),
        "|---|---|---|---|---|---|",
        *(f"| {e} | {a:.3f} | {b:.3f} | {a - b:+.3f} | {ca:.0f} | {cb:.0f} |"
          for e, a, b, ca, cb in rows),
        (f"| mean | {mean[0]:.3f} | {mean[1]:.3f} | {mean[0] - mean[1]:+.3f} | {mean[2]:.0f} | "
         f"{mean[3]:.0f} |"),
        "",
        (f"An epoch cost {mean[3] / mean[2]:.2f}x the CPU time in float32 for a mean difference "
         f"of {mean[0] - mean[1]:+.3f} dB."),
    ]
    write_page("precision-ab.md", lines)


if __name__ == "__main__":
    main()
