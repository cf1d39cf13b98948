"""What the benchmark scripts share: test sets, tuning, scoring, report lines.

Test sets (never trained or tuned on):

* the papers' four reference simulations (../shared/data/reference),
  resampled from 4.88 to 6.1 pm/pixel (x0.8, bilinear), Poisson draws at their
  own counts with fixed seeds;
* a held-out simulated set from ``napari-sbd-simulate``'s engine, structure
  seeds 7000+ (training used 1000-1095), at defoci that give the three
  contrast classes (underfocus: black Pt columns; near zero: intermediate;
  overfocus: white).

Classical parameters are tuned on a separate simulated validation set
(structure seeds 7500+), never on the test sets. Simulated sets are cached
under ``--cache`` (default ``~/.cache/napari-sbd/benchmarks``); the simulator is
bit-for-bit reproducible, so the cache only saves time.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
try:
    from napari_sbd.core.metrics import psnr, ssim
    from napari_sbd.core.noise import poisson_noise
except ImportError:  # run with a Python that lacks the package
    sys.exit("benchmarks need the napari-sbd package: run them with .venv/bin/python "
             "(make test sets it up)")

# the shared data: $SBD_SHARED, else ../shared next to the clone (as the tests read it)
REFERENCE = Path(os.environ.get("SBD_SHARED") or REPO.parent / "shared") / "data" / "reference"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "napari-sbd" / "benchmarks"
# Where pages and plots go: docs/ unless run_all.py --docs points elsewhere
# (a --quick run into a scratch folder leaves the committed pages alone).
DOCS_ENV = "NAPARI_SBD_BENCH_DOCS"
DOCS = Path(os.environ.get(DOCS_ENV) or REPO / "docs")
IMAGES = DOCS / "images"

TEST_SEED = 7000  # held-out structures for testing
VAL_SEED = 7500  # held-out structures for tuning classical methods
TEST_DEFOCI = [-6.0, 0.0, 6.0, 10.0]  # black, intermediate, white, white (Cs = -13 um)
VAL_DEFOCI = [4.0, 6.0, 8.0]  # white: the class the bundled model is for


@dataclass
class Frame:
    """One clean/noisy test pair with its description."""

    name: str
    clean: np.ndarray
    noisy: np.ndarray
    info: dict = field(default_factory=dict)


def reference_frames(draws: int = 3) -> list[Frame]:
    """The papers' four reference images at 6.1 pm/pixel, ``draws`` Poisson draws each."""
    from skimage.transform import rescale

    files = sorted(REFERENCE.glob("*.tif"))
    if not files:
        raise SystemExit(f"no reference images in {REFERENCE}: set SBD_SHARED to the folder "
                         "holding data/reference")
    out = []
    for i, f in enumerate(files):
        clean = rescale(tifffile.imread(f).astype(np.float64), 0.8, order=1,
                        anti_aliasing=False).astype(np.float32)
        for k in range(draws):
            noisy = poisson_noise(clean, rng=1000 * i + k)
            out.append(Frame(f"{f.stem[:24]}#{k}", clean, noisy, {"set": "reference", "image": i}))
    return out


def resample(clean: np.ndarray, from_pm: float, to_pm: float) -> np.ndarray:
    """A clean image at another pixel size (bilinear; HRTEM images are band-limited)."""
    from skimage.transform import rescale

    if abs(from_pm - to_pm) < 1e-9:
        return clean.astype(np.float32)
    return rescale(clean.astype(np.float64), from_pm / to_pm, order=1,
                   anti_aliasing=False).astype(np.float32)


