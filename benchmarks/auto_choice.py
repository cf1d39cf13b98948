"""What model auto's held-out choice loses where the blends are among its candidates.

Where the default splits frames (more counts per pixel than its 0.45, at its
pixel sizes) auto chooses by held-out counts among the default, its
black-contrast sibling or the envelope models, and the blends of the default and
the high-dose model (``napari_sbd.core.selection.auto_candidates``). On the
white-contrast validation frames of benchmarks/envelope.py (simulated
structures, seeds 7500+, never the test images), scaled to each dose of its dose
axis at 6.1 pm where the blends are candidates, every candidate denoises every
frame; auto's loss is the best candidate's PSNR minus that of the one auto took
(``auto_model``, as the tools run it), beside the loss of always taking each
fixed candidate.

Usage::

    python benchmarks/auto_choice.py [--structures 4] [--quick]

Writes docs/auto-choice.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import DEFAULT_CACHE, header, write_page
from envelope import NOMINAL_PIXEL, clean_sets, denoised, frames_at, scored, settings

from napari_sbd.core.inference import estimate_dose
from napari_sbd.core.selection import auto_candidates, auto_model, blend_candidates, load_candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--structures", type=int, default=4,
                        help="validation structures (3 defoci each; the white frames are used)")
    parser.add_argument("--quick", action="store_true", help="two doses, two structures")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    t_start = time.perf_counter()
    _, val = clean_sets(args.cache, 1, 2 if args.quick else args.structures)
    doses = [d for axis, d, px in settings(quick=False)
             if axis == "dose" and px == NOMINAL_PIXEL and blend_candidates(d, px)]
    doses = doses[::2] if args.quick else doses
    loaded: dict = {}  # every bundled model once; the blends built from them
    rows = []
    for dose in doses:
        t0 = time.perf_counter()
        names: list[str] = []
        psnr: dict[str, list[float]] = {}
        picks: list[str] = []
        losses: list[float] = []
        for _, clean, noisy in frames_at(val, dose, NOMINAL_PIXEL, seed=2):
            est = estimate_dose(noisy)
            cands = load_candidates(auto_candidates(est, NOMINAL_PIXEL), "auto", loaded)
            cache: dict = {}
            score = {n: scored(clean, denoised(m, noisy, NOMINAL_PIXEL, cache), dose)
                     for n, m in cands.items()}
            pick = auto_model(noisy, NOMINAL_PIXEL, est, models=loaded)[0]
            if pick not in score:  # a model outside the candidates (too small a frame: rules)
                score[pick] = scored(clean, denoised(load_candidates([pick], "auto", loaded)[pick],
                                                     noisy, NOMINAL_PIXEL, cache), dose)
            names += [n for n in score if n not in names]
            for n, v in score.items():
                psnr.setdefault(n, []).append(v)
            picks.append(pick)
            losses.append(max(score.values()) - score[pick])
        rows.append({"dose": dose, "names": names, "psnr": psnr, "picks": picks,
                     "loss": np.array(losses)})
        print(f"dose {dose:g}: auto loss {np.mean(losses):.2f} dB, picks "
              + ", ".join(f"{p} {picks.count(p)}" for p in dict.fromkeys(picks))
              + f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    all_names = list(dict.fromkeys(n for r in rows for n in r["names"]))
    n_frames = len(rows[0]["picks"])
    lines = [
        *header("Auto's held-out choice where the blends are candidates",
                sys.argv[1:], time.perf_counter() - t_start),
        (f"Frames: the {n_frames} white-contrast validation frames of "
         f"{2 if args.quick else args.structures} simulated structures (seeds 7500+, never the "
         "test images) of benchmarks/envelope.py, at 6.1 pm and each dose of its dose axis "
         "where auto weighs the blends, one Poisson draw each. Every candidate of auto "
         "denoises every frame; PSNR at 0.45 counts/pixel (dB, mean over frames). Auto's loss: "
         "the best candidate's PSNR minus the picked one's (in brackets: frames where it did "
         "not pick the best). A fixed candidate's loss is the same against the best."),
        "",
        "| dose (counts/pixel) | " + " | ".join(all_names) + " | auto: loss (not best) | auto's picks |",
        "|---|" + "---|" * (len(all_names) + 2),
    ]
    fixed_loss: dict[str, list[float]] = {n: [] for n in all_names}
    for r in rows:
        best = np.max(np.array([r["psnr"][n] for n in r["names"]
                                if len(r["psnr"][n]) == n_frames]), axis=0)
        cells = []
        for n in all_names:
            v = r["psnr"].get(n)
            if v is None or len(v) != n_frames:
                cells.append("-")
                continue
            fixed_loss[n].extend(best - np.array(v))
            cells.append(f"{np.mean(v):.2f}")
        picks = ", ".join(f"{p} {r['picks'].count(p)}" for p in dict.fromkeys(r["picks"]))
        lines.append(f"| {r['dose']:g} | " + " | ".join(cells)
                     + f" | {r['loss'].mean():.2f} ({int((r['loss'] > 0).sum())} of {n_frames}) "
                     f"| {picks} |")
    everything = np.concatenate([r["loss"] for r in rows])
    lines += ["", (f"- auto: mean loss {everything.mean():.2f} dB over {everything.size} frames "
                   f"({int((everything > 0).sum())} not the best)")]
    for n, v in fixed_loss.items():
        if len(v) == everything.size:
            lines.append(f"- always {n}: mean loss {np.mean(v):.2f} dB")
    write_page("auto-choice.md", lines)


if __name__ == "__main__":
    main()
