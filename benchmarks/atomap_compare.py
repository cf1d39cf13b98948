"""Column finding against the field's tool, Atomap, in one run (issue 19, item 5).

    pip install atomap          # GPL: a benchmark dependency only, never imported by napari-sbd
    python benchmarks/atomap_compare.py [--quick] [--out docs/column-finding.md]

Synthetic images with known column positions over column spacing (1.5-4 A),
pixel size (5-40 pm), noise (Poisson at a high and a low dose) and contrast:
STEM-like (bright Gaussian columns) and HRTEM-like (dark columns with a bright
halo, on a background). Each is given to

* ``napari_sbd.detect_columns`` with its defaults and nothing else but the
  pixel size (it reads the spacing, polarity and thresholds from the image);
* Atomap (``get_atom_positions`` with its separation-based peak finding, then
  centre-of-mass and 2-D Gaussian refinement, as its documentation does),
  given what it needs: the true separation (0.7 x the spacing, in pixels) and,
  for dark columns, the inverted image. That is a favour: our detector gets
  neither.

Scores: precision, recall and F1 of one-to-one matches within a third of the
spacing (at most 0.5 A), the median position error of the matched columns in
pm, and the time per image. Columns within 2 A of the edge are left out of
both (found or true). The numbers go to docs/column-finding.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

import numpy as np
from _common import DOCS
from scipy.optimize import linear_sum_assignment

from napari_sbd.core.columns import LatticeNotFound, detect_columns
from napari_sbd.core.noise import poisson_noise

N_COLUMNS = 8  # per side of the lattice


def _lattice(spacing_a: float, pixel_pm: float, rng: np.random.Generator):
    """(true row/col centres in pixels, image shape) of a strained hexagonal lattice."""
    d = spacing_a * 100 / pixel_pm  # pixels
    # hexagonal (a close-packed projection): rows d*sqrt(3)/2 apart, every other shifted by d/2
    rows = np.arange(N_COLUMNS) * d * np.sqrt(3) / 2
    pts = np.array([(r, c * d + (i % 2) * d / 2) for i, r in enumerate(rows) for c in range(N_COLUMNS)])
    margin = 1.5 * d
    pts += margin + rng.uniform(-0.05, 0.05, pts.shape) * d  # small strain: not a perfect lattice
    return pts, (int(np.ceil(pts[:, 0].max() + margin)), int(np.ceil(pts[:, 1].max() + margin)))


def _render(pts, shape, d: float, kind: str, dose: float):
    """(expected counts, d counts / d row of each column, d counts / d col of each column)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    sigma = 0.12 * d if kind == "stem" else 0.15 * d  # column width scales with resolution
    img = np.zeros(shape)
    grads = []
    for r, c in pts:
        dy, dx = yy - r, xx - c
        r2 = dy**2 + dx**2
        g = np.exp(-r2 / (2 * sigma**2))
        if kind == "stem":
            img += g
            radial = g / sigma**2  # d g / d centre = g (p - c) / s^2
        else:  # HRTEM-like: a dark column with a bright halo (a difference of Gaussians)
            halo = np.exp(-r2 / (2 * (2 * sigma) ** 2))
            img += -g + 0.35 * halo
            radial = 0.6 * (-g / sigma**2 + 0.35 * halo / (4 * sigma**2))
        grads.append((radial * dy, radial * dx))
    # STEM: peaks at about 1 on a thin 0.05 floor; HRTEM: dark columns on a bright background
    clean = np.clip(0.05 + img if kind == "stem" else 1.0 + 0.6 * img, 0, None) * dose
    return clean, [(gr * dose, gc * dose) for gr, gc in grads]


def synthetic(spacing_a: float, pixel_pm: float, kind: str, dose: float, seed: int):
    """(noisy image, true row/col centres in pixels) of a hexagonal lattice of columns."""
    rng = np.random.default_rng(seed)
    pts, shape = _lattice(spacing_a, pixel_pm, rng)
    clean, _ = _render(pts, shape, spacing_a * 100 / pixel_pm, kind, dose)
    return poisson_noise(clean, rng=rng), pts


