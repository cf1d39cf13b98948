"""Sample data for napari's File > Open Sample menu (npe2 ``sample_data``).

A short movie of a Pt particle on CeO2 at the papers' conditions (6.1 pm/pixel,
0.45 counts/pixel/frame in vacuum), generated on the fly in well under a
second, with its clean counterpart. The clean scene is the synthetic phantom
of :mod:`napari_sbd.core.phantom` (Gaussian columns at known positions).
"""

from __future__ import annotations

import numpy as np

from napari_sbd.core.phantom import pt_on_ceo2_phantom

N_FRAMES = 8
SHAPE = (512, 512)


def _layer_kwargs(name: str, pixel_size_pm: float, **extra: object) -> dict:
    scale = pixel_size_pm / 100.0  # Angstrom per pixel
    return {
        "name": name,
        "scale": (scale, scale),
        "units": ("angstrom", "angstrom"),
        **extra,
    }


def pt_ceo2_movie() -> list[tuple]:
    """Noisy frame stack (T, H, W) of counts and the clean frame.

    Returns
    -------
    list of tuple
        napari layer data tuples: the noisy stack, then the clean image.
    """
    ph = pt_on_ceo2_phantom(SHAPE, seed=0)
    rng = np.random.default_rng(2021)
    noisy = rng.poisson(np.broadcast_to(ph.image, (N_FRAMES, *SHAPE))).astype(np.uint16)
    a = ph.pixel_size_pm / 100.0
    meta = {"pixel_size_pm": ph.pixel_size_pm, "dose": ph.vacuum_level, "source": "napari-sbd sample"}
    noisy_kw = _layer_kwargs("Pt-CeO2 noisy", ph.pixel_size_pm, metadata=meta,
                             contrast_limits=(0, 3), colormap="gray")
    noisy_kw["scale"] = (1.0, a, a)
    noisy_kw["units"] = ("pixel", "angstrom", "angstrom")
    clean_kw = _layer_kwargs("Pt-CeO2 clean", ph.pixel_size_pm, metadata=meta, visible=False,
                             colormap="gray")
    return [(noisy, noisy_kw, "image"), (ph.image, clean_kw, "image")]
