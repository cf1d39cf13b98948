"""Write a training set: clean float32 TIFFs in counts plus ``metadata.csv``.

Layout of the output folder::

    DIR/s00012_df+06.0nm.tif     one clean image (counts per pixel, float32)
    DIR/records/s00012.json      the rows of one finished structure
    DIR/metadata.csv             every row of every finished structure
    DIR/dataset.json             the options every image of the folder shares

A folder holds one dataset: a run whose defoci, microscope settings or fixed
structure parameters differ from the folder's (``dataset.json``, or the first
record of a folder made before it existed) is refused, naming each difference.
More structures (a larger ``n_structures``, another seed range) with the same
options extend the dataset.

Every file is written atomically (temporary file + rename) and a structure
counts as done only once its record is written, after all its images: an
interrupted run resumes without redoing or corrupting finished structures.
Structure ``i`` of a run is drawn from ``seed + i`` alone, so re-running the
same command reproduces the images bit for bit.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from napari_sbd.core.files import atomic_write
from napari_sbd.simulate.imaging import ImagingParams, exit_wave, images_at_defoci
from napari_sbd.simulate.structures import DEFECTS, PARTICLE_SIZES, StructureParams, build_structure

__all__ = ["classify_contrast", "draw_structure_params", "simulate_dataset", "simulate_structure"]

# Contrast rule (documented in docs/simulate.md): mean intensity at the Pt
# column centres relative to the mean over the particle's area.
CONTRAST_THRESHOLD = 0.04


def draw_structure_params(seed: int, **fixed: Any) -> StructureParams:
    """Random structure parameters in the papers' ranges, from ``seed`` alone.

    Parameters
    ----------
    seed : int
        Seed; the same seed always gives the same parameters.
    **fixed
        Parameters to impose instead of drawing them (e.g. ``particle="2nm"``).

    Returns
    -------
    StructureParams
        The drawn parameters.
    """
    rng = np.random.default_rng([seed, 91])
    tilt = int(rng.integers(0, 5))
    about_x = bool(rng.random() < 0.5)
    drawn: dict[str, Any] = {
        "seed": seed,
        "particle": str(rng.choice(sorted(PARTICLE_SIZES))),
        "thickness_nm": float(rng.choice([3.0, 4.0, 5.0, 6.0])),
        "tilt_x_deg": float(tilt if about_x else 0),
        "tilt_y_deg": float(0 if about_x else tilt),
        "defect": str(rng.choice(DEFECTS)),
    }
    drawn.update(fixed)
    return StructureParams(**drawn)


def classify_contrast(image: np.ndarray, columns_px: np.ndarray) -> tuple[str, float]:
    """White / intermediate / black from the Pt columns' intensity.

    Score = mean over small disks at the Pt column centres / mean over the
    particle's convex hull - 1. White above +CONTRAST_THRESHOLD, black below
    -CONTRAST_THRESHOLD, intermediate in between.

    Parameters
    ----------
    image : numpy.ndarray
        Clean image.
    columns_px : numpy.ndarray
        (N, 2) row/col of the Pt columns.

    Returns
    -------
    tuple of (str, float)
        Class and score.
    """
    from scipy.spatial import ConvexHull
    from skimage.draw import disk, polygon

    h, w = image.shape
    cols = columns_px[(columns_px[:, 0] >= 0) & (columns_px[:, 0] < h) &
                      (columns_px[:, 1] >= 0) & (columns_px[:, 1] < w)]
    if len(cols) < 3:
        return "unknown", float("nan")
    at = np.concatenate([image[disk(tuple(c), 3, shape=image.shape)] for c in cols])
    hull = cols[ConvexHull(cols).vertices]
    rr, cc = polygon(hull[:, 0], hull[:, 1], image.shape)
    score = float(at.mean() / image[rr, cc].mean() - 1)
    if score > CONTRAST_THRESHOLD:
        return "white", score
    if score < -CONTRAST_THRESHOLD:
        return "black", score
    return "intermediate", score


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("abtem", "ase", "numpy", "napari-sbd"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _write_tiff(path: Path, image: np.ndarray, description: dict) -> None:
    import tifffile

    atomic_write(path, lambda tmp: tifffile.imwrite(
        tmp, image, description=json.dumps(description), photometric="minisblack"))


def simulate_structure(
    out: str | os.PathLike, sp: StructureParams, ip: ImagingParams, defoci_nm: list[float]
) -> list[dict[str, Any]]:
    """Simulate one structure at every defocus; write its images and record.

    Parameters
    ----------
    out : path-like
        Dataset folder.
    sp : StructureParams
        The structure.
    ip : ImagingParams
        The microscope.
    defoci_nm : list of float
        C10 values, nm.

    Returns
    -------
    list of dict
        The metadata rows written.
    """
    out = Path(out)
    atoms, info = build_structure(sp)
    psi, sampling = exit_wave(atoms, ip)
    images = images_at_defoci(psi, sampling, defoci_nm, ip)
    px = ip.pixel_size_pm / 100
    ly = info["cell_a"][1]
    cols_px = np.column_stack([(ly - info["particle_columns"][:, 1]) / px,
                               info["particle_columns"][:, 0] / px])
    sid = f"s{sp.seed:05d}"
    versions = _versions()
    rows = []
    for d, img in images.items():
        contrast, score = classify_contrast(img, cols_px)
        name = f"{sid}_df{d:+05.1f}nm.tif"
        row = {
            "file": name, "structure_id": sid, **sp.record(), "defocus_nm": d,
            "contrast": contrast, "contrast_score": round(score, 5),
            "pixel_size_pm": ip.pixel_size_pm, "dose": ip.dose,
            "height_px": img.shape[0], "width_px": img.shape[1],
            "n_pt": info["n_pt"], "n_ce": info["n_ce"], "n_o": info["n_o"],
            "defect_site_a": json.dumps(info["defect_site"]),
            **{f"imaging_{k}": v for k, v in ip.record().items()},
            **{f"version_{k}": v for k, v in versions.items()},
        }
        _write_tiff(out / name, img, {k: row[k] for k in ("structure_id", "defocus_nm",
                                                          "pixel_size_pm", "dose", "contrast")})
        rows.append(row)
    atomic_write(out / "records" / f"{sid}.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1)))
    return rows


def _single_threaded_worker() -> None:
    """ProcessPool initializer: one process per core, each single-threaded.

    Set before NumPy/numba start their thread pools in the fresh process (in an
    already running process numba refuses a changed NUMBA_NUM_THREADS).
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"


