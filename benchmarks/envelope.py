"""Dose and pixel-size envelope: PSNR against the dose and against the pixel size (issue 21).

Test frames (never trained or tuned on): the papers' four reference images and
held-out simulated white-contrast frames (structure seeds 7000+), each
resampled (bilinear) to the pixel size of the setting and scaled so that its
vacuum reads the dose of the setting, one Poisson draw per frame and setting.
Every output is divided back to 0.45 counts/pixel before scoring, so that PSNR
(papers' convention, data range 1) compares settings on one scale.

Beside each network: b x b binning + VST + BM3D with its bin factor and sigma
tuned for each setting on simulated validation frames (structure seeds 7500+),
never on the test frames.

Usage::

    python benchmarks/envelope.py [--model default --model envelope --model RUN/best.pt] [--quick]

With the bundled default and the bundled envelope model both in the run, it
also scores those two on the validation frames and prints where the default
wins: the windows model "auto" uses (``AUTO_DEFAULT_DOSE``,
``AUTO_DEFAULT_PIXEL_PM`` in napari_sbd.core.inference), derived on
validation frames, never on the test images. With the bundled high-dose model
too, the dose from which it beats the envelope model (``AUTO_HIGH_DOSE``), the
same way. And for every model with a pixel-size range, on validation frames of 4
structures: PSNR of each integer binning a fine frame allows beside the one the
model's card picks (``bin_to_pm``, ``HIGH_DOSE_BIN_TO_PM``, below ``bin_below_dose``,
``HIGH_DOSE_BIN_BELOW_DOSE``: the dose from which the least binning wins).

Writes docs/envelope.md and docs/images/envelope.png (with --out elsewhere: the page
there and its plot beside it, as OUT.png).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
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
    resample,
    simulated_set,
)

from napari_sbd.core.baselines import binned_vst_bm3d
from napari_sbd.core.inference import (
    AUTO_DEFAULT_DOSE,
    AUTO_DEFAULT_PIXEL_PM,
    AUTO_HIGH_DOSE,
    BLENDS,
    BUNDLED,
    HIGH_DOSE_BIN_BELOW_DOSE,
    HIGH_DOSE_BIN_TO_PM,
    Blend,
    bin_counts,
    blend_installed,
    blend_text,
    bundled_model_path,
    estimate_dose,
    load_blend,
    load_model,
    network_once,
    unbin,
)
from napari_sbd.core.metrics import psnr
from napari_sbd.core.noise import poisson_noise
from napari_sbd.core.selection import auto_model

NOMINAL_DOSE = 0.45
NOMINAL_PIXEL = 6.1
DOSES = [0.1, 0.15, 0.3, 0.45, 0.6, 0.9, 1.35, 2.0, 4.0]
PIXELS = [4.0, 4.88, 6.1, 8.0, 10.0, 12.0]
BINS_AT_6PM = [4, 6, 8, 10, 12, 16, 20]  # bin factors at 6.1 pm, scaled with the pixel size
SIGMAS = [0.8, 1.0, 1.2]
AUTO_PAIR = ("bundled default", "bundled envelope")  # auto's windows: where the first wins
HIGH_PAIR = ("bundled high-dose", "bundled envelope")  # auto's threshold: from where the first wins
BIN_PIXELS = [2.5, 3.4, 4.0, 4.88, 5.2]  # fine frames: which binning serves each model best
BIN_DOSES = [0.15, 0.45, 1.35, 4.0]


def settings(quick: bool) -> list[tuple[str, float, float]]:
    """(axis, dose, pixel size) of every setting; the nominal point once per axis."""
    doses = [0.15, 0.45, 1.35, 4.0] if quick else DOSES
    pixels = [4.88, 6.1, 10.0] if quick else PIXELS
    return ([("dose", d, NOMINAL_PIXEL) for d in doses]
            + [("pixel", NOMINAL_DOSE, p) for p in pixels])


def clean_sets(cache: Path, n_test: int, n_val: int) -> tuple[list, list]:
    """(test, validation) lists of (name, clean image at 0.45 counts/pixel, its pixel size)."""
    test = [(f"ref{i}", tifffile.imread(f).astype(np.float32), 4.88)
            for i, f in enumerate(sorted(REFERENCE.glob("*.tif")))]
    if not test:
        raise SystemExit(f"no reference images in {REFERENCE}")
    for r in simulated_set("test", TEST_SEED, n_test, TEST_DEFOCI, cache):
        if r["contrast"] == "white":
            img = tifffile.imread(r["path"]).astype(np.float32)
            test.append((f"sim:{r['file']}", img * np.float32(NOMINAL_DOSE / float(r["dose"])),
                         float(r["pixel_size_pm"])))
    val = []
    for r in simulated_set("val", VAL_SEED, n_val, VAL_DEFOCI, cache):
        if r["contrast"] == "white":
            img = tifffile.imread(r["path"]).astype(np.float32)
            val.append((r["file"], img * np.float32(NOMINAL_DOSE / float(r["dose"])),
                        float(r["pixel_size_pm"])))
    return test, val


def frames_at(clean_set: list, dose: float, pixel: float, seed: int) -> list[tuple]:
    """(name, clean at 0.45, noisy at the setting) for every image of a set."""
    out = []
    for j, (name, clean, px) in enumerate(clean_set):
        c = resample(clean, px, pixel)
        noisy = poisson_noise(c * np.float32(dose / NOMINAL_DOSE),
                              rng=np.random.default_rng([seed, j, int(dose * 1000), int(pixel * 100)]))
        out.append((name, c, noisy))
    return out


def scored(clean: np.ndarray, estimate: np.ndarray, dose: float) -> float:
    """PSNR at the nominal dose: the estimate divided back by dose / 0.45."""
    return psnr(clean, estimate * np.float32(NOMINAL_DOSE / dose))


def tuned_bm3d(val_frames: list, dose: float, pixel: float) -> tuple[int, float]:
    """Bin factor and sigma with the best mean PSNR on the validation frames."""
    grid = sorted({(max(1, round(b * NOMINAL_PIXEL / pixel)), s) for b in BINS_AT_6PM
                   for s in SIGMAS})
    best, best_score = grid[0], -np.inf
    for b, s in grid:
        sc = np.mean([scored(c, binned_vst_bm3d(n, b, s), dose) for _, c, n in val_frames])
        if sc > best_score:
            best, best_score = (b, s), sc
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[],
                        help="bundled model names or checkpoints, side by side in one run "
                        "(default: the bundled white-contrast models)")
    parser.add_argument("--quick", action="store_true",
                        help="7 settings, fewer frames (a check, not the committed page)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DOCS / "envelope.md")
    args = parser.parse_args()
    t_start = time.perf_counter()
    test_set, val_wide = clean_sets(args.cache, 1 if args.quick else 2, 4)
    val_set = val_wide[:2]  # the first structure's: what auto's windows are derived on
    white = ([n for n in ("default", "envelope", "high-dose") if bundled_model_path(n).exists()]
             + [n for n in BLENDS if blend_installed(n)])
    loaded: dict = {}  # bundled models by name, once each: the blends are built from them
    models = [(p, load_blend(p, loaded=loaded) if p in BLENDS
               else loaded.setdefault(p, load_model(p)) if p in BUNDLED else load_model(p))
              for p in (args.model or white)]
    names = [f"bundled {p}" if p in BUNDLED or p in BLENDS
             else f"{Path(p).parent.name}/{Path(p).name}" for p, _ in models]
    # model auto, as the tools run it, when all three white-contrast bundled models are in
    # the run: the models it picks from by name (black too: auto may take it for a frame at
    # the default's point; the blends are built here when not in the run)
    auto_models = ({p: m for p, m in models if p in BUNDLED or p in BLENDS}
                   if all(f"bundled {n}" in names for n in ("default", "envelope", "high-dose"))
                   else {})
    for n in BLENDS if auto_models else ():
        if n not in auto_models and blend_installed(n):
            auto_models[n] = load_blend(n, loaded=auto_models)
    if auto_models and bundled_model_path("black").exists():
        auto_models["black"] = load_model("black", device="auto")
    results = []  # one dict per setting
    for axis, dose, pixel in settings(args.quick):
        t0 = time.perf_counter()
        val = frames_at(val_set, dose, pixel, seed=2)
        b, s = tuned_bm3d(val, dose, pixel)
        test = frames_at(test_set, dose, pixel, seed=1)
        row = {"axis": axis, "dose": dose, "pixel": pixel, "bm3d_params": (b, s)}
        for name, (_, model) in zip(names, models):
            if name in AUTO_PAIR + HIGH_PAIR:  # validation scores: what auto is derived from
                row[f"{name}_val"] = float(np.mean(
                    [scored(c, model.denoise(n, pixel_size_pm=pixel), dose) for _, c, n in val]))
        for key, sel in (("ref", lambda n: n.startswith("ref")), ("sim", lambda n: n.startswith("sim"))):
            fr = [f for f in test if sel(f[0])]
            if not fr:
                continue
            row[f"bm3d_{key}"] = float(np.mean([scored(c, binned_vst_bm3d(n, b, s), dose)
                                                for _, c, n in fr]))
            outputs = [{} for _ in fr]  # per frame, by id(model): a blend reuses its members'
            per_frame = {name: [scored(c, denoised(model, n, pixel, outputs[i]), dose)
                                for i, (_, c, n) in enumerate(fr)]
                         for name, (_, model) in zip(names, models)}
            for name, sc in per_frame.items():
                row[f"{name}_{key}"] = float(np.mean(sc))
            if auto_models:  # what auto takes for each frame, from its counts, and its score
                picks = [auto_pick(n, pixel, auto_models) for _, _, n in fr]
                row[f"auto_{key}"] = float(np.mean([
                    per_frame[f"bundled {p}"][i] if f"bundled {p}" in per_frame  # black: not a column
                    else scored(fr[i][1], denoised(auto_models[p], fr[i][2], pixel, outputs[i]),
                                dose)
                    for i, p in enumerate(picks)]))
                row["auto_picks"] = row.get("auto_picks", []) + picks
        results.append(row)
        print(f"{axis} dose {dose:g} px {pixel:g}: " + ", ".join(
            f"{k} {v:.2f}" for k, v in row.items() if isinstance(v, float) and k not in
            ("dose", "pixel")) + f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    names = with_auto(results, names)
    binning = binning_study(models, names, val_wide, args.quick)
    write_page(args, names, models, results, test_set, val_set, binning,
               time.perf_counter() - t_start)


def denoised(model, noisy: np.ndarray, pixel: float, cache: dict) -> np.ndarray:
    """``model.denoise(noisy, pixel_size_pm=pixel)``, each network once per frame (``cache``).

    A blend's output is its members' outputs averaged, as :class:`Blend` computes it.
    """
    return network_once(model, lambda m: m.denoise(noisy, pixel_size_pm=pixel), cache)


def binning_study(models: list, names: list[str], val_clean: list, quick: bool) -> list[dict]:
    """PSNR of every integer binning of fine frames that a model's range allows (validation).

    One row per (pixel size, dose): for each model trained over a pixel-size range, the
    score of each k with k x pixel inside the range (or the smallest k reaching it) and
    the k its card picks (:meth:`~napari_sbd.core.inference.Denoiser.binning_for`).
    """
    ranged = [(n, m) for n, (_, m) in zip(names, models) if m.pixel_size_range_pm is not None]
    if not ranged:
        return []
    rows = []
    for pixel, dose in itertools.product(BIN_PIXELS[-2:] if quick else BIN_PIXELS,
                                         BIN_DOSES[1:3] if quick else BIN_DOSES):
        t0 = time.perf_counter()
        frames = frames_at(val_clean, dose, pixel, seed=3)
        row: dict = {"pixel": pixel, "dose": dose, "frames": len(frames)}
        for name, model in ranged:
            lo, hi = model.pixel_size_range_pm
            need = max(1, int(np.ceil(lo / pixel - 1e-9)))
            ks = [k for k in range(need, int(hi / pixel) + 1) if k * pixel <= hi] or [need]
            row[name] = {"card": model.binning_for(pixel, dose), "need": need,
                         "preferred": model.binning_for(pixel), "scores": {k: float(np.mean(
                # the binned frame is inside the range: no pixel size, so no binning of its own
                [scored(c, unbin(model.denoise(bin_counts(n, k)), k, n.shape), dose)
                 for _, c, n in frames])) for k in ks}}
        rows.append(row)
        print(f"binning px {pixel:g} dose {dose:g}: " + "; ".join(
            f"{n} " + ", ".join(f"k{k} {v:.2f}" for k, v in row[n]["scores"].items())
            for n, _ in ranged) + f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return rows


def binning_lines(rows: list[dict]) -> list[str]:
    """The binning table and, per model, how often its card's k is the best one."""
    if not rows:
        return []
    ranged = [n for n in rows[0] if n not in ("pixel", "dose", "frames")]
    out = ["## Binning fine frames (validation frames)", "",
           (f"Each integer binning (k x k counts summed, output brought back to the frame's grid) "
           f"that keeps k x pixel size inside the model's range, on {rows[0]['frames']} validation frames "
           "(seeds 7500+, 4 structures); PSNR at 0.45 counts/pixel, dB. In bold: the k the "
           "model's card picks."), "",
           "| pixel (pm) | dose (counts/pixel) | " + " | ".join(ranged) + " |",
           "|---|---|" + "---|" * len(ranged)]
    for r in rows:
        cells = [", ".join((f"**k{k} {v:.2f}**" if k == r[n]["card"] else f"k{k} {v:.2f}")
                           for k, v in r[n]["scores"].items()) for n in ranged]
        out.append(f"| {r['pixel']:g} | {r['dose']:g} | " + " | ".join(cells) + " |")
    out.append("")
    for n in ranged:
        losses = [max(r[n]["scores"].values()) - r[n]["scores"].get(r[n]["card"], np.nan)
                  for r in rows]
        best = sum(loss <= 0 for loss in losses)
        out.append(f"- {n}: the card's binning is the best at {best} of {len(rows)} settings; "
                   f"mean loss against the best k {np.nanmean(losses):.2f} dB, "
                   f"worst {np.nanmax(losses):.2f} dB")
    a, b = HIGH_PAIR
    if a in ranged and b in ranged:
        diff = [r[a]["scores"][r[a]["card"]] - r[b]["scores"][r[b]["card"]] for r in rows
                if r[a]["card"] > r[b]["card"]]
        if diff:
            out.append(f"- where the high-dose model bins a frame and the envelope model would not "
                       f"(auto then takes the high-dose model), high-dose minus envelope, each "
                       f"at its card's k: {min(diff):+.2f} to {max(diff):+.2f} dB over "
                       f"{len(diff)} settings (the high-dose card's target in the code at this "
                       f"run: {HIGH_DOSE_BIN_TO_PM:g} pm)")
    if a in ranged:
        out += bin_below_dose_lines(rows, a)
    return out


