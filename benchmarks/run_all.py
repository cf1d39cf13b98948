"""Every benchmark, one command: regenerates docs/benchmarks.md and its plots from scratch.

    python benchmarks/run_all.py            # the full run (about 35 minutes on 2 cores)
    python benchmarks/run_all.py --quick --docs /tmp/bench   # under 10 min, docs/ untouched
    python benchmarks/run_all.py --only bar speed   # a subset (the others' pages are kept)
    python benchmarks/run_all.py --assemble-only    # no run: gather the pages as they are

Each step is a script of its own (run it alone for one page); each writes its
page in docs/ and its plots in docs/images/ (or in --docs). This script runs them in fresh
processes (so peak-memory numbers are per step), then gathers every page into
docs/benchmarks.md with the command, machine, date and time of each step.
Simulated test and validation sets are built on first use and cached
(benchmarks/_common.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import DOCS, DOCS_ENV, REPO

# name, script, arguments (full run), arguments (--quick), page, what it answers
STEPS = [
    ("bar", "bar.py", ["--model", "default", "--model", "envelope", "--ensemble"], [], "bar.md",
     "issue 8's bar: the bundled model against the best classical methods on the papers' images"),
    ("quality", "denoising_quality.py", [], ["--quick"], "denoising-quality.md",
     "the papers' Table 1 on the reference images and a held-out simulated set, by contrast class"),
    ("generalization", "generalization.py", [], ["--quick"], "generalization.md",
     "PSNR against pixel size, rotation, contrast class, particle size and defect type"),
    ("structure", "structure_recovery.py", ["--best-quality"], ["--quick"], "structure-recovery.md",
     "surface and bulk column recovery, and the LLR of real and spurious columns"),
    ("speed", "speed.py", [], ["--repeats", "2"], "speed.md",
     "frames/s, peak memory, effective-filter latency, CPU efficiency"),
    ("filter", "filter_latency.py", [], ["--clicks", "4", "--rounds", "1"], "filter-latency.md",
     "a Shift-click in the Effective-filter dock against the library call (napari under Xvfb)"),
    ("train-step", "train_step.py", [], ["--repeats", "3"], "train-step.md",
     "a training step of each study network in float32 and in the trainer's mixed precision"),
    ("memory", "denoise_memory.py", [], [], "denoise-memory.md",
     "napari-sbd-denoise memory against stack length (20 and 200 frames)"),
    ("fidelity", "simulation_fidelity.py", [], [], "simulation-fidelity.md",
     "our simulator against the papers' reference images"),
    ("envelope", "envelope.py", [], ["--quick"], "envelope.md",
     "PSNR against the dose (0.1-4 counts/pixel) and the pixel size (4-12 pm) beside tuned BM3D"),
    ("reliability", "reliability.py", [], [], "reliability.md",
     "bad inputs tried through the commands and the API, and what each one gets"),
    ("columns", "atomap_compare.py", [], ["--quick"], "column-finding.md",
     "column finding against Atomap on synthetic STEM- and HRTEM-like lattices (needs atomap)"),
]


NEEDS_DISPLAY = {"filter"}  # napari in a real window: under Xvfb on a machine without one


def demote(md: str) -> str:
    """Headings one level down, so a page nests under a section of benchmarks.md."""
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", md, flags=re.M)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the < 10 minute version")
    parser.add_argument("--only", nargs="+", choices=[s[0] for s in STEPS], help="run these steps only")
    parser.add_argument("--assemble-only", action="store_true",
                        help="run nothing: rebuild benchmarks.md from the pages as they are now "
                             "(after a page was regenerated on its own)")
    parser.add_argument("--docs", type=Path, default=DOCS,
                        help="folder for the pages and images/ (default: the repository's docs/; "
                             "point a --quick run elsewhere to keep the committed pages)")
    args = parser.parse_args()
    docs = args.docs.resolve()
    (docs / "images").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, DOCS_ENV: str(docs)}
    times: dict[str, float] = {}
    failed: list[str] = []
    t_all = time.perf_counter()
    for name, script, full, quick, _page, _what in STEPS:
        if args.assemble_only or (args.only and name not in args.only):
            continue
        cmd = [sys.executable, str(REPO / "benchmarks" / script), *(quick if args.quick else full)]
        if name in NEEDS_DISPLAY and not os.environ.get("DISPLAY") and shutil.which("xvfb-run"):
            cmd = ["xvfb-run", "-a", "-s", "-screen 0 1366x768x24", *cmd]  # a laptop's screen
        print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, env=env).returncode
        times[name] = time.perf_counter() - t0
        print(f"== {name}: exit {rc}, {times[name] / 60:.1f} min", file=sys.stderr, flush=True)
        if rc:
            failed.append(name)
    total = time.perf_counter() - t_all

    import torch

    mode = "--quick" if args.quick else "full-size"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    lines = [
        "# Benchmarks",
        "",
        "Regenerate every table and plot: `python benchmarks/run_all.py` (about 35 minutes "
        "on this machine; `--quick --docs /tmp/bench` in under 10, leaving these pages alone). "
        "This page was assembled by "
        f"`python benchmarks/run_all.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        (f"Machine: {platform.machine()}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}; "
        f"date {dt.date.today().isoformat()}; "
        + (f"{mode} mode, {total / 60:.1f} min for the steps run now." if times
           else "no step run now (each section's own date says when it ran).")),
        "",
        ("Every number below was printed by a script in `benchmarks/` on this machine; each section "
        "names its own command. Test images are never trained or tuned on: the papers' four "
        "reference simulations (../shared/data/reference) and held-out simulated structures "
        "(seeds 7000+, and 9000+ for structure recovery); classical parameters are tuned on "
        "other held-out structures (seeds 7500+)."),
        "",
        "| section | what it answers | step time (this run) |",
        "|---|---|---|",
    ]
    for name, _script, _f, _q, _page, what in STEPS:
        took = f"{times[name] / 60:.1f} min" if name in times else "kept from an earlier run"
        if name in failed:
            took += " (FAILED: page is stale)"
        lines.append(f"| [{name}](#{name}) | {what} | {took} |")
    lines.append("")
    for name, _script, _f, _q, page, _what in STEPS:
        path = docs / page
        lines += [f'<a id="{name}"></a>', ""]
        lines.append(demote(path.read_text()) if path.exists() else f"## {name}\n\n(not run yet)\n")
        lines.append("")
    (docs / "benchmarks.md").write_text("\n".join(lines))
    print(f"wrote {docs / 'benchmarks.md'} ({total / 60:.1f} min)", file=sys.stderr)
    if failed:
        raise SystemExit(f"failed steps: {', '.join(failed)}")


if __name__ == "__main__":
    main()
