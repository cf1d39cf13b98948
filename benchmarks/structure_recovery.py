"""Structure recovery and LLR distributions (journal paper Fig. 5 and 6; issue 6, item 3).

For held-out simulated structures (seeds never used for training) with surface
defects: the particle's true columns (A: its Pt atoms projected along the beam,
grouped) -> clean image -> Poisson draws -> the model -> the columns
``detect_columns`` finds with its defaults in each denoised image (B) ->
precision, recall, F1 and Jaccard for surface and bulk apart; each denoised
column is real (matched to A within 0.5 A) or spurious, and its LLR goes into
that distribution. The detector alone is scored the same way on the clean
images. Writes docs/structure-recovery.md and two PNGs.

    python benchmarks/structure_recovery.py [--model default] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

import numpy as np
from _common import DOCS, IMAGES

from napari_sbd.core.columns import detect_columns, recovery_metrics, structure_recovery
from napari_sbd.core.inference import load_model
from napari_sbd.core.likelihood import LLR_REAL, LLR_SPURIOUS, column_log_likelihood_ratios
from napari_sbd.core.noise import poisson_noise
from napari_sbd.simulate.imaging import ImagingParams, exit_wave, images_at_defoci
from napari_sbd.simulate.structures import StructureParams, build_structure

PX = 6.1
EDGE_A = 2.0  # the band along the frame's edge left out of the scores, found and true
MATCH_A = 0.5
NEAR_A = 3.0  # detections further than this from every clean column are phantoms, not the particle


def particle_columns(img: np.ndarray, support_row: int):
    """Columns detected in the whole frame, kept above the support (the particle's)."""
    cols = detect_columns(img, PX, exclude_border_a=EDGE_A)
    return cols.subset(cols.centres[:, 0] < support_row - 8)


def true_columns(atoms, info: dict, shape: tuple[int, int], element: int = 78) -> np.ndarray:
    """The particle's column centres in image pixels: Pt atoms projected along the beam.

    (``element``: another atomic number, e.g. 58 for the support's Ce columns.)

    Atoms of one column (tilted by a few degrees, so spread along it by up to
    about 1 A) are grouped by single linkage within 0.8 A, less than half the
    smallest distance between Pt columns; the image's rows run from the top of
    the cell down. Columns within 2 A of the frame's edge (where the detector
    does not look) are left out.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    pt = atoms.positions[atoms.numbers == element][:, :2]
    label = fcluster(linkage(pt, "single"), 0.8, "distance")
    xy = np.array([pt[label == g].mean(axis=0) for g in np.unique(label)])
    ly = info["cell_a"][1]
    rc = np.stack([(ly - xy[:, 1]) / (PX / 100), xy[:, 0] / (PX / 100)], axis=1)
    edge = EDGE_A / (PX / 100)
    inside = (rc.min(axis=1) >= edge) & (rc[:, 0] <= shape[0] - 1 - edge) & (rc[:, 1] <= shape[1] - 1 - edge)
    return rc[inside]


def _scores(a: np.ndarray, b: np.ndarray, sp, defocus: float) -> dict:
    """Surface and bulk precision, recall, F1, Jaccard of detections ``b`` against truth ``a``.

    Only detections within NEAR_A of a true column (the particle) are scored;
    phantoms further out are counted apart.
    """
    near = (np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1]).min(axis=0)
            * PX / 100 <= NEAR_A) if len(a) and len(b) else np.zeros(len(b), bool)
    rec = structure_recovery(a, b[near], MATCH_A, PX)
    return {"structure": sp.seed, "defect": sp.defect, "defocus": defocus, **{
        f"{part}_{m}": getattr(rec[part], m) for part in ("surface", "bulk")
        for m in ("precision", "recall", "f1", "jaccard")}}


def _best_quality_lines(rows: list[dict], rows_best: list[dict]) -> list[str]:
    """The same images denoised at quality "best" (8-fold ensemble), beside the fast ones."""
    def med(rs, key):
        v = np.array([r[key] for r in rs])
        return f"{np.median(v):.2f} [{np.percentile(v, 25):.2f}, {np.percentile(v, 75):.2f}]"

    lines = [
        (f"**Quality \"best\"** (the 8 rotations and flips averaged, 8x the time), the same "
         f"{len(rows_best)} noisy images, median [quartiles], fast beside best:"),
        "",
        "| metric | surface fast | surface best | bulk fast | bulk best |",
        "|---|---|---|---|---|",
    ]
    for m in ("precision", "recall", "f1", "jaccard"):
        lines.append(f"| {m} | {med(rows, 'surface_' + m)} | {med(rows_best, 'surface_' + m)} | "
                     f"{med(rows, 'bulk_' + m)} | {med(rows_best, 'bulk_' + m)} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--quick", action="store_true", help="3 structures x 2 defoci x 4 draws")
    parser.add_argument("--best-quality", action="store_true",
                        help="also score the 8-fold ensemble (quality 'best') on the same images")
    args = parser.parse_args()
    n_struct, defoci, draws = (3, [6.0, 8.0], 4) if args.quick else (10, [6.0, 7.0, 8.0, 9.0, 10.0], 5)
    t0 = time.perf_counter()
    model = load_model(args.model)
    ip = ImagingParams()
    defects = ["remove_column", "half_column", "single_atom", "none"]
    rows, clean_rows, llr_real, llr_fake, rows_best = [], [], [], [], []
    far_fake = 0  # spurious columns more than 3 A from any clean column: in the vacuum
    for k in range(n_struct):
        sp = StructureParams(seed=9000 + k, particle="2nm", thickness_nm=4.0, tilt_x_deg=3.0,
                             tilt_y_deg=-1.0, defect=defects[k % len(defects)])
        atoms, info = build_structure(sp)
        psi, s = exit_wave(atoms, ip)
        images = images_at_defoci(psi, s, defoci, ip)
        ly = info["cell_a"][1]
        support_row = int((ly - info["support_top_a"]) / (PX / 100))
        for d, clean in images.items():
            a = true_columns(atoms, info, clean.shape)
            rec_clean = structure_recovery(a, particle_columns(clean, support_row).centres, MATCH_A, PX)
            clean_rows.append({f"{part}_f1": rec_clean[part].f1 for part in ("surface", "bulk")})
            for j in range(draws):
                noisy = poisson_noise(clean, rng=np.random.default_rng([9000 + k, int(d * 10), j]))
                den = model.denoise(noisy)
                cols = particle_columns(den, support_row)
                b = cols.centres
                # surface/bulk metrics on the particle: detections within NEAR_A of a clean
                # column; phantoms further out (vacuum, frame edges) are counted apart below
                rows.append(_scores(a, b, sp, d))
                if args.best_quality:  # the same noisy image, denoised at quality "best"
                    rows_best.append(_scores(
                        a, particle_columns(model.denoise(noisy, ensemble=True), support_row).centres,
                        sp, d))
                vacuum = float(np.mean(noisy[:60]))  # the top rows are vacuum in these models
                llr = column_log_likelihood_ratios(noisy, den, cols,
                                                   vacuum, pixel_size_pm=PX)
                # real: matched one-to-one to a clean column
                m = recovery_metrics(a, b, MATCH_A, PX)
                from scipy.optimize import linear_sum_assignment

                if len(a) and len(b):
                    dist = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
                    ri, ci = linear_sum_assignment(np.where(dist <= MATCH_A / (PX / 100), dist, 1e6))
                    real_idx = set(ci[dist[ri, ci] <= MATCH_A / (PX / 100)].tolist())
                else:
                    real_idx = set()
                assert len(real_idx) == m.matched
                for i, v in enumerate(llr):
                    (llr_real if i in real_idx else llr_fake).append(float(v))
                if len(a) and len(b):
                    nearest = dist.min(axis=0) * PX / 100
                    far_fake += sum(1 for i in range(len(b)) if i not in real_idx and nearest[i] > NEAR_A)
    elapsed = time.perf_counter() - t0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["precision", "recall", "f1", "jaccard"]
    fig, ax = plt.subplots(figsize=(8, 4))
    data, labels = [], []
    for m in metrics:
        for part in ("surface", "bulk"):
            data.append([r[f"{part}_{m}"] for r in rows])
            labels.append(f"{m}\n{part}")
    bp = ax.boxplot(data, tick_labels=labels, patch_artist=True)
    for i, patch in enumerate(bp["boxes"]):
        patch.set_facecolor("tab:blue" if i % 2 == 0 else "tab:orange")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Pt column recovery over {len(rows)} denoised images")
    fig.tight_layout()
    fig.savefig(IMAGES / "structure_recovery.png", dpi=100)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bins = np.linspace(-0.04, 0.06, 81)
    ax.hist(llr_real, bins, alpha=0.6, label=f"real ({len(llr_real)})", color="tab:red", density=True)
    ax.hist(llr_fake, bins, alpha=0.6, label=f"spurious ({len(llr_fake)})", color="tab:blue", density=True)
    for x in (LLR_REAL, LLR_SPURIOUS):
        ax.axvline(x, color="k", ls="--", lw=1)
    ax.set_xlabel("column log-likelihood ratio (nats/pixel)")
    ax.set_ylabel("density (each histogram has area 1)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(IMAGES / "llr_distributions.png", dpi=100)

    def col(key):
        return np.array([r[key] for r in rows])

    def med(key):
        v = col(key)
        return f"{np.median(v):.2f} [{np.percentile(v, 25):.2f}, {np.percentile(v, 75):.2f}]"

    real, fake = np.array(llr_real), np.array(llr_fake)
    frac = lambda a, cond: f"{100 * np.mean(cond(a)):.0f}%" if len(a) else "-"  # noqa: E731
    text = "\n".join([
        "# Structure recovery and LLR distributions",
        "",
        (f"Command: `python benchmarks/structure_recovery.py {' '.join(sys.argv[1:])}` "
        f"({dt.date.today().isoformat()}, {elapsed / 60:.1f} min on this 2-core machine). "
        f"Model: {model.metadata.get('architecture')} {model.metadata.get('params')}, "
        f"validation PSNR {model.metadata.get('validation_psnr', float('nan')):.2f} dB."),
        "",
        (f"{n_struct} held-out structures (seeds 9000+, 2 nm particle, 4 nm support, tilt 3/-1 degrees, "
        f"defects {', '.join(defects)}), defoci {defoci} nm, {draws} Poisson draws each at 0.45 "
        f"counts/pixel: {len(rows)} denoised images. Reference: the particle's true columns (its Pt "
        "atoms projected along the beam). Columns: `detect_columns` with its defaults (spacing, "
        "polarity and thresholds read from each frame) on the particle region (above the "
        f"support); matching within {MATCH_A} A; surface/bulk scores over the detections within "
        f"{NEAR_A:g} A of a true column (the particle), phantoms further out counted apart below. "
        "Median [quartiles]:"),
        "",
        "| metric | surface | bulk |",
        "|---|---|---|",
        *[f"| {m} | {med('surface_' + m)} | {med('bulk_' + m)} |" for m in metrics],
        "",
        (f"The detector alone, on the {len(clean_rows)} clean images: median F1 "
        f"{np.median([r['surface_f1'] for r in clean_rows]):.2f} on the surface and "
        f"{np.median([r['bulk_f1'] for r in clean_rows]):.2f} in the bulk (min "
        f"{min(r['surface_f1'] for r in clean_rows):.2f} and {min(r['bulk_f1'] for r in clean_rows):.2f}): "
        "what is lost above is lost in denoising."),
        "",
        ("The papers (journal Fig. 5d, their 6-scale network): surface precision and recall median "
        "1.0, F1 about 0.96, Jaccard 0.93; bulk all 1.0."),
        "",
        (f"**We are behind the papers here**: median F1 {np.median(col('surface_f1')):.2f} on the "
        f"surface (theirs about 0.96) and {np.median(col('bulk_f1')):.2f} in the bulk (theirs 1.0). "
        "Their 6-scale network scored 42.87 dB on their test set, several dB above ours "
        "(docs/bar.md): "
        "the faint surface columns are the first to be lost or invented. Column counts and "
        "surface shapes from this model need the LLR check below and, where it matters, a "
        "sum over frames."),
        "",
        "![recovery](images/structure_recovery.png)",
        "",
        *(_best_quality_lines(rows, rows_best) if rows_best else []),
        (f"LLR of {len(real)} real and {len(fake)} spurious denoised columns "
        f"(vacuum level measured on the top rows of each raw frame):"),
        "",
        "| | real | spurious |",
        "|---|---|---|",
        (f"| median LLR | {np.median(real) if len(real) else float('nan'):.4f} | "
        f"{np.median(fake) if len(fake) else float('nan'):.4f} |"),
        (f"| LLR >= {LLR_REAL} (read as real) | {frac(real, lambda a: a >= LLR_REAL)} | "
        f"{frac(fake, lambda a: a >= LLR_REAL)} |"),
        (f"| LLR <= {LLR_SPURIOUS} (read as spurious) | {frac(real, lambda a: a <= LLR_SPURIOUS)} | "
        f"{frac(fake, lambda a: a <= LLR_SPURIOUS)} |"),
        "",
        "![LLR](images/llr_distributions.png)",
        "",
        f"Spurious columns per denoised image: {len(fake) / max(1, len(rows)):.1f}, of which "
        f"{100 * far_fake / max(1, len(fake)):.0f}% lie more than {NEAR_A:g} A from any real column "
        "(phantoms in the vacuum or at the frame edges, left out of the surface/bulk scores); the "
        "others sit on the particle, where they also change its convex-hull surface. "
        + (f"Spurious columns have a median LLR of {np.median(fake):.4f}: "
           + ("mostly undecided (between the thresholds), not below -0.006: the likelihood test "
              "cannot flag a column whose denoised intensity is itself close to the vacuum level."
              if np.mean(fake <= LLR_SPURIOUS) < 0.5 else "most are flagged by the likelihood test.")
           if len(fake) else "No spurious columns: the LLR test had nothing to flag."),
        "",
    ])
    (DOCS / "structure-recovery.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
