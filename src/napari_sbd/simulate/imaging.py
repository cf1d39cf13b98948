"""HRTEM image formation: abTEM multislice exit wave, then the microscope in numpy.

One exit wave per structure serves every defocus: the coherent transfer
function is applied to the same exit wave on a fine defocus grid, and partial
temporal coherence is an explicit average of those coherent images over a
Gaussian focal distribution (an envelope washes out the Pt contrast; see
../shared/notes/simulation.md). Spatial coherence at 0.2 mrad is negligible
(envelope >= 0.99 up to 1.2 1/A) and is not applied.

Conventions: aberrations in the Krivanek notation, chi(k) = 2 pi / lambda *
(C10 (lambda k)^2 / 2 + C30 (lambda k)^4 / 4 + C50 (lambda k)^6 / 6), and
``defocus_nm`` is C10 (positive = overfocus). With Cs = C30 = -13 um the
papers' white Pt columns appear near +6 nm. (abTEM's ``defocus`` is -C10.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

from napari_sbd.core.units import PAPERS_PIXEL_SIZE_PM

__all__ = ["ImagingParams", "electron_wavelength", "exit_wave", "images_at_defoci"]


@dataclass(frozen=True)
class ImagingParams:
    """Microscope and detector parameters (defaults: the papers')."""

    energy_ev: float = 300e3
    cs_um: float = -13.0
    c5_mm: float = 5.0
    focal_spread_nm: float = 4.0
    convergence_mrad: float = 0.2
    vibration_pm: float = 50.0
    pixel_size_pm: float = PAPERS_PIXEL_SIZE_PM
    dose: float = 0.45
    sampling_a: float = 0.05
    slice_thickness_a: float = 1.9

    def validate(self) -> None:
        """Raise ValueError for impossible values."""
        if not self.dose > 0:
            raise ValueError(f"dose must be > 0 counts/pixel, got {self.dose}")
        if not self.pixel_size_pm > 0 or self.pixel_size_pm / 100 < self.sampling_a:
            raise ValueError(
                f"pixel_size_pm must be positive and coarser than the simulation sampling "
                f"({self.sampling_a * 100:g} pm), got {self.pixel_size_pm}"
            )
        if self.energy_ev < 10e3 or self.focal_spread_nm < 0 or self.vibration_pm < 0:
            raise ValueError("energy must be >= 10 keV; focal spread and vibration >= 0")

    def record(self) -> dict:
        """Plain dict for the metadata table."""
        return asdict(self)


def electron_wavelength(energy_ev: float) -> float:
    """Relativistic electron wavelength in Angstrom."""
    h, m0, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    p = np.sqrt(2 * m0 * e * energy_ev * (1 + e * energy_ev / (2 * m0 * c**2)))
    return float(h / p * 1e10)


def exit_wave(atoms, ip: ImagingParams) -> tuple[np.ndarray, tuple[float, float]]:
    """Multislice exit wave of a plane wave through ``atoms`` (abTEM).

    Parameters
    ----------
    atoms : ase.Atoms
        The model, beam along z.
    ip : ImagingParams
        Energy, sampling and slice thickness are used.

    Returns
    -------
    psi : numpy.ndarray
        Complex exit wave indexed [x, y] (abTEM's order).
    sampling : tuple of float
        Grid spacing in A along x and y.
    """
    import abtem

    # FFTW_MEASURE (abTEM's default) times candidate algorithms and keeps the fastest:
    # a plan that differs between runs sums in another order, and the same command gave
    # images differing by 2e-5. FFTW_ESTIMATE plans from the sizes alone: bit-identical.
    abtem.config.set({"device": "cpu", "fftw.planning_effort": "FFTW_ESTIMATE",
                      "fftw.threads": 1})
    potential = abtem.Potential(
        atoms, sampling=ip.sampling_a, slice_thickness=ip.slice_thickness_a,
        projection="infinite", parametrization="lobato",
    )
    wave: Any = abtem.PlaneWave(energy=ip.energy_ev).multislice(potential)
    wave = wave.compute(progress_bar=False, scheduler="synchronous")
    sy, sx = (float(s) for s in wave.sampling)
    return np.asarray(wave.array), (sy, sx)


def _coherent_intensity(psi_k: np.ndarray, k2: np.ndarray, lam: float, c10: float,
                        c30: float, c50: float) -> np.ndarray:
    a2 = (lam**2) * k2  # alpha^2
    chi = 2 * np.pi / lam * (c10 * a2 / 2 + c30 * a2**2 / 4 + c50 * a2**3 / 6)
    return np.abs(np.fft.ifft2(psi_k * np.exp(-1j * chi))) ** 2


def images_at_defoci(
    psi: np.ndarray,
    sampling: tuple[float, float],
    defoci_nm: list[float],
    ip: ImagingParams,
    *,
    focal_step_nm: float = 0.5,
) -> dict[float, np.ndarray]:
    """Images in counts at each defocus, resampled to the pixel size.

    Parameters
    ----------
    psi : numpy.ndarray
        Exit wave [x, y] from :func:`exit_wave` (vacuum intensity 1).
    sampling : tuple of float
        Its grid spacing, A.
    defoci_nm : list of float
        C10 values, nm (positive = overfocus).
    ip : ImagingParams
        The microscope.
    focal_step_nm : float
        Spacing of the coherent images the focal average is built from.

    Returns
    -------
    dict
        defocus -> float32 image (rows top to bottom = y decreasing, so the
        vacuum above the particle is at the top), counts per pixel.
    """
    ip.validate()
    lam = electron_wavelength(ip.energy_ev)
    nx, ny = psi.shape
    kx = np.fft.fftfreq(nx, sampling[0])
    ky = np.fft.fftfreq(ny, sampling[1])
    k2 = kx[:, None] ** 2 + ky[None, :] ** 2
    psi_k = np.fft.fft2(psi)
    c30, c50 = ip.cs_um * 1e4, ip.c5_mm * 1e7
    std = ip.focal_spread_nm / np.sqrt(2)  # abTEM/papers' focal spread is a 1/e half-width
    cache: dict[float, np.ndarray] = {}

    def coherent(d_nm: float) -> np.ndarray:
        key = round(d_nm, 6)
        if key not in cache:
            cache[key] = _coherent_intensity(psi_k, k2, lam, d_nm * 10, c30, c50)
        return cache[key]

    out = {}
    for d in defoci_nm:
        if std > 0:
            n = int(np.ceil(3 * std / focal_step_nm))
            offs = np.arange(-n, n + 1) * focal_step_nm
            w = np.exp(-0.5 * (offs / std) ** 2)
            w /= w.sum()
            img = sum(wi * coherent(d + o) for wi, o in zip(w, offs))
        else:
            img = coherent(d)
        if ip.vibration_pm > 0:
            img = gaussian_filter(img, (ip.vibration_pm / 100 / sampling[0],
                                        ip.vibration_pm / 100 / sampling[1]), mode="wrap")
        px = ip.pixel_size_pm / 100
        img = zoom(img, (sampling[0] / px, sampling[1] / px), order=3, mode="grid-wrap",
                   grid_mode=True)
        img = np.flipud(img.T)  # [x, y] -> rows (y down), cols (x)
        out[d] = (np.clip(img, 0, None) * ip.dose).astype(np.float32)
    return out