def simulated_set(name: str, seed: int, n_structures: int, defoci: Sequence[float],
                  cache: Path = DEFAULT_CACHE) -> list[dict]:
    """Simulate (or reuse from the cache) a small held-out set; metadata rows with ``path``.

    Structure ``i`` comes from seed ``seed + i`` alone; asking for more
    structures later extends the cached set.
    """
    from napari_sbd.simulate.dataset import simulate_dataset
    from napari_sbd.simulate.imaging import ImagingParams

    out = Path(cache) / f"{name}-s{seed}-df{'_'.join(f'{d:g}' for d in defoci)}"
    t0 = time.perf_counter()
    simulate_dataset(out, n_structures, list(defoci), ImagingParams(), seed=seed)
    with open(out / "metadata.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["seed"]) < seed + n_structures]
    for r in rows:
        r["path"] = str(out / r["file"])
    print(f"{name}: {len(rows)} images of {n_structures} structures in {out} "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return sorted(rows, key=lambda r: (r["structure_id"], float(r["defocus_nm"])))


def noisy_frames(rows: list[dict], draws: int = 1, seed: int = 0) -> list[Frame]:
    """Frames with Poisson draws of the simulated images (their own vacuum dose)."""
    out = []
    for j, r in enumerate(rows):
        clean = tifffile.imread(r["path"]).astype(np.float32)
        for k in range(draws):
            noisy = poisson_noise(clean, rng=np.random.default_rng([seed, j, k]))
            out.append(Frame(f"{r['file']}#{k}", clean, noisy, dict(r, set="simulated")))
    return out


def tune(frames: list[Frame], method: Callable, grid: Sequence) -> tuple[object, dict]:
    """The grid value with the best mean PSNR on the (validation) frames, and all scores."""
    scores = {g: float(np.mean([psnr(f.clean, method(f.noisy, g)) for f in frames])) for g in grid}
    return max(scores, key=scores.get), scores


def score(frames: list[Frame], fn: Callable[[np.ndarray], np.ndarray]) -> tuple[list[dict], list]:
    """PSNR, SSIM and seconds of ``fn`` on each frame; also the outputs."""
    rows, outs = [], []
    for f in frames:
        t0 = time.perf_counter()
        est = fn(f.noisy)
        dt_s = time.perf_counter() - t0
        rows.append({"psnr": psnr(f.clean, est), "ssim": ssim(f.clean, est), "seconds": dt_s,
                     **{k: f.info.get(k) for k in ("set", "contrast", "particle", "defect", "defocus_nm")}})
        outs.append(est)
    return rows, outs


def summary(rows: list[dict]) -> str:
    """'mean +- std' of PSNR and SSIM, and the mean time, as table cells."""
    if not rows:
        return "- | - | -"
    p = np.array([r["psnr"] for r in rows])
    s = np.array([r["ssim"] for r in rows])
    t = np.mean([r["seconds"] for r in rows])
    return f"{p.mean():.2f} +- {p.std():.2f} | {s.mean():.3f} +- {s.std():.3f} | {t:.2f}"


def header(title: str, argv: Sequence[str], elapsed_s: float | None = None) -> list[str]:
    """Title, the exact command, the machine and the date, as markdown lines."""
    import torch

    script = Path(sys.argv[0]).name
    took = f", {elapsed_s / 60:.1f} min" if elapsed_s is not None else ""
    return [
        f"# {title}",
        "",
        f"Command: `{' '.join(['python', f'benchmarks/{script}', *argv])}`  ",
        (f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; date {dt.date.today().isoformat()}{took}."),
        "",
    ]


def write_page(page: str, lines: Sequence[str]) -> None:
    """Print a benchmark's markdown lines and write them to docs/PAGE."""
    text = "\n".join(lines) + "\n"
    print(text)
    (DOCS / page).write_text(text)


def model_label(model) -> str:
    """Short description of a loaded Denoiser for tables."""
    m = model.metadata
    p = m.get("params") or {}
    name = Path(m.get("path", "model")).name
    arch = m.get("architecture", "?")
    if arch == "bf_unet":
        desc = (f"{p.get('scales')} scales x {p.get('base')} ch, unshuffle {p.get('unshuffle', 1)}, "
                f"norm {p.get('norm', 'batch')}")
    else:
        desc = arch
    # a run grown from other weights counts only its own patches: say of what size and from what
    tc = m.get("train_config") or {}
    seen = f"{m.get('patches_seen', '?')} patches" + (f" of {tc['patch']} px" if tc.get("patch") else "")
    if tc.get("init_from"):
        seen += f" after --init-from {Path(str(tc['init_from'])).name}"
    return f"{name} ({desc}; {seen})"