def bin_below_dose_lines(rows: list[dict], name: str) -> list[str]:
    """From which dose a model's preferred binning (``bin_to_pm``) loses to the least k.

    Per pixel size where the two differ, the log-linear crossing on the dose axis of
    the preferred k's PSNR minus the least k's; their geometric mean is the derived
    ``bin_below_dose``.
    """
    cross = []
    for pixel in sorted({r["pixel"] for r in rows}):
        rs = sorted((r for r in rows if r["pixel"] == pixel), key=lambda r: r["dose"])
        e = rs[0][name]
        if e["preferred"] == e["need"] or len(rs) < 2:
            continue
        x = crossing_from([r["dose"] for r in rs],
                          [r[name]["scores"][r[name]["need"]] - r[name]["scores"][e["preferred"]]
                           for r in rs])
        cross.append((pixel, e["preferred"], e["need"], x))
    if not cross:
        return []
    found = [x for *_, x in cross if x is not None]
    return [f"- {name}: dose from which the least binning the range needs beats the card's "
            "preferred one (log-linear crossing, counts/pixel of the frame): " + ", ".join(
                f"{p:g} pm k{kp} vs k{kn} " + ("never" if x is None else f"{x:.2f}")
                for p, kp, kn, x in cross)
            + (f"; geometric mean {np.exp(np.mean(np.log(found))):.2f}" if found else "")
            + f" (the card's bin_below_dose at this run: {HIGH_DOSE_BIN_BELOW_DOSE:g})"]


