"""Peak memory of napari-sbd-denoise on a 20-frame and a 200-frame stack (issue 4).

Each run is a separate process; its peak RSS comes from the kernel
(resource.getrusage of the child). Memory must not grow with the stack length.

    python benchmarks/denoise_memory.py [--model PATH] [--size 512]

Writes the table to docs/denoise-memory.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from _common import DOCS

from napari_sbd.core.noise import poisson_noise


def run(n_frames: int, size: int, model: str, work: Path) -> tuple[float, float]:
    path = work / f"movie_{n_frames}.tif"
    rng = np.random.default_rng(0)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:  # written frame by frame too
        for _ in range(n_frames):
            tif.write(poisson_noise(np.full((size, size), 0.45), rng=rng).astype(np.uint16), contiguous=True)
    out = work / f"out_{n_frames}.zarr"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "napari_sbd.denoise_cli", str(path), "-o", str(out),
                    "--model", model, "--quiet"], check=True)
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb < before:
        raise RuntimeError("unexpected rusage")
    return peak_kb / 1024, n_frames / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default", help="checkpoint to run (default: bundled)")
    parser.add_argument("--size", type=int, default=512, help="frame side in pixels (512)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # RUSAGE_CHILDREN keeps the maximum over all children: run the short stack first
        for n in (20, 200):
            peak, fps = run(n, args.size, args.model, Path(tmp))
            rows.append((n, peak, fps))
            print(f"{n} frames: peak RSS {peak:.0f} MiB, {fps:.2f} frames/s", flush=True)
    cmd = "python benchmarks/denoise_memory.py " + " ".join(sys.argv[1:])
    text = "\n".join([
        "# napari-sbd-denoise: memory against stack length",
        "",
        f"Command: `{cmd}`  ",
        (f"Machine: {platform.machine()}, {__import__('os').cpu_count()} cores, CPU only; "
        f"date {dt.date.today().isoformat()}. Frames {args.size}x{args.size} uint16 counts."),
        "",
        "| frames | peak RSS of the process (MiB) | frames/s |",
        "|---|---|---|",
        *[f"| {n} | {p:.0f} | {f:.2f} |" for n, p, f in rows],
        "",
        ("The peak is the largest over the child processes so far (getrusage), so the "
        "200-frame figure is an upper bound of that run alone; equal figures mean the "
        "memory does not grow with the number of frames."),
    ]) + "\n"
    (DOCS / "denoise-memory.md").write_text(text)


if __name__ == "__main__":
    main()