def position_bound(spacing_a: float, pixel_pm: float, kind: str, dose: float, seed: int) -> float:
    """Cramer-Rao bound on the median position error (pm) of any unbiased estimator.

    Poisson counts with mean mu: the Fisher information of a column's row is
    sum (d mu / d row)^2 / mu over the pixels (the same for its column),
    with everything else (widths, heights, the other columns) known, so the
    bound is a floor no method reaches. An error with standard deviation s
    on each axis has a median length of 1.177 s. Median over the columns.
    """
    pts, shape = _lattice(spacing_a, pixel_pm, np.random.default_rng(seed))
    clean, grads = _render(pts, shape, spacing_a * 100 / pixel_pm, kind, dose)
    mu = np.maximum(clean, 1e-9)
    var = [(1 / (gr**2 / mu).sum() + 1 / (gc**2 / mu).sum()) / 2 for gr, gc in grads]
    return float(np.median(1.1774 * np.sqrt(var)) * pixel_pm)


def score(truth: np.ndarray, found: np.ndarray, match_px: float, shape, border_px: float):
    inside = lambda p: (p.min(axis=1) >= border_px) & (p[:, 0] <= shape[0] - 1 - border_px) & (  # noqa: E731
        p[:, 1] <= shape[1] - 1 - border_px)
    a, b = truth[inside(truth)], found[inside(found)] if len(found) else np.zeros((0, 2))
    if not len(a) or not len(b):
        return 0.0, 0.0, 0.0, float("nan")
    dist = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    ri, ci = linear_sum_assignment(np.where(dist <= match_px, dist, 1e6))
    ok = dist[ri, ci] <= match_px
    m = int(ok.sum())
    p, r = m / len(b), m / len(a)
    f1 = 2 * p * r / (p + r) if m else 0.0
    return p, r, f1, float(np.median(dist[ri, ci][ok])) if m else float("nan")


def ours(img: np.ndarray, pixel_pm: float) -> np.ndarray:
    try:
        return detect_columns(img, pixel_pm).centres
    except LatticeNotFound:
        return np.zeros((0, 2))