def auto_pick(noisy: np.ndarray, pixel: float, models: dict) -> str:
    """The bundled model auto takes for one frame: from its counts, as the tools do."""
    return auto_model(noisy, pixel, estimate_dose(noisy), models=models)[0]


def with_auto(results: list[dict], names: list[str]) -> list[str]:
    """Name auto's column and word its picks per setting, when it ran (see ``auto_pick``)."""
    if not all("auto_ref" in r for r in results):
        return names
    for r in results:
        counts = {p: r["auto_picks"].count(p) for p in dict.fromkeys(r["auto_picks"])}
        r["auto_pick"] = (next(iter(counts)) if len(counts) == 1 else
                          ", ".join(f"{p} {k}" for p, k in counts.items()))
    return [*names, "auto"]


def write_page(args, names, models, results, test_set, val_set, binning, elapsed) -> None:
    """The markdown page, the plot, and the verdicts computed from the rows."""
    n_ref = sum(n.startswith("ref") for n, _, _ in test_set)
    n_sim = len(test_set) - n_ref
    lines = header("Dose and pixel-size envelope", sys.argv[1:], elapsed) + [
        (f"Test frames: the {n_ref} reference images (4.88 pm) and {n_sim} held-out simulated "
        f"white-contrast frames (seeds {TEST_SEED}+, 6.1 pm), resampled to each pixel size and "
        "scaled to each vacuum dose, one Poisson draw each; outputs divided back to 0.45 "
        "counts/pixel, PSNR in the papers' convention (dB). Binned BM3D: bin factor and sigma "
        f"tuned per setting on {len(val_set)} validation frames (seeds {VAL_SEED}+)."),
        "",
    ]
    for m_name, (p, model) in zip(names, models):
        if isinstance(model, Blend):
            lines.append(f"- {m_name}: " + (blend_text(p) if p in BLENDS else model.name)
                         + ", their outputs averaged (each member splitting or binning frames "
                         "as it does alone)")
            continue
        dr, pr = model.dose_range, model.pixel_size_range_pm
        lines.append(f"- {m_name}: trained at "
                     + (f"{dr[0]:g}-{dr[1]:g}" if dr else f"{model.dose:g}") + " counts/pixel, "
                     + (f"{pr[0]:g}-{pr[1]:g}" if pr else f"{model.metadata.get('pixel_size_pm')}")
                     + " pm/pixel (frames finer than a model's range are binned into it"
                     + (f"; its card bins frames finer than {model.card.bin_to_pm:g} pm up to it, "
                        "inside the range" if pr and model.card.bin_to_pm else "")
                     + (f", while they hold under {model.card.bin_below_dose:g} counts/pixel"
                        if pr and model.card.bin_to_pm and model.card.bin_below_dose else "") + ")")
    if "auto" in names:
        lines.append("- auto: what model auto takes, frame by frame, from the frame's counts "
                     "as the tools do (its picks in brackets, with the number of frames where "
                     "they differ)")
    lines.append("")
    for axis, title in (("dose", "PSNR against the vacuum dose at 6.1 pm/pixel"),
                        ("pixel", "PSNR against the pixel size at 0.45 counts/pixel")):
        rows = [r for r in results if r["axis"] == axis]
        col = "dose (counts/pixel)" if axis == "dose" else "pixel size (pm)"
        lines += [f"## {title}", "",
                  f"| {col} | binned BM3D (b, sigma) | " + " | ".join(
                      f"{n} ref / sim" for n in names) + " | BM3D ref / sim |",
                  "|---|---|" + "---|" * (len(names) + 1)]
        for r in rows:
            x = r["dose"] if axis == "dose" else r["pixel"]
            b, s = r["bm3d_params"]
            cells = [f"{r.get(f'{n}_ref', np.nan):.2f} / {r.get(f'{n}_sim', np.nan):.2f}"
                     + (f" ({r['auto_pick']})" if n == "auto" else "") for n in names]
            lines.append(f"| {x:g} | {b}, {s:g} | " + " | ".join(cells)
                         + f" | {r.get('bm3d_ref', np.nan):.2f} / {r.get('bm3d_sim', np.nan):.2f} |")
        lines.append("")
    lines += ["## Verdicts (computed from the rows above)", ""]
    for n in names:
        behind = [f"{label(r)} ({r[f'{n}_ref'] - r['bm3d_ref']:+.2f} dB)" for r in results
                  if r[f"{n}_ref"] <= r["bm3d_ref"]]
        dose_rows = [r for r in results if r["axis"] == "dose"]
        rising = all(b[f"{n}_ref"] > a[f"{n}_ref"] for a, b in itertools.pairwise(dose_rows))
        lines.append(
            f"- {n}: ahead of tuned binned BM3D on the reference images at "
            f"{len(results) - len(behind)} of {len(results)} settings"
            + (f"; behind at {', '.join(behind)}" if behind else "")
            + f"; PSNR {'rises' if rising else 'does NOT rise'} with the dose at every step.")
    lines.append("")
    if all(n in names for n in AUTO_PAIR):
        lines += auto_windows(results) + [""]
    if all(n in names for n in HIGH_PAIR):
        lines += high_dose_threshold(results) + [""]
    if binning:
        lines += binning_lines(binning) + [""]
    # the committed page's plot goes to docs/images; a page written elsewhere (--out) keeps its
    # plot beside it, and the committed one is left alone
    png = (IMAGES / "envelope.png" if args.out.resolve() == (DOCS / "envelope.md").resolve()
           else args.out.with_suffix(".png"))
    plot(results, names, png)
    rel = "images/envelope.png" if png.parent == IMAGES else png.name
    lines += [f"![PSNR against dose and pixel size]({rel})", ""]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


