"""napari readers (npe2) for TIFF stacks, MRC and microscope formats, and a TIFF writer.

Every reader puts the file's pixel size into the layer's ``scale`` in
Angstrom (units "angstrom" on the two image axes) and into
``metadata["pixel_size_pm"]``; a stack's first axis is the frame number.
Large TIFFs are memory-mapped (or read lazily through zarr when compressed),
never read whole.

Formats: TIFF (tifffile; ImageJ spacing, resolution tags or a napari-sbd JSON
description), MRC/MRCS (mrcfile), and through RosettaSciIO (``pip install
"napari-sbd[io]"``): Gatan DM3/DM4, Thermo Fisher Velox EMD, FEI TIA SER.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_sbd.core.files import atomic_write

__all__ = ["get_reader", "read_file", "write_tiff"]

LayerData = tuple[Any, dict, str]
RSCIIO = {".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".emd": "emd", ".ser": "tia"}
TIFF = (".tif", ".tiff")
MRC = (".mrc", ".mrcs", ".st")
_LENGTH_TO_PM = {"pm": 1.0, "a": 100.0, "å": 100.0, "angstrom": 100.0, "ang": 100.0, "nm": 1e3,
                 "µm": 1e6, "um": 1e6, "micron": 1e6, "mm": 1e9, "m": 1e12}


class ReaderError(ValueError):
    """A file napari-sbd cannot turn into an image layer."""


def _to_pm(value: float | None, unit: str | None) -> float | None:
    if value is None or unit is None:
        return None
    factor = _LENGTH_TO_PM.get(str(unit).strip().lower())
    if factor is None or not np.isfinite(value) or value <= 0:
        return None
    return float(value) * factor


def _layer(data: Any, name: str, pixel_size_pm: float | None, source: str, extra: dict) -> LayerData:
    nd = len(data.shape)
    meta = {"source_file": source, "pixel_size_pm": pixel_size_pm, **extra}
    kwargs: dict[str, Any] = {"name": name, "metadata": meta, "colormap": "gray"}
    if pixel_size_pm:
        a = pixel_size_pm / 100.0
        kwargs["scale"] = (1.0,) * (nd - 2) + (a, a)
        kwargs["units"] = ("pixel",) * (nd - 2) + ("angstrom", "angstrom")
    return data, kwargs, "image"


# -- TIFF -----------------------------------------------------------------------
def _tiff_pixel_size(tif: Any) -> float | None:
    page = tif.pages[0]
    desc = page.description or ""
    if desc.startswith("{"):
        try:
            d = json.loads(desc)
            if d.get("pixel_size_pm"):
                return float(d["pixel_size_pm"])
        except (ValueError, TypeError):
            pass
    ij = tif.imagej_metadata or {}
    if "spacing" in ij or "unit" in ij:
        tags = page.tags
        if "XResolution" in tags:
            num, den = tags["XResolution"].value
            px = _to_pm(den / num if num else None, ij.get("unit"))
            if px:
                return px
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = {2: "inch", 3: "cm"}.get(int(tags["ResolutionUnit"].value))
        if num and unit == "cm":
            return den / num * 1e10  # cm per pixel -> pm
    return None


def read_tiff(path: str) -> list[LayerData]:
    """Read a TIFF image or stack lazily."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        px = _tiff_pixel_size(tif)
        ours = _our_description(tif)
        series = tif.series[0]
        shape, dtype = series.shape, series.dtype
    if len(shape) == 3 and shape[-1] in (3, 4):
        raise ReaderError(f"{path} is an RGB(A) image, not counts; napari's own reader opens it")
    try:
        data: Any = tifffile.memmap(path, mode="r")
    except ValueError:  # compressed or not contiguous: read lazily through zarr
        import zarr

        data = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    if len(data.shape) not in (2, 3, 4):
        raise ReaderError(f"{path} has shape {shape}; expected a 2-D image, a 3-D stack or a "
                          "4-D series of stacks")
    return [_layer(data, Path(path).stem, px, path, {"dtype": str(dtype), **ours})]


