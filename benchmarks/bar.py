"""The bar of issue 8: our networks against the best classical methods on the papers' images.

Test set: the four clean simulations of ../shared/data/reference (the papers'
own), resampled from 4.88 to 6.1 pm/pixel (x0.8, bilinear), three Poisson
draws each at their own counts (fixed seeds): 12 noisy frames. Never trained
or tuned on.

Classical methods (Gaussian blur; b x b binning + Anscombe + BM3D + exact
unbiased inverse + cubic upsampling) are tuned on simulated validation images
(benchmarks/_common.py: held-out structures), then applied to the test frames.

Usage::

    python benchmarks/bar.py [--model runs/x/best.pt --model other.pt] [--out docs/bar.md]

PSNR/SSIM in the papers' convention (counts, data range 1, no clipping).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import (
    DEFAULT_CACHE,
    DOCS,
    VAL_DEFOCI,
    VAL_SEED,
    header,
    noisy_frames,
    reference_frames,
    simulated_set,
    tune,
)

from napari_sbd.core.baselines import binned_vst_bm3d, gaussian_blur
from napari_sbd.core.inference import BUNDLED, load_model
from napari_sbd.core.metrics import psnr, ssim


def evaluate(name: str, fn, frames) -> dict:
    """Median, mean and std of PSNR, SSIM and time per frame of ``fn`` on ``frames``."""
    t0 = time.perf_counter()
    ests = [fn(f.noisy) for f in frames]
    per = (time.perf_counter() - t0) / len(frames)
    p = np.array([psnr(f.clean, e) for f, e in zip(frames, ests)])
    s = np.array([ssim(f.clean, e) for f, e in zip(frames, ests)])
    return {"method": name, "psnr_median": float(np.median(p)), "psnr_mean": float(p.mean()),
            "psnr_std": float(p.std()), "ssim_mean": float(s.mean()), "ssim_std": float(s.std()),
            "seconds_per_frame": per}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[],
                        help="checkpoint(s) to evaluate (default: the bundled model)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="simulated-set cache folder")
    parser.add_argument("--out", type=Path, default=DOCS / "bar.md", help="markdown report")
    parser.add_argument("--ensemble", action="store_true",
                        help="also score each model at 'best' quality (8 rotations and flips)")
    args = parser.parse_args()
    t_start = time.perf_counter()

    frames = reference_frames(3)
    val_rows = [r for r in simulated_set("val", VAL_SEED, 2, VAL_DEFOCI, args.cache)
                if r["contrast"] == "white"]
    tune_set = noisy_frames(val_rows[:6], seed=1)
    sigma, _ = tune(tune_set, gaussian_blur, [4.0, 5.0, 6.0, 7.0, 7.5, 8.0, 9.0, 10.0, 12.0])
    grid = [(b, s) for b in (8, 10, 12, 14, 16) for s in (0.8, 1.0, 1.2)]
    (b, s), _ = tune(tune_set, lambda n, g: binned_vst_bm3d(n, *g), grid)
    rows = [
        evaluate("raw", lambda n: n, frames),
        evaluate(f"Gaussian blur (sigma {sigma:g} px)", lambda n: gaussian_blur(n, sigma), frames),
        evaluate(f"{b}x{b} binning + VST + BM3D (sigma {s:g}) + cubic", lambda n: binned_vst_bm3d(n, b, s),
                 frames),
    ]
    best_classical = max(r["psnr_median"] for r in rows)
    for path in args.model or ["default"]:
        model = load_model(path, device="auto")
        model.denoise(frames[0].noisy[:256, :256])  # warm-up
        name = (f"bundled {path}" if path in BUNDLED
                else f"{Path(path).parent.name}/{Path(path).name}")
        variants = [("", model.denoise)]
        if args.ensemble:
            variants.append((", best quality (8-fold ensemble)",
                             lambda n, m=model: m.denoise(n, ensemble=True)))
        for suffix, fn in variants:
            r = evaluate(f"SBD {name}{suffix}", fn, frames)
            r["margin_db"] = r["psnr_median"] - best_classical
            r["meta"] = {k: model.metadata.get(k) for k in ("architecture", "params",
                                                            "validation_psnr", "patches_seen",
                                                            "epoch")}
            rows.append(r)

    lines = header("The bar: SBD against classical denoisers on the papers' test images", sys.argv[1:],
                   time.perf_counter() - t_start) + [
        ("Test set: the 4 reference simulations resampled to 6.1 pm/pixel (x0.8, bilinear), "
        "3 Poisson draws each (12 frames). Classical parameters tuned on "
        f"{len(tune_set)} simulated white-contrast validation images (structure seeds {VAL_SEED}+, "
        "never the test images).  "),
        "Bar: median PSNR >= 38 dB and >= 1.5 dB above the best classical method.",
        "",
        "| method | PSNR median (dB) | PSNR mean +- std | SSIM mean +- std | s/frame |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['psnr_median']:.2f} | {r['psnr_mean']:.2f} "
                     f"+- {r['psnr_std']:.2f} | {r['ssim_mean']:.3f} +- {r['ssim_std']:.3f} "
                     f"| {r['seconds_per_frame']:.2f} |")
    for r in rows[3:]:
        verdict = "meets" if r["psnr_median"] >= 38 and r["margin_db"] >= 1.5 else "does NOT meet"
        lines.append("")
        lines.append(f"{r['method']}: margin over the best classical method {r['margin_db']:+.2f} dB; "
                     f"{verdict} the bar. Model: `{json.dumps(r['meta'], default=str)}`")
    lines += [
        "",
        ("Anchors (not measured here): the papers' own networks scored 36.4 dB (4 scales, 32 "
        "channels), 38.05 dB (4 scales, 128 channels) and 42.87 dB (6 scales, 128 channels) on "
        "their simulated test set; the mean of 40 frames plus a Gaussian (40x the dose) scores "
        "40.6 dB on these images at 4.88 pm (../shared/notes/baselines.md)."),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