def crossing_window(xs: list[float], diff: list[float], x0: float) -> tuple[float, float] | None:
    """The interval around ``x0`` where ``diff`` > 0, its ends interpolated in log x.

    ``xs`` ascending; ``diff`` measured at them (``x0`` among them). None when
    ``diff`` is not positive at ``x0``; an end with no sign change beyond the
    last measured setting is that setting.
    """
    i0 = xs.index(x0)
    if diff[i0] <= 0:
        return None
    ends = []
    for step in (-1, 1):
        i = i0
        while 0 <= i + step < len(xs) and diff[i + step] > 0:
            i += step
        j = i + step
        if not 0 <= j < len(xs):
            ends.append(xs[i])
            continue
        t = diff[i] / (diff[i] - diff[j])  # linear in log x between the two settings
        ends.append(float(np.exp(np.log(xs[i]) + t * (np.log(xs[j]) - np.log(xs[i])))))
    return ends[0], ends[1]


def auto_windows(results: list[dict]) -> list[str]:
    """Where the bundled default beats what auto takes outside its window, on validation frames.

    Outside the window auto takes the better envelope model by held-out counts (within
    0.03 dB of the better one on validation frames, docs/dose-choice.md): the default is
    compared with the better of the envelope and the high-dose model where both ran.
    """
    a, b = AUTO_PAIR
    rivals = [b] + ([HIGH_PAIR[0]] if all(f"{HIGH_PAIR[0]}_val" in r for r in results) else [])
    rival = " and ".join(n.removeprefix("bundled ") for n in rivals)
    out = ["## Where model auto takes the default (validation frames)", ""]
    cells = []
    for axis, x0, unit, now in (("dose", NOMINAL_DOSE, "counts/pixel", AUTO_DEFAULT_DOSE),
                                ("pixel", NOMINAL_PIXEL, "pm", AUTO_DEFAULT_PIXEL_PM)):
        rows = [r for r in results if r["axis"] == axis]
        xs = [r[axis] for r in rows]
        diff = [r[f"{a}_val"] - max(r[f"{n}_val"] for n in rivals) for r in rows]
        out.append(f"- {axis}: default minus the better of {rival} on the validation frames: "
                   + ", ".join(f"{x:g} {d:+.2f} dB" for x, d in zip(xs, diff)))
        win = crossing_window(xs, diff, x0)
        cells.append(f"{axis}: " + ("the envelope model is as good everywhere" if win is None
                                    else f"{win[0]:.2f}-{win[1]:.2f} {unit}")
                     + f" (in the code at this run: {now[0]:g}-{now[1]:g})")
    out += ["", "Derived windows (log-linear crossings between the measured settings): "
            + "; ".join(cells) + "."]
    return out


