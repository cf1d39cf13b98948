"""Sample data for napari's File > Open Sample menu (npe2 ``sample_data``).

A short low-dose movie of a 2 nm Pt particle on CeO2 (111) at the papers'
conditions: 6.1 pm/pixel, 0.45 counts/pixel/frame in vacuum, white-column
contrast at +6 nm defocus. The clean image is a multislice simulation made with
``napari-sbd-simulate`` (abTEM) from a structure held out of the bundled
model's training set (seed 5000), shipped as a small float16 TIFF; the frames
are Poisson draws from it, made on the fly with a fixed seed.
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np

from napari_sbd.core.noise import poisson_noise

N_FRAMES = 8
CLEAN_FILE = "pt_ceo2_clean_6nm.tif"


def clean_frame() -> tuple[np.ndarray, dict]:
    """Return the clean simulated frame (float32 counts) and its description."""
    import tifffile

    with (resources.as_file(resources.files("napari_sbd") / "data" / CLEAN_FILE) as path,
          tifffile.TiffFile(path) as tif):
        image = tif.asarray().astype(np.float32)
        info = json.loads(tif.pages[0].description)
    return image, info


def pt_ceo2_movie() -> list[tuple]:
    """Noisy frame stack (T, H, W) of counts and the clean frame.

    Returns
    -------
    list of tuple
        napari layer data tuples: the noisy stack, then the clean image.
    """
    clean, info = clean_frame()
    rng = np.random.default_rng(2021)
    noisy = poisson_noise(np.broadcast_to(clean, (N_FRAMES, *clean.shape)), rng=rng).astype(np.uint16)
    a = info["pixel_size_pm"] / 100.0
    meta = {"pixel_size_pm": info["pixel_size_pm"], "dose": info["dose"],
            "source": "napari-sbd sample: " + info["note"]}
    noisy_kw = {"name": "Pt-CeO2 noisy", "scale": (1.0, a, a),
                "units": ("pixel", "angstrom", "angstrom"), "metadata": meta,
                "contrast_limits": (0, 3), "colormap": "gray"}
    clean_kw = {"name": "Pt-CeO2 clean", "scale": (a, a), "units": ("angstrom", "angstrom"),
                "metadata": meta, "colormap": "gray", "visible": False}
    return [(noisy, noisy_kw, "image"), (clean, clean_kw, "image")]
