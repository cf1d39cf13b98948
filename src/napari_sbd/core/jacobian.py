"""The effective filter: the gradient of one denoised pixel with respect to the input.

For a bias-free network the denoised value at (row, col) is exactly the dot
product of this filter with the noisy input (the network is positively
homogeneous of degree one, so by Euler's identity f(y) = J(y) y): the filter
*is* the local linear denoiser the network applies there (Mohan et al.; the
Microsc. Microanal. paper, Fig. 8).

It is computed by one backward pass on a crop, not on the whole frame: the
output pixel depends only on inputs within the network's receptive radius,
and a crop of the padded frame that contains that neighbourhood and starts on
the network's pooling grid reproduces the whole-frame computation for that
pixel exactly (to float rounding). The crop is gathered from the frame through
the same mirror padding as :meth:`Denoiser.denoise_frame`, inside the autograd
graph, so the gradient of a mirrored pixel lands on the frame pixel it copies.

For the ensemble ("best" quality: the network averaged over the 8 rotations
and flips of the frame), each term T^-1 f(T y) is bias-free too, so its filter
is the filter of f at the transformed pixel, transformed back; the ensemble's
filter is their average and f(y) = J(y) y still holds exactly.

A frame finer than a model's pixel-size range is denoised as U f(B y) (B sums
k x k blocks, U interpolates back bilinearly and divides by k^2; both linear):
its filter is the filters of f at the (at most four) binned pixels U reads,
weighted as U weights them, then spread back over each bin's k x k pixels. The
identity f(y) = J(y) y holds for that pipeline too.

A frame with more counts than the model knows is split into parts y_k at its
dose (:meth:`Denoiser.split_plan`: binomial thinning, random, seeded by the
frame) and estimated as sum_k f(y_k) / keep. Each part's f(y_k) = J_k y_k
holds exactly, and each part is keep / parts of the frame on average, so the
filter shown is the average of the parts' filters (each split of the
ensemble transformed back): the identity holds for every part, and for the
frame to the noise of the split.

A blend of models (:class:`~napari_sbd.core.inference.Blend`) averages its
members' outputs with fixed weights: its filter is their filters (each its
member's whole computation) averaged with the same weights, and the identity
holds for it as for each member.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from napari_sbd.core.inference import (
    EDGE_PAD,
    Blend,
    Denoiser,
    bin_counts,
    dihedral,
    dihedral_inverse,
    is_out_of_memory,
    padded_index,
)
from napari_sbd.core.inputs import as_frame

__all__ = ["effective_filter", "filter_crop"]


def filter_crop(
    shape: tuple[int, int], pixel: tuple[int, int], radius: int, multiple: int
) -> tuple[int, int, int, int]:
    """Crop (r0, r1, c0, c1) that computes ``pixel`` exactly.

    Parameters
    ----------
    shape : tuple of int
        Frame (H, W).
    pixel : tuple of int
        (row, col).
    radius : int
        Receptive radius of the network, pixels.
    multiple : int
        The network's pooling grid (crop starts are multiples of it).

    Returns
    -------
    tuple of int
        Row and column bounds in frame coordinates (end exclusive).
    """
    (r0, r1), (c0, c1) = (
        (max(0, (p - radius) // multiple * multiple),
         min(n, int(math.ceil((p + radius + 1) / multiple) * multiple)))
        for n, p in zip(shape, pixel)
    )
    return r0, r1, c0, c1


def effective_filter(
    model: Denoiser, noisy: np.ndarray, pixel: tuple[int, int], *, ensemble: bool = False,
    pixel_size_pm: float | None = None, dose: float | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Gradient of the denoised pixel ``(row, col)`` with respect to the noisy frame.

    Parameters
    ----------
    model : Denoiser
        A loaded model (:func:`napari_sbd.load_model`).
    noisy : numpy.ndarray
        The (H, W) noisy frame that was denoised, counts.
    pixel : tuple of int
        (row, col) of the output pixel.
    ensemble : bool
        The filter of the 8-fold rotation/flip ensemble
        (``Denoiser.denoise(..., ensemble=True)``) instead of the plain network.
    pixel_size_pm : float, optional
        The frame's pixel size, as given to ``Denoiser.denoise``: a frame finer
        than the model's pixel-size range was binned into it, and the filter is
        the one of that whole computation (binning, network, interpolation back).
    dose : float, optional
        The counts per pixel its binning rule read, as given to
        ``Denoiser.denoise_frame``: for a frame of a movie, the movie's
        (:func:`~napari_sbd.core.inference.binning_dose` of the stack, what
        ``Denoiser.denoise`` reads); None: the frame's own mean.

    Returns
    -------
    filt : numpy.ndarray
        float32 filter over the crop (zero outside it, so only the crop is returned).
    origin : tuple of int
        (row, col) of the crop's top-left pixel in the frame.
    """
    frame = as_frame(noisy, model_dose=model.max_dose)  # the same counts check as denoising
    h, w = frame.shape
    r, c = (int(v) for v in pixel)
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"pixel ({r}, {c}) is outside the {h}x{w} frame")
    if isinstance(model, Blend):
        return _blend_filter(model, frame, (r, c), ensemble, pixel_size_pm, dose)
    k = model.frame_binning(frame, pixel_size_pm, dose)  # as Denoiser.denoise_frame bins it
    if k > 1:
        return _binned_filter(model, frame, (r, c), k, ensemble)
    return _frame_filter(model, frame, (r, c), ensemble)


