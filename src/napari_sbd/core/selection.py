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
the worse of the two models on 26 and lost 0.36 dB on average against the
better choice (0.95 dB on intermediate frames, all 20 misread); the held-out
likelihood, summed over three splits, chose the worse on 16, losing 0.11 dB
(0.22 on intermediate frames; ``benchmarks/contrast_choice.py``,
docs/contrast-choice.md; the default of session 23: with that of session 21,
25 and 0.19 dB, 14 and 0.07 dB). One-off probes
of session 18 on the same frames, not kept as scripts: one split alone lost
0.13 dB, ``p`` = 0.5 0.24 dB, the squared error of the held-out counts
instead of their likelihood 0.15 dB, a 512-pixel centre crop 0.22 dB (on a
second sample).

Outside the default's window auto chooses the same way between the two
white-contrast envelope models (the envelope model and the larger high-dose
one), which the dose rule of
:func:`~napari_sbd.core.inference.choose_bundled_model` otherwise decides: on
the 12 white validation frames of benchmarks/envelope.py at its 13 settings
outside the window the rule lost 0.19 dB on average against the better of the
two (0.80 and 0.99 dB at 8 and 10 pm, where a pixel holds few counts but the
larger network is better), the held-out likelihood 0.03
(``benchmarks/dose_choice.py``, docs/dose-choice.md). With the high-dose model
of session 23, ahead of the envelope model from 0.15 counts/pixel up, both
lose 0.03 dB.

