"""core.tracking: columns linked through a movie, the movie's table and its units."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sbd.core.tracking import TRACK_FIELDS, UNITS, link_columns, read_tracks, track_rows, write_tracks

PX = 6.1  # pm; Pt columns about 2.4 A = 40 px apart


def _movie(n_frames=10, seed=0):
    """A 5x5 lattice drifting 0.1 A per frame with 0.05 A jitter; the truth's ids per frame."""
    rng = np.random.default_rng(seed)
    base = np.mgrid[100:300:40, 100:300:40].reshape(2, -1).T.astype(float)
    frames, ids = [], []
    for t in range(n_frames):
        pts = base + t * 10 / PX * np.array([1.0, 0.5]) + rng.normal(0, 5 / PX, base.shape)
        keep = np.ones(len(base), bool)
        if t == 4:
            keep[7] = False  # column 7 fades for one frame
        order = rng.permutation(np.flatnonzero(keep))  # detections come in any order
        frames.append(pts[order])
        ids.append(order)
    return frames, ids


def test_the_same_column_keeps_its_track_through_drift_and_a_missing_frame():
    frames, truth = _movie()
    tracks = link_columns(frames, PX)
    # one-to-one with the true columns: each true column is one track, in every frame
    mapping = {}
    for got, true in zip(tracks, truth):
        for g, t in zip(got, true):
            assert mapping.setdefault(int(t), int(g)) == int(g)
    assert len(set(mapping.values())) == 25 and max(max(t) for t in tracks) == 24


def test_memory_and_reach_decide_what_is_one_column():
    frames, _ = _movie()
    # without memory, the column missing in frame 4 comes back as a new track
    assert max(max(t) for t in link_columns(frames, PX, memory=0)) == 25
    # a column that jumps further than the reach is a new one, never its neighbour
    jump = [np.array([[100.0, 100.0], [100.0, 140.0]]), np.array([[100.0, 125.0], [100.0, 140.0]])]
    a, b = link_columns(jump, PX, max_displacement_a=0.8)
    assert list(a) == [0, 1] and list(b) == [2, 1]
    with pytest.raises(ValueError, match="max_displacement_a"):
        link_columns(jump, PX, max_displacement_a=0)


def test_movie_table_csv_hdf5_units_and_one_column_in_three_lines(tmp_path):
    h5py = pytest.importorskip("h5py")
    frames, _ = _movie(4)
    tables = [[{"frame": t, "y_nm": r * PX / 1000, "x_nm": c * PX / 1000, "position_error_pm": 1.0,
                "row_px": r, "col_px": c, "sigma_a": 0.4, "peak_counts": 0.6, "contrast_counts": 0.2,
                "intensity_counts_px": 5.0 + t, "llr": 0.01 * t, "class": "real"}
               for r, c in pts] for t, pts in enumerate(frames)]
    rows = track_rows(tables, PX)
    assert len(rows) == sum(len(f) for f in frames) and list(rows[0]) == TRACK_FIELDS
    assert [r["track"] for r in rows] == sorted(r["track"] for r in rows)
    csv_path, h5_path = write_tracks(tmp_path / "columns.csv", rows)
    t = read_tracks(csv_path)
    one = t[t.track == 12]  # one column's story
    assert list(one.frame) == [0, 1, 2, 3] and list(one.intensity_counts_px) == [5.0, 6.0, 7.0, 8.0]
    with h5py.File(h5_path) as fh:
        ds = fh["columns"]
        assert ds.shape == (len(rows),) and ds.attrs["units:y_nm"] == "nm"
        assert all(ds.attrs[f"units:{f}"] == UNITS[f] for f in TRACK_FIELDS)
        np.testing.assert_allclose(ds["llr"][:], t.llr.to_numpy())