def atomap(img: np.ndarray, separation_px: float, dark: bool) -> np.ndarray:
    import atomap.api as am
    import hyperspy.api as hs

    im = -img if dark else img
    im = im - im.min()
    pos = am.get_atom_positions(hs.signals.Signal2D(im), separation=max(2, int(separation_px)))
    if len(pos) == 0:
        return np.zeros((0, 2))
    sub = am.Sublattice(pos, image=im)
    sub.find_nearest_neighbors()
    sub.refine_atom_positions_using_center_of_mass(show_progressbar=False)
    sub.refine_atom_positions_using_2d_gaussian(show_progressbar=False)
    return np.stack([sub.y_position, sub.x_position], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few settings only")
    parser.add_argument("--out", default=str(DOCS / "column-finding.md"))
    args = parser.parse_args()
    import importlib.util

    if importlib.util.find_spec("atomap") is None:
        sys.exit("this benchmark compares with Atomap: pip install atomap (GPL; benchmark only)")
    spacings = [1.5, 4.0] if args.quick else [1.5, 2.5, 4.0]
    pixels = [10.0, 40.0] if args.quick else [5.0, 10.0, 20.0, 40.0]
    doses = {"high dose": 200.0, "low dose": 10.0}
    kinds = {"stem": "STEM-like (bright)", "hrtem": "HRTEM-like (dark, halo)"}
    t0 = time.perf_counter()
    rows = []
    seed = 0
    for kind in kinds:
        for spacing in spacings:
            for px in pixels:
                d_px = spacing * 100 / px
                if d_px < 3.5:
                    continue  # columns under 3.5 px apart are not resolved: no method can
                for dose_name, dose in doses.items():
                    seed += 1
                    img, truth = synthetic(spacing, px, kind, dose, seed)
                    match = min(d_px / 3, 50 / px)
                    border = 200 / px
                    res = {}
                    runs = {"ours": (ours, (img, px)),
                            "atomap": (atomap, (img, 0.7 * d_px, kind == "hrtem"))}
                    for name, (fn, fn_args) in runs.items():
                        t = time.perf_counter()
                        found = fn(*fn_args)
                        sec = time.perf_counter() - t
                        p, r, f1, err = score(truth, found, match, img.shape, border)
                        res[name] = (p, r, f1, err * px, sec)
                    res["bound"] = (position_bound(spacing, px, kind, dose, seed),)
                    rows.append((kind, spacing, px, dose_name, res))
                    print(kind, spacing, px, dose_name,
                          {k: tuple(round(v, 3) for v in x) for k, x in res.items()}, file=sys.stderr)
    elapsed = time.perf_counter() - t0

    def mean(name, i, sel=lambda r: True):
        v = [r[4][name][i] for r in rows if sel(r)]
        v = [x for x in v if np.isfinite(x)]
        return float(np.mean(v)) if v else float("nan")

    lines = [
        "# Column finding: napari-sbd against Atomap",
        "",
        (f"Command: `python benchmarks/atomap_compare.py {' '.join(sys.argv[1:])}` "
         f"({dt.date.today().isoformat()}, {elapsed / 60:.1f} min on this 2-core machine, shared "
         "with a training run: times are comparable within a row, not absolute)."),
        "",
        ("Synthetic hexagonal lattices of 8 x 8 columns (5% random strain) with known positions; "
         "Poisson noise at a high (200 counts at a column's peak) and a low dose (10). "
         "napari-sbd: `detect_columns(image, pixel_size_pm)`, defaults only. Atomap: "
         "`get_atom_positions` with the true separation (0.7 x spacing), the image inverted for "
         "dark columns, then centre-of-mass and 2-D Gaussian refinement. Match: one-to-one "
         "within a third of the spacing (at most 0.5 A); columns within 2 A of the edge left "
         "out. Error: median distance of matched columns to the truth, pm. Bound: the "
         "Cramer-Rao bound on that median for any unbiased estimator that knew everything but "
         "the column's position (Poisson counts; `position_bound`): no method can do better."),
        "",
        ("| image | spacing (A) | pixel (pm) | noise | ours P / R / F1 | ours error (pm) | "
         "Atomap P / R / F1 | Atomap error (pm) | bound (pm) | s/image ours / Atomap |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, spacing, px, dose_name, res in rows:
        o, a = res["ours"], res["atomap"]
        lines.append(
            f"| {kinds[kind]} | {spacing:g} | {px:g} | {dose_name} | {o[0]:.2f} / {o[1]:.2f} / "
            f"{o[2]:.2f} | {o[3]:.1f} | {a[0]:.2f} / {a[1]:.2f} / {a[2]:.2f} | {a[3]:.1f} | "
            f"{res['bound'][0]:.1f} | {o[4]:.2f} / {a[4]:.2f} |")
    good = lambda r: r[4]["atomap"][2] >= 0.9  # noqa: E731
    n_good = sum(1 for r in rows if good(r))
    ok_f1 = sum(1 for r in rows if good(r) and r[4]["ours"][2] >= 0.97)
    ok_err = sum(1 for r in rows if good(r) and r[4]["ours"][3] <= 5.0)
    bound_over = [r for r in rows if good(r) and r[4]["bound"][0] > 5.0]
    over = [r for r in rows if good(r) and r[4]["ours"][3] > 5.0]
    ratio = [r[4]["ours"][3] / r[4]["bound"][0] for r in rows if np.isfinite(r[4]["ours"][3])]
    lines += [
        "",
        (f"Mean F1 over the {len(rows)} settings: ours {mean('ours', 2):.3f}, Atomap "
         f"{mean('atomap', 2):.3f}. Median-error mean: ours {mean('ours', 3):.1f} pm, Atomap "
         f"{mean('atomap', 3):.1f} pm. Where Atomap reaches F1 >= 0.9 ({n_good} settings), ours "
         f"reaches F1 >= 0.97 in {ok_f1} and a median error <= 5 pm in {ok_err} "
         "(the issue's bar: all of them)."),
        "",
        (f"Position error against the bound: ours is {np.median(ratio):.2f}x the bound (median over "
         f"the settings, at most {max(ratio):.2f}x). Of the {n_good} settings, {len(bound_over)} have "
         "a bound above 5 pm: there no estimator can meet a 5 pm median error (a median over "
         "about 60 columns varies by some 10% from one noise draw to the next, so a method "
         "can land a little under the bound in one image). Ours is above 5 pm at: "
         + ("; ".join(f"{kinds[k]} {sp:g} A at {px:g} pm, {dn}: {r['ours'][3]:.1f} pm (bound "
                      f"{r['bound'][0]:.1f}, Atomap {r['atomap'][3]:.1f})"
                      for k, sp, px, dn, r in over) or "nowhere") + "."),
        "",
        "Where ours falls below F1 0.9 (and Atomap's F1 there): "
        + ("; ".join(f"{kinds[k]} {sp:g} A at {px:g} pm ({sp * 100 / px:.1f} px apart), {dn}: "
                     f"{r['ours'][2]:.2f} (Atomap {r['atomap'][2]:.2f})"
                     for k, sp, px, dn, r in rows if r["ours"][2] < 0.9) or "nowhere") + ".",
        "",
    ]
    text = "\n".join(lines)
    with open(args.out, "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