Where the default splits frames (more counts per pixel than it was trained at)
at its own pixel sizes, the blends of the default and the high-dose model
(:data:`~napari_sbd.core.inference.BLENDS`) join the candidates: a blend's
prediction is its members' predictions averaged, so it costs no network pass
of its own. On 30 validation frames at 0.6-4 counts/pixel the choice lost 0.02 dB
against the best candidate of each frame; always taking the 50/50 blend lost
0.09 dB (``benchmarks/auto_choice.py``, docs/auto-choice.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sbd.core.inference import (
    AUTO_DEFAULT_PIXEL_PM,
    BLENDS,
    ENVELOPE_MODELS,
    SPLIT_ABOVE,
    Denoiser,
    binning_dose,
    blend_installed,
    bundled_model_path,
    choose_bundled_model,
    estimate_contrast,
    in_default_window,
    load_blend,
    load_model,
    network_once,
)
from napari_sbd.core.units import PAPERS_DOSE

__all__ = [
    "KEEP_FRACTION",
    "auto_candidates",
    "auto_contrast",
    "auto_model",
    "auto_read",
    "blend_candidates",
    "contrast_pair_installed",
    "held_out_choice",
    "held_out_log_likelihood",
    "load_candidates",
]

KEEP_FRACTION = 0.9  # of the counts the model sees; the rest are held out
SPLITS = 3  # thinnings summed: two network passes each
MAX_SIDE = 1024  # pixels a side of the frame (centre) that the choice reads
CONTRAST_MODELS = {"white": "default", "black": "black"}  # bundled model of each contrast


def contrast_pair_installed() -> bool:
    """Whether both bundled models auto chooses between by contrast are installed."""
    return all(bundled_model_path(name).exists() for name in CONTRAST_MODELS.values())


def auto_candidates(dose: float | None, pixel_size_pm: float | None) -> tuple[str, ...]:
    """Bundled models auto chooses between by held-out counts for data of this dose and pixel size.

    Inside the default's window
    (:func:`~napari_sbd.core.inference.in_default_window`): the default and its
    black-contrast sibling; outside it: the envelope and the high-dose model;
    each pair only where both are installed. Empty: the rules of
    :func:`~napari_sbd.core.inference.choose_bundled_model` decide alone (no network run).
    """
    names = (tuple(CONTRAST_MODELS.values()) if in_default_window(dose, pixel_size_pm)
             else ENVELOPE_MODELS)
    if not all(bundled_model_path(n).exists() for n in names):
        return ()
    return names + blend_candidates(dose, pixel_size_pm)


def blend_candidates(dose: float | None, pixel_size_pm: float | None) -> tuple[str, ...]:
    """Return the blends auto offers for data of this dose and pixel size (:data:`BLENDS`).

    Where the default splits frames (a dose above its 0.45 counts/pixel by
    :data:`~napari_sbd.core.inference.SPLIT_ABOVE`) and the pixel size is in the
    default's window (or unknown), each blend whose models are installed.
    """
    if dose is None or not np.isfinite(dose) or dose <= PAPERS_DOSE * SPLIT_ABOVE:
        return ()
    plo, phi = AUTO_DEFAULT_PIXEL_PM
    if pixel_size_pm is not None and not plo <= pixel_size_pm <= phi:
        return ()
    return tuple(n for n in BLENDS if blend_installed(n))


def load_candidates(names: tuple[str, ...] | list[str], device: str = "auto",
                    loaded: dict[str, Denoiser] | None = None) -> dict[str, Denoiser]:
    """Load bundled models and blends by name, each model once (``loaded``: already loaded).

    A blend is built from the models of ``loaded`` and of ``names`` where they are
    there (:func:`~napari_sbd.core.inference.load_blend`), so that
    :func:`held_out_choice` runs each network once per split. ``loaded`` gains what
    is loaded here.
    """
    loaded = loaded if loaded is not None else {}
    for n in sorted(names, key=lambda n: n in BLENDS):  # the models first, then their blends
        if n not in loaded:
            loaded[n] = (load_blend(n, device=device, loaded=loaded) if n in BLENDS
                         else load_model(n, device=device))
    return {n: loaded[n] for n in names}


def held_out_log_likelihood(
    model: Denoiser, frame: np.ndarray, *, keep: float = KEEP_FRACTION, seed: int = 0,
    pixel_size_pm: float | None = None, dose: float | None = None,
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
    dose : float, optional
        The counts per pixel the model's binning rule reads, as given to
        :meth:`Denoiser.denoise` (None: the whole frame's own mean, not the kept
        counts': the model is binned as it will be when it denoises the frame).

    Returns
    -------
    float
        Sum over pixels of ``y2 log(mu) - mu`` with ``mu = (1 - keep) / keep``
        times the model's output for the kept counts (nats; only differences
        between models on the same frame and seed mean something).
    """
    kept, held = _thin(frame, keep, seed)
    if dose is None and pixel_size_pm:
        dose = binning_dose(frame)
    return _score(_predict(model, kept, keep, pixel_size_pm, dose), held, keep)


def _thin(frame: np.ndarray, keep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Binomial thinning of a frame's counts: (kept, held out)."""
    if not 0 < keep < 1:
        raise ValueError(f"keep must be between 0 and 1 (got {keep})")
    counts = np.rint(np.clip(np.asarray(frame, dtype=np.float64), 0, None)).astype(np.int64)
    kept = np.random.default_rng(seed).binomial(counts, keep)
    return kept, counts - kept


def _predict(model: Denoiser, kept: np.ndarray, keep: float,
             pixel_size_pm: float | None, dose: float | None) -> np.ndarray:
    """Return the model's estimate of the whole frame's count rate from the kept counts.

    ``dose``: what the binning rule reads (the whole frame's or movie's, so that the
    kept counts are binned as the frame will be).
    """
    # the kept counts as counts (a bias-free network: f(kept) / keep = f(kept / keep)), so that
    # a model splits them to its dose as it splits a frame (Denoiser.dose_split)
    pred = model.denoise(kept.astype(np.float32), pixel_size_pm=pixel_size_pm,
                         dose=dose) / np.float32(keep)
    return pred.astype(np.float64)


def _score(pred: np.ndarray, held: np.ndarray, keep: float) -> float:
    """Poisson log-likelihood of the held-out counts under the prediction (nats)."""
    # the network can output zero or a little below where a pixel is dark: a floor far under
    # any count rate keeps the logarithm finite without changing which model wins
    mu = np.clip(pred, 1e-4, None) * (1 - keep)
    return float(np.sum(held * np.log(mu) - mu))


def _first_frame(frames: Any) -> np.ndarray:
    shape = tuple(getattr(frames, "shape", np.shape(frames)))
    frame = np.asarray(frames if len(shape) == 2 else frames[0], dtype=np.float32)
    h, w = frame.shape
    r0, c0 = max(0, (h - MAX_SIDE) // 2), max(0, (w - MAX_SIDE) // 2)
    return frame[r0:r0 + MAX_SIDE, c0:c0 + MAX_SIDE]


def held_out_choice(frames: Any, models: dict[str, Denoiser],
                    pixel_size_pm: float | None = None) -> str | None:
    """Return the key of the model whose output best predicts held-out counts of the first frame.

    :func:`held_out_log_likelihood` summed over :data:`SPLITS` thinnings of the
    frame's centre :data:`MAX_SIDE` x :data:`MAX_SIDE` pixels at most (one network
    pass per model and split); all models see the same splits.

    Parameters
    ----------
    frames : array-like
        (H, W) or (T, H, W) counts.
    models : dict
        The candidates, by any key.
    pixel_size_pm : float, optional
        The frames' pixel size, as given to :meth:`Denoiser.denoise`.

    Returns
    -------
    str or None
        The winning key; None where the frame is too small (under 64 pixels a
        side) for the counts to tell models apart.
    """
    frame = _first_frame(frames)
    if min(frame.shape) < 64:
        return None
    # binned as the frames will be when denoised (the movie's dose, not the kept counts')
    dose = binning_dose(frames) if pixel_size_pm else None
    # one split's verdict is noisy where the models are close: summed over a few splits
    scores = dict.fromkeys(models, 0.0)
    for seed in range(SPLITS):
        kept, held = _thin(frame, KEEP_FRACTION, seed)
        preds: dict[int, np.ndarray] = {}  # by id(model): a blend reuses its members' predictions
        for k, m in models.items():
            scores[k] += _score(_predict_once(m, kept, pixel_size_pm, dose, preds), held,
                                KEEP_FRACTION)
    return max(scores, key=lambda k: scores[k])


def _predict_once(model: Denoiser, kept: np.ndarray, pixel_size_pm: float | None,
                  dose: float | None, preds: dict[int, np.ndarray]) -> np.ndarray:
    """:func:`_predict` with each network run once per split (``preds``, by id)."""
    return network_once(model, lambda m: _predict(m, kept, KEEP_FRACTION, pixel_size_pm, dose),
                        preds)


def auto_contrast(frames: Any, pixel_size_pm: float | None = None, dose: float | None = None,
                  *, device: str = "auto", models: dict[str, Denoiser] | None = None) -> str | None:
    """Return the contrast, "white" or "black", that model "auto" denoises ``frames`` as.

    Where the data sit in the default's window
    (:func:`~napari_sbd.core.inference.in_default_window`) and both the default and the
    black-contrast model are installed, the one whose output better predicts
    held-out counts of the first frame (:func:`held_out_choice`; six network
    passes). Elsewhere only white-contrast models exist and the contrast only words
    auto's reason: the skew of the counts (:func:`estimate_contrast`), no network run.
    The parameters are :func:`auto_read`'s, except that ``models`` are keyed by
    contrast, {"white": ..., "black": ...} (the bundled ones when omitted).

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
    return held_out_choice(frames, models, pixel_size_pm) or estimate_contrast(frames, pixel_size_pm)


def auto_read(frames: Any, pixel_size_pm: float | None = None, dose: float | None = None,
              *, device: str = "auto",
              models: dict[str, Denoiser] | None = None) -> tuple[str | None, str | None]:
    """Read from the counts what model "auto" chooses by: the contrast and the envelope model.

    The two read values are :func:`~napari_sbd.core.inference.choose_bundled_model`'s
    ``contrast`` and ``envelope``: ``choose_bundled_model(dose, pixel_size_pm,
    *auto_read(frames, pixel_size_pm, dose))`` is auto's choice and its reason.
    Where :func:`auto_candidates` names a pair (and maybe blends), the one whose
    output better predicts held-out counts of the first frame decides
    (:func:`held_out_choice`, two network passes per model: seconds on a CPU);
    elsewhere the skew of the counts words the contrast and no network runs.

    Parameters
    ----------
    frames : array-like
        (H, W) or (T, H, W) counts.
    pixel_size_pm : float, optional
        Pixel size, picometres (unknown: the default's own).
    dose : float, optional
        Mean counts per pixel (:func:`estimate_dose`; unknown: the default's own).
    device : str
        Where the models run when they are loaded here ("auto": CUDA when available).
    models : dict, optional
        Candidates already loaded, by bundled name (those of :func:`auto_candidates`);
        the others are loaded here (:func:`load_candidates`).

    Returns
    -------
    tuple
        (contrast, envelope): "white", "black" or None (cannot tell), and the
        white-contrast model held-out counts chose other than the default:
        "envelope" or "high-dose" outside the default's window, a blend
        ("blend-50", "blend-70") wherever one won, or None (the default, a pair
        not installed, or a frame too small to tell: the dose rule decides).
    """
    names = auto_candidates(dose, pixel_size_pm)
    if not names:
        return estimate_contrast(frames, pixel_size_pm), None
    models = load_candidates(names, device, dict(models) if models is not None else None)
    win = held_out_choice(frames, models, pixel_size_pm)
    if set(CONTRAST_MODELS.values()) <= set(names):  # the default's window: the counts say the contrast
        if win is None:
            return estimate_contrast(frames, pixel_size_pm), None
        contrast = next((c for c, n in CONTRAST_MODELS.items() if n == win), "white")
        return contrast, win if win in BLENDS else None
    return estimate_contrast(frames, pixel_size_pm), win


def auto_model(frames: Any, pixel_size_pm: float | None = None, dose: float | None = None,
               *, device: str = "auto",
               models: dict[str, Denoiser] | None = None) -> tuple[str, str]:
    """Return the bundled model auto takes for ``frames``, and why, as the tools choose it.

    :func:`auto_read`, then :func:`~napari_sbd.core.inference.choose_bundled_model`.
    ``models``: bundled models already loaded, by name (those missing of
    :func:`auto_candidates`' are loaded here); the other parameters are
    :func:`auto_read`'s.
    """
    return choose_bundled_model(dose, pixel_size_pm,
                                *auto_read(frames, pixel_size_pm, dose, device=device,
                                           models=models))