def _our_description(tif: Any) -> dict[str, Any]:
    """Return the layer metadata a file written by :func:`write_tiff` carries (model, source...)."""
    desc = tif.pages[0].description or ""
    try:
        d = json.loads(desc) if desc.startswith("{") else {}
    except ValueError:
        return {}
    if not isinstance(d, dict) or not d.get("napari_sbd"):
        return {}
    keys = {"model": "sbd_model", "source_layer": "sbd_source_layer", "complete": "sbd_complete",
            "ensemble": "sbd_ensemble", "calibration": "sbd_calibration"}
    return {ours: d[k] for k, ours in keys.items() if d.get(k) is not None}


class TiffFrames:
    """Frames of a TIFF stack, read one at a time without keeping them mapped.

    A memory map of the whole file would count every page read so far in the
    process's resident memory; here each frame is mapped, copied and unmapped
    (uncompressed files), or read through tifffile's chunked zarr view
    (compressed files), so resident memory does not grow with the frame count.
    ``block`` picks one stack of a 4-D (series, T, H, W) file.
    """

    def __init__(self, path: Path, block: int | None = None) -> None:
        import tifffile

        self.path = path
        self._zarr: Any = None
        self._block = block
        try:
            whole = tifffile.memmap(path, mode="r")
        except ValueError:  # compressed or scattered pages: read through zarr
            import zarr

            self._zarr = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
            shape, self.dtype = tuple(self._zarr.shape), self._zarr.dtype
        else:
            shape, self.dtype = tuple(whole.shape), whole.dtype
            self._offset = int(whole.offset)
            del whole
        if (block is not None) != (len(shape) == 4):
            raise ValueError("a block is chosen in 4-D (series, T, H, W) files, and only there")
        self.shape = shape[1:] if block is not None else shape

    def __getitem__(self, index: int) -> np.ndarray:
        if self._zarr is not None:
            key = (self._block, index) if self._block is not None else index
            return np.asarray(self._zarr[key])
        h, w = self.shape[-2:]
        frame_bytes = h * w * self.dtype.itemsize
        page = int(index) + (self._block * self.shape[0] if self._block is not None else 0)
        m = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(h, w),
                      offset=self._offset + page * frame_bytes)
        out = np.array(m)
        del m
        return out


# -- MRC ------------------------------------------------------------------------
def read_mrc(path: str) -> list[LayerData]:
    """Read an MRC image/movie (memory-mapped); voxel size in A from the header."""
    import mrcfile

    mrc = mrcfile.mmap(path, mode="r", permissive=True)
    if mrc.data is None:
        raise ReaderError(f"{path} has no image data (broken MRC header?)")
    vx = float(mrc.voxel_size.x)
    px = vx * 100.0 if vx > 0 and np.isfinite(vx) else None
    if px is None and vx != 0:  # 0 is MRC's "not recorded"; anything else is a broken header
        import warnings

        warnings.warn(
            f"{path}: the MRC header gives a voxel size of {vx:g} A, which is not a size; the "
            "pixel size is left unknown: give it (the Denoise and Columns docks' pixel size in napari, "
            "napari-sbd-denoise --pixel-size) or fix the header",
            stacklevel=2,
        )
    return [_layer(mrc.data, Path(path).stem, px, path, {"format": "MRC"})]


# -- intensity calibration ---------------------------------------------------------------
ELECTRON_UNITS = {"e", "e-", "electron", "electrons", "counts", "count", "el"}


def intensity_calibration(original_metadata: dict) -> dict[str, Any] | None:
    """Return the file's own intensity calibration into electrons, when it records one.

    Gatan DigitalMicrograph stores a brightness calibration per image
    (``ImageList.*.ImageData.Calibrations.Brightness``: origin, scale, units;
    electrons = (raw - origin) x scale). When its units are electrons (or
    counts), the offset and electrons per count are known and need not be
    typed in; any other unit (or none) says nothing about electrons.

    Returns
    -------
    dict or None
        ``{"offset", "electrons_per_count", "units"}`` in the file's units, or
        None when the file has no electron calibration (or only the identity).
    """
    images = (original_metadata or {}).get("ImageList") or {}
    for group in images.values() if isinstance(images, dict) else []:
        cal = ((group or {}).get("ImageData") or {}).get("Calibrations", {}).get("Brightness")
        if not isinstance(cal, dict):
            continue
        units = cal.get("Units")
        units = "".join(units) if isinstance(units, (list, tuple)) else str(units or "")
        try:
            origin, scale = float(cal.get("Origin", 0.0)), float(cal.get("Scale", 1.0))
        except (TypeError, ValueError):
            continue
        if units.strip().lower() not in ELECTRON_UNITS or not (scale > 0 and np.isfinite(origin)):
            continue
        if (origin, scale) == (0.0, 1.0):
            return None  # the identity: already electrons, nothing to apply
        return {"offset": origin, "electrons_per_count": scale, "units": units.strip()}
    return None


