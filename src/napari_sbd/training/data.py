"""Training data: a folder of clean count images, filtered, split by structure.

The folder holds clean float32 TIFFs in counts per pixel and, optionally, a
metadata table ``metadata.csv`` (the simulator writes one) with a ``file``
column and any of ``structure_id``, ``dose`` (vacuum counts/pixel of the clean
image), ``pixel_size_pm``, ``contrast``, ``defocus_nm``, ...

Images of one structure (all its defoci, tilts...) are highly correlated, so
the validation split is made by structure: no structure contributes to both
sides. Without a table each image is its own structure.
"""

from __future__ import annotations

import csv
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sbd.core.noise import estimate_clean_vacuum_level

__all__ = ["TrainingDataError", "TrainingImage", "load_images", "parse_filter", "split_by_structure"]

METADATA_NAMES = ("metadata.csv",)


class TrainingDataError(ValueError):
    """The training data cannot be used; the message says why and what to do."""


@dataclass
class TrainingImage:
    """One clean image and what is known about it."""

    path: Path
    image: np.ndarray
    structure: str
    vacuum_level: float
    record: dict[str, Any] = field(default_factory=dict)


def parse_filter(text: str) -> tuple[str, Any]:
    """Parse ``key=value``, ``key=a,b,c`` or ``key=lo:hi`` (inclusive numeric range).

    Parameters
    ----------
    text : str
        The filter as typed on the command line.

    Returns
    -------
    tuple
        ``(key, predicate)``: predicate is called on the table's string value.
    """
    if "=" not in text:
        raise TrainingDataError(f"filter {text!r} must look like key=value, key=a,b or key=lo:hi")
    key, value = (s.strip() for s in text.split("=", 1))
    if ":" in value:
        lo_s, hi_s = value.split(":", 1)
        try:
            lo = float(lo_s) if lo_s else -np.inf
            hi = float(hi_s) if hi_s else np.inf
        except ValueError:
            raise TrainingDataError(f"filter {text!r}: range bounds must be numbers") from None

        def in_range(v: str) -> bool:
            try:
                return lo <= float(v) <= hi
            except ValueError:
                return False

        return key, in_range
    allowed = {v.strip() for v in value.split(",")}
    return key, lambda v: v.strip() in allowed


def _read_table(folder: Path) -> list[dict[str, str]] | None:
    for name in METADATA_NAMES:
        p = folder / name
        if p.exists():
            with open(p, newline="") as fh:
                rows = list(csv.DictReader(fh))
            if rows and "file" not in rows[0]:
                raise TrainingDataError(f"{p} has no 'file' column naming each image")
            return rows
    return None


def _read_clean(path: Path) -> np.ndarray:
    """One clean image, memory-mapped read-only where the file allows it.

    An uncompressed float32 TIFF (what the simulator writes) is mapped rather
    than read: the operating system then holds one copy of a data set that
    several training runs share (a 4,000-image set is 12 GB: two private
    copies do not fit a 24 GB machine), and the file can never be written
    through it. Compressed or other files are read into memory.
    """
    import tifffile

    img: np.ndarray
    try:
        img = tifffile.memmap(path, mode="r")
    except ValueError:  # compressed, tiled or otherwise not mappable
        img = tifffile.imread(path)
    if isinstance(img, np.memmap) and img.dtype == np.float32:
        return img
    return np.asarray(img).astype(np.float32)  # another dtype: converted, in memory


