"""Auto outside the default's window: the dose threshold against held-out counts.

    python benchmarks/dose_choice.py [--structures 4]

Outside the default's window model "auto" picks between the two white-contrast
envelope models, the envelope model and the high-dose model, by one rule: the
high-dose model from ``AUTO_HIGH_DOSE`` counts per pixel as the network sees
them (or where it bins a fine frame the envelope model would not). This scores
that rule against the model whose output better predicts counts held out of
the frame (binomial thinning, :func:`~napari_sbd.core.selection.held_out_log_likelihood`
summed over ``SPLITS`` splits, as auto's contrast choice does), at every
setting of benchmarks/envelope.py outside the default's window, on the
simulated validation frames (structure seeds 7500+; never the test images).
The rule's threshold was derived on the first structure's frames: the page
gives the losses on the other structures' frames too.

A picker's loss on a frame is the better model's PSNR minus the picked one's
(dB; 0 when it picks the better). Writes docs/dose-choice.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import DEFAULT_CACHE, header, write_page
from envelope import clean_sets, frames_at, scored, settings

from napari_sbd.core.inference import (
    AUTO_HIGH_DOSE,
    choose_bundled_model,
    estimate_dose,
    in_default_window,
    load_model,
)
from napari_sbd.core.selection import KEEP_FRACTION, SPLITS, held_out_log_likelihood

PAIR = ("envelope", "high-dose")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--structures", type=int, default=4,
                        help="validation structures (3 defoci each; the white frames are used)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    t_start = time.perf_counter()
    _, val = clean_sets(args.cache, 1, args.structures)
    first = val[0][0].split("_")[0]  # the structure the rule's threshold was derived on
    models = {name: load_model(name) for name in PAIR}
    rows = []
    for axis, dose, pixel in settings(quick=False):
        if in_default_window(dose, pixel):
            continue
        t0 = time.perf_counter()
        loss: dict[str, list[float]] = {"rule": [], "held-out": []}
        held_out_first = []
        scores: dict[str, list[float]] = {n: [] for n in PAIR}
        picks: dict[str, list[str]] = {"rule": [], "held-out": []}
        for name, clean, noisy in frames_at(val, dose, pixel, seed=2):
            psnr = {n: scored(clean, m.denoise(noisy, pixel_size_pm=pixel), dose)
                    for n, m in models.items()}
            ll = {n: sum(held_out_log_likelihood(m, noisy, pixel_size_pm=pixel, seed=s)
                         for s in range(SPLITS)) for n, m in models.items()}
            pick = {"rule": choose_bundled_model(estimate_dose(noisy), pixel, "white")[0],
                    "held-out": max(ll, key=lambda n: ll[n])}
            for p, chosen in pick.items():
                loss[p].append(max(psnr.values()) - psnr[chosen])
                picks[p].append(chosen)
            held_out_first.append(name.startswith(first))
            for n in PAIR:
                scores[n].append(psnr[n])
        rows.append({"axis": axis, "dose": dose, "pixel": pixel, "loss": loss, "picks": picks,
                     "scores": scores, "first": np.array(held_out_first)})
        print(f"{axis} {dose:g} counts/pixel {pixel:g} pm: " + ", ".join(
            f"{p} loss {np.mean(v):.2f}" for p, v in loss.items())
            + f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    n_frames = len(rows[0]["first"])
    lines = [
        *header("Auto outside the default's window: dose threshold against held-out counts",
                [f"--structures {args.structures}"], time.perf_counter() - t_start),
        (f"Frames: the {n_frames} white-contrast validation frames of {args.structures} simulated "
         "structures (seeds 7500+, never the test images), resampled and scaled to each setting of "
         "benchmarks/envelope.py outside the default's window, one Poisson draw each. Both "
         "envelope models denoise every frame; a picker's loss is the better model's PSNR minus "
         "the picked one's (dB, mean over frames; in brackets: frames where it picked the worse)."),
        "",
        (f"- rule: `choose_bundled_model` on the frame's estimated dose (the high-dose model from "
         f"{AUTO_HIGH_DOSE:g} counts per pixel as the network sees them; derived on the frames of "
         f"structure {first})"),
        (f"- held-out: the model whose output better predicts held-out counts ({KEEP_FRACTION:.0%} "
         f"denoised, the rest scored by their Poisson likelihood, summed over {SPLITS} splits)"),
        "",
        ("| setting | envelope (dB) | high-dose (dB) | rule: loss (worse) | held-out: loss (worse) "
         "| rule, other structures | held-out, other structures |"),
        "|---|---|---|---|---|---|---|",
    ]
    totals: dict[str, list[float]] = {"rule": [], "held-out": []}
    others: dict[str, list[float]] = {"rule": [], "held-out": []}
    for r in rows:
        cells = [f"{np.mean(r['scores'][n]):.2f}" for n in PAIR]
        rest = ~r["first"]
        for p in ("rule", "held-out"):
            v = np.array(r["loss"][p])
            cells.insert(len(cells), f"{v.mean():.2f} ({int((v > 0).sum())} of {v.size})")
            totals[p].extend(v)
        for p in ("rule", "held-out"):
            v = np.array(r["loss"][p])[rest]
            cells.append(f"{v.mean():.2f}")
            others[p].extend(v)
        setting = (f"{r['dose']:g} counts/pixel, 6.1 pm" if r["axis"] == "dose"
                   else f"0.45 counts/pixel, {r['pixel']:g} pm")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    lines.append("| all | | | " + " | ".join(
        f"{np.mean(totals[p]):.2f} ({int((np.array(totals[p]) > 0).sum())} of {len(totals[p])})"
        for p in ("rule", "held-out")) + " | " + " | ".join(
        f"{np.mean(others[p]):.2f}" for p in ("rule", "held-out")) + " |")
    write_page("dose-choice.md", lines)


if __name__ == "__main__":
    main()