def _frame_filter(model: Denoiser, frame: np.ndarray, pixel: tuple[int, int],
                  ensemble: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """Return the filter of ``Denoiser.denoise_frame`` on a frame it does not bin (module docstring)."""
    plan = model.split_plan(frame, ensemble)  # a split, the ensemble, or both
    if plan is not None:
        return _average_filter(model, plan[0], pixel, frame.shape)
    return _filter(model, frame, pixel)


def _blend_filter(model: Blend, frame: np.ndarray, pixel: tuple[int, int], ensemble: bool,
                  pixel_size_pm: float | None, dose: float | None,
                  ) -> tuple[np.ndarray, tuple[int, int]]:
    """Return the members' filters averaged with the blend's weights, on the union of their crops."""
    acc = np.zeros(frame.shape, np.float64)
    for member, w in model.members:
        filt, (r0, c0) = effective_filter(member, frame, pixel, ensemble=ensemble,
                                          pixel_size_pm=pixel_size_pm, dose=dose)
        acc[r0 : r0 + filt.shape[0], c0 : c0 + filt.shape[1]] += w * filt
    return _nonzero_crop(acc, pixel)


def _nonzero_crop(acc: np.ndarray, pixel: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Return the smallest crop of ``acc`` holding all its nonzero values, float32, and its origin."""
    rows, cols = np.nonzero(acc)
    if len(rows) == 0:
        return np.zeros((1, 1), np.float32), pixel
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return acc[r0:r1, c0:c1].astype(np.float32), (int(r0), int(c0))


def _unbin_weights(p: int, k: int, n_binned: int) -> list[tuple[int, float]]:
    """Return the binned pixels and weights :func:`~napari_sbd.core.inference.unbin` reads for p.

    Bilinear interpolation at ``(p + 0.5) / k - 0.5``, coordinates beyond the
    first and last binned pixel clamped to them (``mode="nearest"``).
    """
    x = min(max((p + 0.5) / k - 0.5, 0.0), n_binned - 1.0)
    lo = math.floor(x)
    t = x - lo
    out = [(lo, 1.0 - t)]
    if t > 0 and lo + 1 < n_binned:
        out.append((lo + 1, t))
    return out


def _binned_filter(model: Denoiser, frame: np.ndarray, pixel: tuple[int, int], k: int,
                   ensemble: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """Return the filter of unbin(f(bin(y))) at ``pixel`` (see the module docstring)."""
    h, w = frame.shape
    binned = bin_counts(frame, k)
    hb, wb = binned.shape
    acc = np.zeros((hb, wb), np.float64)
    for qr, wr in _unbin_weights(pixel[0], k, hb):
        for qc, wc in _unbin_weights(pixel[1], k, wb):
            filt, (r0, c0) = _frame_filter(model, binned, (qr, qc), ensemble)
            acc[r0 : r0 + filt.shape[0], c0 : c0 + filt.shape[1]] += wr * wc * filt
    acc /= k * k
    # each bin summed its k x k pixels (the frame mirror-padded to a multiple of k, as
    # bin_counts does): every pixel, mirrored copies included, gets its bin's weight
    src_r = np.pad(np.arange(h), (0, -h % k), mode="symmetric")
    src_c = np.pad(np.arange(w), (0, -w % k), mode="symmetric")
    full = np.zeros((h, w), np.float64)
    rr, cc = np.meshgrid(src_r, src_c, indexing="ij")
    np.add.at(full, (rr, cc), np.repeat(np.repeat(acc, k, axis=0), k, axis=1))
    return _nonzero_crop(full, pixel)


def _average_filter(model: Denoiser, entries: Iterable[tuple[int, bool, np.ndarray]],
                    pixel: tuple[int, int],
                    shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Average of the filters on transformed frames, transformed back, on the union of their crops.

    ``entries``: (turns, flip, the transformed frame) as in ``Denoiser.split_plan``.
    """
    h, w = shape
    index = np.arange(h * w).reshape(h, w)
    acc = np.zeros((h, w), np.float64)
    n = 0
    for turns, flip, t_frame in entries:
        n += 1
        t_index = dihedral(index, turns, flip)
        tr, tc = (int(v[0]) for v in np.nonzero(t_index == pixel[0] * w + pixel[1]))
        filt, (r0, c0) = _filter(model, t_frame, (tr, tc))
        full = np.zeros(t_index.shape, np.float64)
        full[r0 : r0 + filt.shape[0], c0 : c0 + filt.shape[1]] = filt
        acc += dihedral_inverse(full, turns, flip)
    acc /= n
    return _nonzero_crop(acc, pixel)


def _filter(model: Denoiser, frame: np.ndarray,
            pixel: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    h, w = frame.shape
    r, c = pixel
    m, e = model.size_multiple, EDGE_PAD
    rows, cols = padded_index(h, m, e), padded_index(w, m, e)
    # the crop in padded coordinates, and the frame block its pixels come from
    p0, p1, q0, q1 = filter_crop((len(rows), len(cols)), (r + e, c + e), model.receptive_radius, m)
    ri, ci = rows[p0:p1], cols[q0:q1]
    r0, c0 = int(ri.min()), int(ci.min())
    block = frame[r0 : int(ri.max()) + 1, c0 : int(ci.max()) + 1]
    x = torch.from_numpy(np.ascontiguousarray(block)).to(model.device).requires_grad_(True)
    ri_t = torch.as_tensor(ri - r0, device=model.device)
    ci_t = torch.as_tensor(ci - c0, device=model.device)
    xp = x[ri_t][:, ci_t][None, None]  # gathered inside the graph: repeated pixels sum their gradients
    if model.channels_last:
        xp = xp.contiguous(memory_format=torch.channels_last)
    try:
        with torch.enable_grad():
            y = model.network(xp, model.level_of(frame))  # the frame's level, not the crop's
            y[0, 0, r + e - p0, c + e - q0].backward()
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        where = "GPU" if model.device.type == "cuda" else "CPU"
        # the crop must hold the whole receptive field for the filter to be exact: no smaller try
        raise MemoryError(
            f"not enough {where} memory for the effective filter: the network's gradient over "
            f"the {xp.shape[-2]}x{xp.shape[-1]} pixels it reads around the pixel does not fit; "
            "free memory (other jobs, other programs)"
            + (", or load the model on the CPU" if where == "GPU" else "")) from None
    assert x.grad is not None  # x requires grad and the output depends on it
    return x.grad.detach().cpu().numpy().astype(np.float32), (r0, c0)
