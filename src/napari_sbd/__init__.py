"""napari-sbd: simulation-based deep denoising of ultra-low-dose electron microscopy.

The public API (docs/index.md has the whole guide)::

    import napari_sbd as sbd
    model = sbd.load_model("default")      # or a checkpoint path
    den = model.denoise(frames)            # (H, W) or (T, H, W) counts -> float32
    sbd.psnr(clean, den); sbd.ssim(clean, den)
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as the type checkers and IDEs see them
    from napari_sbd.core.analysis import FrameAnalysis, analyse_frame
    from napari_sbd.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from napari_sbd.core.columns import (
        Columns,
        LatticeNotFound,
        detect_columns,
        structure_recovery,
        surface_mask,
    )
    from napari_sbd.core.inference import Blend, Denoiser, DenoisingCancelled, load_model
    from napari_sbd.core.inputs import InputError
    from napari_sbd.core.jacobian import effective_filter
    from napari_sbd.core.likelihood import (
        LLR_REAL,
        LLR_SPURIOUS,
        column_log_likelihood_ratios,
        estimate_vacuum_level,
        likelihood_map,
    )
    from napari_sbd.core.metrics import psnr, ssim
    from napari_sbd.core.noise import poisson_noise
    from napari_sbd.core.tracking import link_columns, read_tracks, track_rows, write_tracks

# What `import napari_sbd` offers, imported on first use: a reader or the command-line
# --help does not pay for torch (PEP 562).
_LAZY = {
    "Blend": "napari_sbd.core.inference",
    "CheckpointError": "napari_sbd.core.checkpoint",
    "Columns": "napari_sbd.core.columns",
    "Denoiser": "napari_sbd.core.inference",
    "DenoisingCancelled": "napari_sbd.core.inference",
    "FrameAnalysis": "napari_sbd.core.analysis",
    "InputError": "napari_sbd.core.inputs",
    "LLR_REAL": "napari_sbd.core.likelihood",
    "LLR_SPURIOUS": "napari_sbd.core.likelihood",
    "LatticeNotFound": "napari_sbd.core.columns",
    "analyse_frame": "napari_sbd.core.analysis",
    "auto_contrast": "napari_sbd.core.selection",
    "auto_model": "napari_sbd.core.selection",
    "auto_read": "napari_sbd.core.selection",
    "choose_bundled_model": "napari_sbd.core.inference",
    "estimate_contrast": "napari_sbd.core.inference",
    "column_log_likelihood_ratios": "napari_sbd.core.likelihood",
    "detect_columns": "napari_sbd.core.columns",
    "effective_filter": "napari_sbd.core.jacobian",
    "estimate_vacuum_level": "napari_sbd.core.likelihood",
    "likelihood_map": "napari_sbd.core.likelihood",
    "link_columns": "napari_sbd.core.tracking",
    "load_checkpoint": "napari_sbd.core.checkpoint",
    "load_model": "napari_sbd.core.inference",
    "poisson_noise": "napari_sbd.core.noise",
    "psnr": "napari_sbd.core.metrics",
    "read_tracks": "napari_sbd.core.tracking",
    "save_checkpoint": "napari_sbd.core.checkpoint",
    "ssim": "napari_sbd.core.metrics",
    "structure_recovery": "napari_sbd.core.columns",
    "surface_mask": "napari_sbd.core.columns",
    "track_rows": "napari_sbd.core.tracking",
    "write_tracks": "napari_sbd.core.tracking",
}

try:
    __version__ = version("napari-sbd")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [
    "LLR_REAL",
    "LLR_SPURIOUS",
    "Blend",
    "CheckpointError",
    "Columns",
    "Denoiser",
    "DenoisingCancelled",
    "FrameAnalysis",
    "InputError",
    "LatticeNotFound",
    "analyse_frame",
    "auto_contrast",
    "auto_model",
    "auto_read",
    "choose_bundled_model",
    "column_log_likelihood_ratios",
    "detect_columns",
    "effective_filter",
    "estimate_contrast",
    "estimate_vacuum_level",
    "likelihood_map",
    "link_columns",
    "load_checkpoint",
    "load_model",
    "poisson_noise",
    "psnr",
    "read_tracks",
    "save_checkpoint",
    "ssim",
    "structure_recovery",
    "surface_mask",
    "track_rows",
    "write_tracks",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_sbd' has no attribute {name!r}")


def __dir__() -> list[str]:
    """List the public names with the module's own."""
    return sorted(set(globals()) | set(_LAZY))
