"""Property tests over the public API's array inputs (hypothesis).

Whatever array a user passes (any shape, dtype and values, NaN, infinities,
negatives, huge numbers included), a public function returns a result of the
right shape and dtype or raises one of our errors (ValueError subclasses with a
message), never another exception, and never modifies the caller's array.
"""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from napari_sbd.core.inference import Denoiser  # noqa: E402

DTYPES = st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64,
                          np.bool_, np.complex64])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=40)
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def arrays():
    return DTYPES.flatmap(lambda dt: hnp.arrays(dt, SHAPES, elements=_elements(dt)))


def _elements(dt):
    if np.dtype(dt).kind == "f":
        return st.floats(allow_nan=True, allow_infinity=True, width=np.dtype(dt).itemsize * 8)
    if np.dtype(dt).kind == "c":
        return st.complex_numbers(allow_nan=True, allow_infinity=True, width=64)
    return None  # hypothesis' full range for the integer and bool dtypes


def _no_foreign_exception(call, arr):
    before = arr.copy()
    try:
        result = call(arr)
    except ValueError as exc:  # ours: InputError, CheckpointError, ... all derive from it
        assert str(exc), "an error without a message"
        result = None
    np.testing.assert_array_equal(arr, before)  # the caller's array is never modified
    return result


@pytest.fixture(scope="module")
def model():
    import torch

    from napari_sbd.core.models import BiasFreeUNet

    torch.manual_seed(0)
    return Denoiser(BiasFreeUNet(scales=2, base=4).eval(), {"dose": 0.45}, device="cpu")


@PROPERTY
@given(arr=arrays())
def test_denoise_any_array(model, arr):
    out = _no_foreign_exception(model.denoise, arr)
    if out is not None:
        assert out.shape == arr.shape and out.dtype == np.float32
        assert np.isfinite(out).all()


@PROPERTY
@given(arr=arrays())
def test_poisson_noise_any_array(arr):
    from napari_sbd.core.noise import poisson_noise

    out = _no_foreign_exception(lambda a: poisson_noise(a, rng=0), arr)
    if out is not None:
        assert out.shape == arr.shape and out.dtype == np.float32 and (out >= 0).all()


@PROPERTY
@given(arr=arrays())
def test_detect_columns_any_array(arr):
    from napari_sbd.core.columns import detect_columns

    cols = _no_foreign_exception(detect_columns, arr)
    if cols is not None:
        assert cols.centres.ndim == 2 and cols.centres.shape[1] == 2


@PROPERTY
@given(arr=arrays())
def test_llr_any_raw_array(arr):
    from napari_sbd.core.likelihood import column_log_likelihood_ratios

    den = np.full(arr.shape, 0.45, np.float32) if arr.ndim else np.float32(0.45)
    out = _no_foreign_exception(
        lambda a: column_log_likelihood_ratios(a, den, np.array([[5.0, 5.0]]), 0.45), arr)
    if out is not None:
        assert out.shape == (1,)


@PROPERTY
@given(arr=arrays())
def test_psnr_any_pair(arr):
    from napari_sbd.core.metrics import psnr

    out = _no_foreign_exception(lambda a: psnr(a, a), arr)
    if out is not None:
        assert np.ndim(out) in (0, 1)