def _rebuild_table(out: Path) -> int:
    rows = []
    for rec in sorted((out / "records").glob("s*.json")):
        rows += json.loads(rec.read_text())
    if not rows:
        return 0
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=list(rows[0]))
    wr.writeheader()
    wr.writerows(rows)
    atomic_write(out / "metadata.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    return len(rows)


def dataset_options(defoci_nm: list[float], ip: ImagingParams,
                    fixed: dict[str, Any] | None) -> dict[str, Any]:
    """Return what every image of a dataset shares: defoci, imaging parameters, fixed structure parameters."""
    return {"defoci_nm": [float(d) for d in defoci_nm], "imaging": ip.record(),
            "fixed": dict(fixed or {})}


def _folder_options(out: Path) -> dict[str, Any] | None:
    """Return the options of an existing dataset folder, or None for a new one."""
    if (out / "dataset.json").exists():
        return json.loads((out / "dataset.json").read_text())
    records = sorted((out / "records").glob("s*.json")) if (out / "records").is_dir() else []
    if not records:
        return None
    rows = json.loads(records[0].read_text())  # a folder from before dataset.json
    return {"defoci_nm": sorted(float(r["defocus_nm"]) for r in rows),
            "imaging": {k[len("imaging_"):]: v for k, v in rows[0].items() if k.startswith("imaging_")}}


def _check_same_dataset(out: Path, wanted: dict[str, Any]) -> None:
    have = _folder_options(out)
    if have is None:
        # not a dataset of ours: a folder with files in it (metadata.csv is a common name)
        # could lose them to ours; only a new or empty one is written into
        theirs = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
        if theirs:
            shown = ", ".join(theirs[:3]) + (f" and {len(theirs) - 3} more" if len(theirs) > 3 else "")
            raise ValueError(
                f"{out} holds files ({shown}) and is not a napari-sbd dataset (no dataset.json "
                "or records/): simulate into a new or empty folder; nothing was written"
            )
        return
    diffs = []
    if sorted(have.get("defoci_nm", [])) != sorted(wanted["defoci_nm"]):
        diffs.append(f"defoci {have.get('defoci_nm')} nm in the folder, {wanted['defoci_nm']} now")
    for k, v in wanted["imaging"].items():
        if k in have.get("imaging", {}) and have["imaging"][k] != v:
            diffs.append(f"{k} {have['imaging'][k]} in the folder, {v} now")
    if "fixed" in have and have["fixed"] != wanted["fixed"]:
        diffs.append(f"fixed structure parameters {have['fixed']} in the folder, {wanted['fixed']} now")
    if diffs:
        raise ValueError(
            f"{out} already holds a dataset made with other options: " + "; ".join(diffs)
            + ". Simulate into a new --out folder (one folder holds one dataset), or repeat the "
            "folder's own options to resume or extend it"
        )


def simulate_dataset(
    out: str | os.PathLike,
    n_structures: int,
    defoci_nm: list[float],
    ip: ImagingParams,
    *,
    seed: int = 0,
    fixed: dict[str, Any] | None = None,
    workers: int | None = None,
    executor: Executor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Simulate ``n_structures`` structures (skipping finished ones) into ``out``.

    Parameters
    ----------
    out : path-like
        Dataset folder (created).
    n_structures : int
        Structures seeded ``seed .. seed + n - 1``.
    defoci_nm : list of float
        Defoci, nm.
    ip : ImagingParams
        The microscope.
    seed : int
        First structure seed.
    fixed : dict, optional
        Structure parameters imposed on every structure.
    workers : int, optional
        Processes (default: one per core); ignored when ``executor`` is given.
    executor : concurrent.futures.Executor, optional
        E.g. a dask.distributed client's executor.
    progress : callable, optional
        ``progress(done, total)`` after each structure.

    Returns
    -------
    int
        Number of images in the table.
    """
    ip.validate()
    if n_structures < 1 or not defoci_nm:
        raise ValueError("need at least one structure and one defocus")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose a folder name")
    wanted = dataset_options(defoci_nm, ip, fixed)
    _check_same_dataset(out, wanted)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "dataset.json").exists():
        atomic_write(out / "dataset.json", lambda tmp: Path(tmp).write_text(json.dumps(wanted, indent=1)))
    params = [draw_structure_params(seed + i, **(fixed or {})) for i in range(n_structures)]
    for sp in params:
        sp.validate()
    todo = [sp for sp in params if not (out / "records" / f"s{sp.seed:05d}.json").exists()]
    done = n_structures - len(todo)
    if progress:
        progress(done, n_structures)
    own = executor is None and (workers or os.cpu_count() or 1) > 1 and len(todo) > 1
    pool = executor or (ProcessPoolExecutor(min(len(todo), workers or os.cpu_count() or 1),
                                            initializer=_single_threaded_worker) if own else None)
    try:
        if pool is None:
            for sp in todo:
                simulate_structure(out, sp, ip, defoci_nm)
                done += 1
                _rebuild_table(out)
                if progress:
                    progress(done, n_structures)
        else:
            futures = [pool.submit(simulate_structure, out, sp, ip, defoci_nm) for sp in todo]
            for fut in as_completed(futures):
                fut.result()
                done += 1
                _rebuild_table(out)
                if progress:
                    progress(done, n_structures)
    finally:
        if own and pool is not None:
            pool.shutdown(cancel_futures=True)
    return _rebuild_table(out)
