"""core.analysis: one frame's columns, LLRs, map and table, shared by the dock and the batch job."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_sbd.core.analysis import analyse_frame, write_columns_csv
from napari_sbd.core.likelihood import TABLE_FIELDS, column_log_likelihood_ratios
from napari_sbd.core.noise import poisson_noise
from napari_sbd.core.phantom import pt_on_ceo2_phantom


@pytest.fixture(scope="module")
def frame():
    ph = pt_on_ceo2_phantom((384, 384), seed=2)
    return ph, poisson_noise(ph.image, rng=5)


def test_a_frame_gives_columns_llrs_map_and_table_in_nm(frame, tmp_path):
    ph, raw = frame
    res = analyse_frame(raw, ph.image, ph.pixel_size_pm, frame=3, vacuum_level=0.45)
    n = len(res.columns)
    assert n >= 0.5 * len(ph.columns) and res.llr_error is None  # (detection quality: issue 19)
    # the LLRs are the likelihood module's, on the same columns
    np.testing.assert_allclose(res.llr, column_log_likelihood_ratios(raw, ph.image, res.columns, 0.45))
    real, spurious, _ = res.counts()
    assert sum(res.counts()) == n and real >= n // 2 and spurious <= 2  # an oracle denoiser
    assert res.map.shape == raw.shape and np.isfinite(res.map).sum() > 0
    rows = res.table()
    assert len(rows) == n and {r["frame"] for r in rows} == {3}
    r0, c0 = res.columns.centres[0]
    nm = ph.pixel_size_pm / 1000
    assert (rows[0]["y_nm"], rows[0]["x_nm"]) == pytest.approx((r0 * nm, c0 * nm), abs=1e-5)
    path = write_columns_csv(tmp_path / "cols.csv", rows)
    with open(path) as fh:
        back = list(csv.DictReader(fh))
    assert list(back[0]) == TABLE_FIELDS and len(back) == n


def test_llrs_that_cannot_be_computed_raise_or_are_left_empty_with_the_reason(frame):
    ph, raw = frame
    not_counts = raw + 0.37  # not integer counts: no likelihood
    with pytest.raises(ValueError, match="integer"):
        analyse_frame(not_counts, ph.image, ph.pixel_size_pm, vacuum_level=0.45)
    res = analyse_frame(not_counts, ph.image, ph.pixel_size_pm, vacuum_level=0.45, strict=False)
    assert len(res.columns) > 0 and np.isnan(res.llr).all() and "integer" in res.llr_error
    assert np.isnan(res.map).all()


def test_a_movie_is_analysed_frame_by_frame_and_a_bad_frame_does_not_stop_it(frame):
    from napari_sbd.core.analysis import iter_analyse

    ph, raw = frame
    den = np.stack([ph.image, np.full_like(ph.image, np.nan), ph.image])  # frame 1: NaN
    out = list(iter_analyse(np.stack([raw] * 3), den, ph.pixel_size_pm, vacuum_level=0.45))
    assert [i for i, _ in out] == [0, 1, 2]
    assert isinstance(out[1][1], ValueError) and "NaN" in str(out[1][1])
    assert len(out[0][1].columns) == len(out[2][1].columns) > 0
