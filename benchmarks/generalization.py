"""Generalization (ICLR Fig. 12/13; issue 6, item 2).

The bundled model's PSNR when the test data differ from its training data:

* pixel size: the papers' reference images resampled from their native
  4.88 pm to 4.9-8 pm/pixel (bilinear; the dose stays 0.45 counts/pixel, as on
  the detector). Training saw 6.1 pm/pixel, rescaled by 0.955-1.055;
* rotation: the same images at 6.1 pm rotated by 0-90 degrees, scored on the
  same centre crop for every angle (the largest valid at 45 degrees).
  Training saw rotations within +-45 degrees and flips;
* contrast class, particle size, defect type and defocus: the held-out
  simulated test set (structure seeds 7000+), grouped.

Gaussian blur (sigma tuned on simulated validation images) is scored
alongside as the reference line. Writes docs/generalization.md and
docs/images/generalization.png.

    python benchmarks/generalization.py [--quick] [--model default]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import tifffile
from _common import (
    DEFAULT_CACHE,
    DOCS,
    IMAGES,
    REFERENCE,
    TEST_DEFOCI,
    TEST_SEED,
    VAL_DEFOCI,
    VAL_SEED,
    header,
    model_label,
    noisy_frames,
    resample,
    simulated_set,
    tune,
)

from napari_sbd.core.baselines import gaussian_blur
from napari_sbd.core.inference import load_model
from napari_sbd.core.metrics import psnr
from napari_sbd.core.noise import poisson_noise

NATIVE_PM = 4.88
TRAIN_PM = 6.1
PIXEL_SIZES = [4.88, 5.2, 5.5, 5.8, 6.1, 6.4, 6.7, 7.0, 7.5, 8.0]
ANGLES = [0, 10, 20, 30, 45, 60, 75, 90]


def references() -> list[np.ndarray]:
    return [tifffile.imread(f).astype(np.float64) for f in sorted(REFERENCE.glob("*.tif"))]


def at_pixel_size(img: np.ndarray, pm: float) -> np.ndarray:
    return resample(img, NATIVE_PM, pm)


def rotated_crop(img: np.ndarray, angle: float, side: int) -> np.ndarray:
    from scipy import ndimage

    r = ndimage.rotate(img, angle, reshape=False, order=1, mode="nearest") if angle else img
    h, w = r.shape
    y0, x0 = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(r[y0:y0 + side, x0:x0 + side])


def scores(clean: np.ndarray, draws: int, seed: int, model, sigma: float) -> tuple[list, list]:
    ours, blur = [], []
    for k in range(draws):
        noisy = poisson_noise(clean, rng=np.random.default_rng([seed, k]))
        ours.append(psnr(clean, model.denoise(noisy)))
        blur.append(psnr(clean, gaussian_blur(noisy, sigma)))
    return ours, blur


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--quick", action="store_true", help="one noise draw, 3 simulated structures")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DOCS / "generalization.md")
    args = parser.parse_args()
    t_start = time.perf_counter()
    draws, n_test, n_val = (1, 3, 2) if args.quick else (3, 8, 4)
    model = load_model(args.model)
    val = noisy_frames([r for r in simulated_set("val", VAL_SEED, n_val, VAL_DEFOCI, args.cache)
                        if r["contrast"] == "white"][:6], seed=1)
    sigma, _ = tune(val, gaussian_blur, [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0])
    refs = references()

    px = {"ours": [], "blur": []}
    for pm in PIXEL_SIZES:
        o, b = [], []
        for i, img in enumerate(refs):
            oo, bb = scores(at_pixel_size(img, pm), draws, 100 * i + int(pm * 100), model, sigma)
            o += oo
            b += bb
        px["ours"].append(o)
        px["blur"].append(b)
        print(f"pixel size {pm} pm: ours {np.mean(o):.2f}, blur {np.mean(b):.2f}", file=sys.stderr)

    at61 = [at_pixel_size(img, TRAIN_PM) for img in refs]
    side = int(min(at61[0].shape) / np.sqrt(2)) - 4
    rot = {"ours": [], "blur": []}
    for a in ANGLES:
        o, b = [], []
        for i, img in enumerate(at61):
            oo, bb = scores(rotated_crop(img, a, side), draws, 1000 * i + a, model, sigma)
            o += oo
            b += bb
        rot["ours"].append(o)
        rot["blur"].append(b)
        print(f"rotation {a} deg: ours {np.mean(o):.2f}, blur {np.mean(b):.2f}", file=sys.stderr)

    sim = noisy_frames(simulated_set("test", TEST_SEED, n_test, TEST_DEFOCI, args.cache), seed=2)
    groups: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: {"ours": [], "blur": []})
    for f in sim:
        o = psnr(f.clean, model.denoise(f.noisy))
        b = psnr(f.clean, gaussian_blur(f.noisy, sigma))
        keys = [("contrast", f.info["contrast"]), ("defocus (nm)", f"{float(f.info['defocus_nm']):+g}")]
        if f.info["contrast"] == "white":  # the class the model was trained for
            keys += [("particle (white only)", f.info["particle"]), ("defect (white only)", f.info["defect"])]
        for k in keys:
            groups[k]["ours"].append(o)
            groups[k]["blur"].append(b)
    elapsed = time.perf_counter() - t_start

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, xs, d, xlabel, band in (
        (axes[0], PIXEL_SIZES, px, "test pixel size (pm)", (TRAIN_PM / 1.055, TRAIN_PM / 0.955)),
        (axes[1], ANGLES, rot, "test rotation (degrees)", (0, 45)),
    ):
        for key, lab, col in (("ours", "SBD (bundled model)", "tab:red"),
                              ("blur", f"Gaussian blur (sigma {sigma:g} px)", "tab:grey")):
            m = np.array([np.mean(v) for v in d[key]])
            s = np.array([np.std(v) for v in d[key]])
            ax.errorbar(xs, m, yerr=s, marker="o", ms=4, capsize=2, label=lab, color=col)
        ax.axvspan(*band, color="tab:green", alpha=0.12, label="training range")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("reference images, resampled", fontsize=9)
    axes[1].set_title(f"reference images at 6.1 pm, rotated ({side}x{side} centre crop)", fontsize=9)
    fig.tight_layout()
    fig.savefig(IMAGES / "generalization.png", dpi=90)
    plt.close(fig)

    def cell(v):
        return f"{np.mean(v):.2f} +- {np.std(v):.2f}"

    lines = header("Generalization: pixel size, rotation, contrast, particle, defect", sys.argv[1:], elapsed)
    lines += [
        (f"Model: {model_label(model)}, trained on white contrast at 6.1 pm/pixel (rescale 0.955-1.055, "
        f"rotations +-45 degrees, flips). Reference line: Gaussian blur, sigma {sigma:g} px tuned on "
        f"simulated validation images. {draws} Poisson draw(s) per image at 0.45 counts/pixel."),
        "",
        "![generalization](images/generalization.png)",
        "",
        "## Pixel size (the 4 reference images resampled from 4.88 pm)",
        "",
        "| pixel size (pm) | SBD PSNR (dB) | Gaussian blur PSNR (dB) |",
        "|---|---|---|",
        *[f"| {pm:g} | {cell(o)} | {cell(b)} |" for pm, o, b in zip(PIXEL_SIZES, px["ours"], px["blur"])],
        "",
        f"## Rotation (at 6.1 pm, {side}x{side} centre crop for every angle)",
        "",
        "| angle (degrees) | SBD PSNR (dB) | Gaussian blur PSNR (dB) |",
        "|---|---|---|",
        *[f"| {a} | {cell(o)} | {cell(b)} |" for a, o, b in zip(ANGLES, rot["ours"], rot["blur"])],
        "",
        f"## Held-out simulated set ({n_test} structures, seeds {TEST_SEED}+, defoci {TEST_DEFOCI} nm)",
        "",
        "| group | value | frames | SBD PSNR (dB) | Gaussian blur PSNR (dB) | SBD - blur (dB) |",
        "|---|---|---|---|---|---|",
        *[f"| {k} | {v} | {len(d['ours'])} | {cell(d['ours'])} | {cell(d['blur'])} | "
          f"{np.mean(d['ours']) - np.mean(d['blur']):+.2f} |" for (k, v), d in sorted(groups.items())],
        "",
        "## Reading",
        "",
    ]
    def gain(key):
        return np.mean(groups[key]["ours"]) - np.mean(groups[key]["blur"])

    i61 = PIXEL_SIZES.index(TRAIN_PM)
    o61 = np.mean(px["ours"][i61])
    worst_px = min(range(len(PIXEL_SIZES)), key=lambda i: np.mean(px["ours"][i]))
    worst_rot = min(range(len(ANGLES)), key=lambda i: np.mean(rot["ours"][i]))
    spread_rot = max(np.mean(v) for v in rot["ours"]) - min(np.mean(v) for v in rot["ours"])
    lines += [
        (f"- Pixel size: {o61:.2f} dB at the training 6.1 pm; the lowest, "
        f"{np.mean(px['ours'][worst_px]):.2f} dB, "
        f"at {PIXEL_SIZES[worst_px]:g} pm. The papers (ICLR Fig. 12) saw a network trained without "
        "rescaling collapse away from its training scale; ours is trained with +-5% rescaling, so "
        "the curve shows how far that carries."),
        (f"- Rotation: PSNR varies by {spread_rot:.2f} dB over 0-90 degrees (lowest at "
        f"{ANGLES[worst_rot]} degrees)."),
        "- Contrast: the model was trained on white contrast only; its margin over the blur is "
        + ", ".join(f"{c} {gain(('contrast', c)):+.2f} dB" for c in ("white", "intermediate", "black")
                    if ("contrast", c) in groups)
        + " (ICLR Fig. 13: the network trained on black contrast alone did not "
        "generalize either). Black-contrast data need black-contrast training images: the bundled "
        "`black` model is this network fine-tuned on them, and model auto picks it for dark "
        "columns (docs/denoising-quality.md).",
        "",
    ]
    text = "\n".join(lines)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
