"""napari-sbd: simulation-based deep denoising of ultra-low-dose electron microscopy.

The public API (docs/index.md has the whole guide)::

    import napari_sbd as sbd
    model = sbd.load_model("default")      # or a checkpoint path
    den = model.denoise(frames)            # (H, W) or (T, H, W) counts -> float32
    sbd.psnr(clean, den); sbd.ssim(clean, den)
"""

from importlib.metadata import PackageNotFoundError, version

from napari_sbd.core.analysis import FrameAnalysis, analyse_frame
from napari_sbd.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_sbd.core.columns import (
    Columns,
    LatticeNotFound,
    detect_columns,
    structure_recovery,
    surface_mask,
)
from napari_sbd.core.inference import Denoiser, DenoisingCancelled, load_model
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

try:
    __version__ = version("napari-sbd")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [
    "LLR_REAL",
    "LLR_SPURIOUS",
    "CheckpointError",
    "Columns",
    "Denoiser",
    "DenoisingCancelled",
    "FrameAnalysis",
    "InputError",
    "LatticeNotFound",
    "analyse_frame",
    "column_log_likelihood_ratios",
    "detect_columns",
    "effective_filter",
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