# -- RosettaSciIO -------------------------------------------------------------------
def read_rsciio(path: str) -> list[LayerData]:
    """Read DM3/DM4, EMD or SER through RosettaSciIO: every 2-D/3-D image signal."""
    import importlib

    ext = Path(path).suffix.lower()
    try:
        mod = importlib.import_module(f"rsciio.{RSCIIO[ext]}")
    except ImportError as exc:
        raise ReaderError(
            f"reading {ext} files needs RosettaSciIO ({exc}): pip install \"napari-sbd[io]\""
        ) from None
    out = []
    for k, sig in enumerate(mod.file_reader(path, lazy=False)):
        data, axes = sig["data"], sig["axes"]
        if data.ndim not in (2, 3):
            continue  # spectra, profiles, 4-D data: not images
        sx = axes[-1]
        px = _to_pm(float(sx.get("scale", 0) or 0), sx.get("units"))
        title = (sig.get("metadata", {}).get("General", {}) or {}).get("title") or Path(path).stem
        name = title if k == 0 else f"{title} [{k}]"
        extra: dict[str, Any] = {"format": RSCIIO[ext]}
        cal = intensity_calibration(sig.get("original_metadata") or {})
        if cal:
            extra["intensity_calibration"] = cal
        out.append(_layer(data, name, px, path, extra))
    if not out:
        raise ReaderError(f"{path} holds no 2-D image or 3-D image stack")
    return out


def read_file(path: str | os.PathLike) -> list[LayerData]:
    """Read any supported file into napari layer data.

    Parameters
    ----------
    path : path-like
        The file.

    Returns
    -------
    list of tuple
        ``(data, kwargs, "image")`` per image in the file.
    """
    p = str(path)
    ext = Path(p).suffix.lower()
    if ext in TIFF:
        return read_tiff(p)
    if ext in MRC:
        return read_mrc(p)
    if ext in RSCIIO:
        return read_rsciio(p)
    raise ReaderError(f"napari-sbd does not read {ext} files")


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """npe2 reader contribution: a reader for ``path``, or None."""
    if isinstance(path, list):
        return None
    ext = Path(path).suffix.lower()
    if ext not in TIFF + MRC + tuple(RSCIIO):
        return None
    return read_file


def write_tiff(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 writer: a float32 TIFF (BigTIFF when large) with the layer's metadata.

    The description holds JSON with the pixel size, the model's metadata and
    the source layer; the file is written atomically (never half-written, and
    an existing file is only replaced once the new one is complete).
    """
    import tifffile

    arr = np.asarray(data, dtype=np.float32)
    meta = dict(attributes.get("metadata") or {})
    scale = attributes.get("scale")
    px = meta.get("pixel_size_pm")
    units = attributes.get("units")
    if not px and scale is not None and units is not None and len(units) >= 1:
        px = _to_pm(float(scale[-1]), str(units[-1]))
    description = {
        "napari_sbd": True,
        "name": attributes.get("name"),
        "pixel_size_pm": px,
        "model": meta.get("sbd_model"),
        "source_layer": meta.get("sbd_source_layer"),
        "complete": meta.get("sbd_complete"),
        "ensemble": meta.get("sbd_ensemble"),
        "calibration": meta.get("sbd_calibration"),
    }
    text = json.dumps(description, default=str)
    atomic_write(path, lambda tmp: tifffile.imwrite(
        tmp, arr, description=text, bigtiff=arr.nbytes > 2**31, photometric="minisblack"))
    return [path]