def load_images(folder: str | Path, filters: list[str] | tuple[str, ...] = ()) -> list[TrainingImage]:
    """Read the clean images of ``folder`` that pass ``filters``.

    Parameters
    ----------
    folder : path-like
        Folder of ``*.tif``/``*.tiff`` clean images (counts per pixel).
    filters : list of str
        Metadata filters (see :func:`parse_filter`); need a metadata table.

    Returns
    -------
    list of TrainingImage
        The images, in a deterministic order.

    Raises
    ------
    TrainingDataError
        Missing or empty folder, unreadable images, images that are not counts,
        filters without a table or matching nothing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingDataError(f"training data folder {folder} does not exist")
    rows = _read_table(folder)
    if rows is None:
        if filters:
            raise TrainingDataError(
                f"filters {list(filters)} need a metadata table ({METADATA_NAMES[0]}) in {folder}"
            )
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
        rows = [{"file": p.name} for p in files]
    preds = [parse_filter(f) for f in filters]
    for key, _ in preds:
        if rows and key not in rows[0]:
            raise TrainingDataError(
                f"filter on {key!r}: the metadata table has no such column "
                f"(columns: {', '.join(rows[0])})"
            )
    selected = [r for r in rows if all(pred(r[key]) for key, pred in preds)]
    if not rows:
        raise TrainingDataError(f"no TIFF images (*.tif) in {folder}")
    if not selected:
        raise TrainingDataError(f"no image in {folder} passes the filters {list(filters)}")
    out = []
    for r in selected:
        path = folder / r["file"]
        try:
            img = _read_clean(path)
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types
            raise TrainingDataError(f"cannot read training image {path}: {exc}") from None
        if img.ndim != 2:
            raise TrainingDataError(
                f"training image {path} has shape {img.shape}; expected one 2-D clean image"
            )
        if not np.isfinite(img).all() or img.min() < 0:
            raise TrainingDataError(
                f"training image {path} is not a clean count image (negative, NaN or infinite "
                "values); clean simulations must be expected counts >= 0"
            )
        if r.get("dose"):
            vac = float(r["dose"])
        else:
            try:
                vac = estimate_clean_vacuum_level(img)
            except ValueError:
                raise TrainingDataError(
                    f"training image {path}: cannot find its vacuum level (median is 0); "
                    "give a 'dose' column in the metadata table"
                ) from None
        out.append(TrainingImage(path, img, r.get("structure_id") or r["file"], vac, dict(r)))
    return out


def split_by_structure(
    images: list[TrainingImage], val_fraction: float, seed: int = 0,
    held_out: Collection[str] | None = None,
) -> tuple[list[TrainingImage], list[TrainingImage]]:
    """Split into training and validation sets with no structure on both sides.

    Parameters
    ----------
    images : list of TrainingImage
        All images.
    val_fraction : float
        Fraction of the structures held out (at least one when > 0).
    seed : int
        Seed of the shuffle of structures.
    held_out : collection of str, optional
        Exactly these structures are held out (``val_fraction`` and ``seed``
        are then unused): a run started from another's weights on a grown data
        set keeps its parent's training structures out of validation.

    Returns
    -------
    tuple of lists
        ``(train, validation)``.
    """
    structures = sorted({im.structure for im in images})
    if held_out is not None:
        held = set(held_out)
        unknown = sorted(held - set(structures))
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise TrainingDataError(
                f"--val-structures names {len(unknown)} structure(s) the data do not hold "
                f"({shown}); the data's ids run {structures[0]} .. {structures[-1]} "
                "(metadata.csv, column structure_id)"
            )
        if held >= set(structures):
            raise TrainingDataError("--val-structures holds out every structure: leave at "
                                    "least one to train on")
        return [im for im in images if im.structure not in held], [
            im for im in images if im.structure in held
        ]
    if val_fraction <= 0:
        return list(images), []
    if len(structures) < 2:
        raise TrainingDataError(
            f"the data hold {len(structures)} structure: training holds whole structures out "
            "for validation (early stopping, the best checkpoint), so it needs at least two; "
            "add images of another structure (napari-sbd-simulate --n-structures 2 or more)"
        )
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(structures))
    n_val = min(len(structures) - 1, max(1, round(val_fraction * len(structures))))
    held = set(order[:n_val])
    return [im for im in images if im.structure not in held], [
        im for im in images if im.structure in held
    ]
