"""Choosing between denoisers from the counts themselves: held-out counts by Poisson thinning.

Splitting each pixel's counts y into y1 ~ Binomial(y, p) and y2 = y - y1
gives two *independent* Poisson frames with means p*lambda and
(1 - p)*lambda (binomial thinning of a Poisson count). A denoiser run on
y1 / p (nearly the frame's own dose for p = 0.9) predicts lambda; the Poisson
log-likelihood of the held-out y2 under (1 - p) times that prediction scores
how well it did, with no clean image and no noise it has seen. Between two
models, the one with the higher held-out likelihood is the better denoiser of
this frame (the log-likelihood is, up to terms that do not depend on the
model, a Poisson deviance between the prediction and the truth).

Model "auto" uses it for the contrast of the columns where that decides the
model: at the default's point there are a white-contrast (the default) and a
black-contrast model, and the skew of the raw counts
(:func:`~napari_sbd.core.inference.estimate_contrast`) misreads frames whose
columns are faint. On 60 simulated frames of the training structures (20
white, 20 black, 20 intermediate, 0.45 counts/pixel, 6.1 pm) the skew chose
the worse of the two models on 25 and lost 0.19 dB on average against the
better choice (0.52 dB on intermediate frames); the held-out likelihood,
summed over three splits, chose the worse on 14, losing 0.07 dB
(``benchmarks/contrast_choice.py``, docs/contrast-choice.md). One-off probes
of session 18 on the same frames, not kept as scripts: one split alone lost
0.13 dB, ``p`` = 0.5 0.24 dB, the squared error of the held-out counts
instead of their likelihood 0.15 dB, a 512-pixel centre crop 0.22 dB (on a
second sample).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sbd.core.inference import (
    Denoiser,
    bundled_model_path,
    estimate_contrast,
    in_default_window,
    load_model,
)

__all__ = ["KEEP_FRACTION", "auto_contrast", "contrast_pair_installed", "held_out_log_likelihood"]

KEEP_FRACTION = 0.9  # of the counts the model sees; the rest are held out
SPLITS = 3  # thinnings summed: two network passes each
MAX_SIDE = 1024  # pixels a side of the frame (centre) that the choice reads
CONTRAST_MODELS = {"white": "default", "black": "black"}  # bundled model of each contrast


def contrast_pair_installed() -> bool:
    """Whether both bundled models auto chooses between by contrast are installed."""
    return all(bundled_model_path(name).exists() for name in CONTRAST_MODELS.values())


def held_out_log_likelihood(
    model: Denoiser, frame: np.ndarray, *, keep: float = KEEP_FRACTION, seed: int = 0,
    pixel_size_pm: float | None = None,
) -> float:
    """Poisson log-likelihood of held-out counts of ``frame`` under ``model``'s prediction.

    Parameters
    ----------
    model : Denoiser
        The denoiser to score.
    frame : numpy.ndarray
        (H, W) raw counts (non-negative integers, as a counting detector gives them).
    keep : float
        Fraction of the counts the model sees (binomial thinning); the others are
        held out and scored.
    seed : int
        Seed of the thinning: the same frame and seed give the same split, so
        models compared on one frame see the same counts.
    pixel_size_pm : float, optional
        The frame's pixel size, as given to :meth:`Denoiser.denoise`.

    Returns
    -------
    float
        Sum over pixels of ``y2 log(mu) - mu`` with ``mu = (1 - keep) / keep``
        times the model's output for the kept counts (nats; only differences
        between models on the same frame and seed mean something).
    """
    if not 0 < keep < 1:
        raise ValueError(f"keep must be between 0 and 1 (got {keep})")
    counts = np.rint(np.clip(np.asarray(frame, dtype=np.float64), 0, None)).astype(np.int64)
    kept = np.random.default_rng(seed).binomial(counts, keep)
    held = counts - kept
    pred = model.denoise((kept / keep).astype(np.float32), pixel_size_pm=pixel_size_pm)
    # the network can output zero or a little below where a pixel is dark: a floor far under
    # any count rate keeps the logarithm finite without changing which model wins
    mu = np.clip(pred.astype(np.float64), 1e-4, None) * (1 - keep)
    return float(np.sum(held * np.log(mu) - mu))


def _first_frame(frames: Any) -> np.ndarray:
    shape = tuple(getattr(frames, "shape", np.shape(frames)))
    frame = np.asarray(frames if len(shape) == 2 else frames[0], dtype=np.float32)
    h, w = frame.shape
    r0, c0 = max(0, (h - MAX_SIDE) // 2), max(0, (w - MAX_SIDE) // 2)
    return frame[r0:r0 + MAX_SIDE, c0:c0 + MAX_SIDE]


def auto_contrast(frames: Any, pixel_size_pm: float | None = None, dose: float | None = None,
                  *, device: str = "auto", models: dict[str, Denoiser] | None = None) -> str | None:
    """Return the contrast, "white" or "black", that model "auto" denoises ``frames`` as.

    Where the data sit in the default's window
    (:func:`~napari_sbd.core.inference.in_default_window`) and both the default and the
    black-contrast model are installed, the one whose output better predicts
    held-out counts of the first frame (:func:`held_out_log_likelihood` summed
    over :data:`SPLITS` thinnings of its centre 1024 x 1024 pixels at most; two
    network passes each). Elsewhere only
    white-contrast models exist and the contrast only words auto's reason:
    the skew of the counts (:func:`estimate_contrast`), no network run.

    Parameters
    ----------
    frames : array-like
        (H, W) or (T, H, W) counts.
    pixel_size_pm : float, optional
        Pixel size, picometres (unknown: the default's own).
    dose : float, optional
        Mean counts per pixel (:func:`estimate_dose`; unknown: the default's own).
    device : str
        Where the two models run ("auto": CUDA when available).
    models : dict, optional
        The loaded models by contrast, {"white": ..., "black": ...} (the
        bundled ones when omitted).

    Returns
    -------
    str or None
        "white" or "black"; None where :func:`estimate_contrast` cannot tell
        and no models decide.
    """
    if not in_default_window(dose, pixel_size_pm) or (models is None
                                                      and not contrast_pair_installed()):
        return estimate_contrast(frames, pixel_size_pm)
    if models is None:
        models = {c: load_model(name, device=device) for c, name in CONTRAST_MODELS.items()}
    frame = _first_frame(frames)
    if min(frame.shape) < 64:  # too few counts to tell two models apart
        return estimate_contrast(frames, pixel_size_pm)
    # one split's verdict is noisy where the two models are close: summed over a few splits
    scores = {c: sum(held_out_log_likelihood(m, frame, pixel_size_pm=pixel_size_pm, seed=s)
                     for s in range(SPLITS)) for c, m in models.items()}
    return max(scores, key=lambda c: scores[c])