def crossing_from(xs: list[float], diff: list[float]) -> float | None:
    """The lowest x from which ``diff`` stays > 0 up to the last setting, interpolated in log x.

    None when ``diff`` is not positive at the last setting; the first setting when it is
    positive everywhere.
    """
    i = len(xs) - 1
    if diff[i] <= 0:
        return None
    while i > 0 and diff[i - 1] > 0:
        i -= 1
    if i == 0:
        return xs[0]
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(np.exp(np.log(xs[i - 1]) + t * (np.log(xs[i]) - np.log(xs[i - 1]))))


def high_dose_threshold(results: list[dict]) -> list[str]:
    """From which dose (at 6.1 pm) the high-dose model beats the envelope model, on validation."""
    a, b = HIGH_PAIR
    out = ["## Where model auto takes the high-dose model (validation frames)", ""]
    for axis in ("dose", "pixel"):
        rows = [r for r in results if r["axis"] == axis]
        out.append(f"- {axis}: high-dose minus envelope on the validation frames: " + ", ".join(
            f"{r[axis]:g} {r[f'{a}_val'] - r[f'{b}_val']:+.2f} dB" for r in rows))
    rows = [r for r in results if r["axis"] == "dose"]
    x = crossing_from([r["dose"] for r in rows], [r[f"{a}_val"] - r[f"{b}_val"] for r in rows])
    out += ["", "Derived threshold (log-linear crossing on the dose axis, counts per pixel the "
            "network sees; a finer frame binned into the envelope's range counts its binned "
            "pixels): " + ("none, the envelope model is as good at every dose" if x is None
                          else f"{x:.2f} counts/pixel")
            + f" (in the code at this run: {AUTO_HIGH_DOSE:g})."]
    return out


def label(r: dict) -> str:
    """'dose 0.9' or '8 pm': the setting's point on its axis."""
    return f"dose {r['dose']:g}" if r["axis"] == "dose" else f"{r['pixel']:g} pm"


def plot(results: list[dict], names: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, axis, xlabel in ((axes[0], "dose", "vacuum dose (counts/pixel/frame), 6.1 pm"),
                             (axes[1], "pixel", "pixel size (pm), 0.45 counts/pixel")):
        rows = [r for r in results if r["axis"] == axis]
        x = [r["dose"] if axis == "dose" else r["pixel"] for r in rows]
        ax.plot(x, [r["bm3d_ref"] for r in rows], "k--o", label="binned BM3D (tuned per setting)")
        for n in names:  # auto: a broad pale band under the models it picks from
            style = (dict(color="0.6", lw=7, alpha=0.35, zorder=0) if n == "auto"
                     else dict(marker="o"))
            ax.plot(x, [r[f"{n}_ref"] for r in rows], label=n, **style)
        if axis == "dose":
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("PSNR at 0.45 counts/pixel (dB), reference images")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
