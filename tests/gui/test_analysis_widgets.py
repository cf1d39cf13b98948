"""Columns & likelihood widget and the click-for-filter widget, end to end."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_sbd.core.jacobian import effective_filter
from napari_sbd.core.likelihood import LLR_REAL, LLR_SPURIOUS
from napari_sbd.core.phantom import pt_on_ceo2_phantom
from napari_sbd.widgets._layers import batched_update, nice_limit, sticky_limit
from napari_sbd.widgets._model import FILE_CHOICE
from napari_sbd.widgets.columns import ColumnsWidget
from napari_sbd.widgets.filter import FILTER_LAYER, PIXEL_LAYER, FilterWidget

pytestmark = pytest.mark.gui


@pytest.fixture
def scene(make_napari_viewer):
    """A raw stack and a 'denoised' stack (the clean phantom), as the denoise widget makes them."""
    viewer = make_napari_viewer()
    ph = pt_on_ceo2_phantom((256, 256), particle_radius_a=5.0, seed=4)
    rng = np.random.default_rng(0)
    raw = rng.poisson(np.broadcast_to(ph.image, (3, 256, 256))).astype(np.uint16)
    kw = dict(scale=(1, 0.061, 0.061), units=("pixel", "angstrom", "angstrom"))
    viewer.add_image(raw, name="movie", **kw)
    den = np.broadcast_to(ph.image, raw.shape).copy()
    den[2] = ph.image * 0 + 0.45  # frame 2: a blank vacuum frame (no column)
    viewer.add_image(den, name="movie denoised", metadata={"sbd_source_layer": "movie"}, **kw)
    return viewer, ph


def test_columns_points_and_map_follow_the_frame(scene, qtbot):
    viewer, _ph = scene
    w = ColumnsWidget(viewer)
    assert w.denoised_combo.value.name == "movie denoised" and w.raw_combo.value.name == "movie"
    assert w.pixel_spin.value == pytest.approx(6.1)
    w.vacuum_spin.value = 0.45
    w.run()
    qtbot.waitUntil(lambda: w.result is not None, timeout=30_000)
    pts = viewer.layers["movie denoised columns"]
    lmap = viewer.layers["movie denoised LLR map"]
    assert len(pts.data) == len(w.result.columns) > 10
    assert set(pts.features.columns) >= {"sigma_a", "peak", "llr", "position_error_pm", "intensity"}
    assert lmap.data.shape == (256, 256) and np.isnan(lmap.data).mean() > 0.5
    assert tuple(pts.scale) == (0.061, 0.061)
    real, spurious, _ = w.result.counts()
    assert f"real (LLR >= {LLR_REAL}): {real}" in w.summary.value
    assert f"spurious (LLR <= {LLR_SPURIOUS}): {spurious}" in w.summary.value
    assert w.result.columns.params["vacuum_floor"] == w.floor_spin.value == 4.0
    assert f"contrast >= {w.result.columns.params['contrast_threshold']:.3f}" in w.summary.value
    # red for real, blue for spurious: the colour follows the LLR
    top = int(np.argmax(pts.features["llr"]))
    assert pts.face_color[top][0] > pts.face_color[top][2]
    # moving the slider re-runs the analysis; a move while a worker runs (frame 0
    # still in progress) is not lost: the overlay ends on the blank frame 2
    qtbot.waitUntil(lambda: w.worker is None, timeout=30_000)
    assert w.result.frame == 1  # napari opens a stack on its middle frame
    viewer.dims.set_current_step(0, 0)
    assert w.worker is not None
    # while frame 0 is computed, frame 1's columns are not drawn over it
    assert not pts.visible and not lmap.visible and "computing" in w.summary.value
    viewer.dims.set_current_step(0, 2)
    qtbot.waitUntil(lambda: w.result.frame == 2 and w.worker is None, timeout=30_000)
    assert len(viewer.layers["movie denoised columns"].data) == 0
    assert pts.visible and lmap.visible  # shown again with the new frame's result


def test_columns_table_in_physical_units(scene, qtbot, tmp_path):
    import csv

    viewer, _ = scene
    w = ColumnsWidget(viewer)
    w.vacuum_spin.value = 0.45
    w.run()
    qtbot.waitUntil(lambda: w.result is not None and w.worker is None, timeout=30_000)
    out = w.save_table(tmp_path / "cols.csv")
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["frame", "y_nm", "x_nm", "position_error_pm", "row_px", "col_px",
                             "sigma_a", "peak_counts", "contrast_counts", "intensity_counts_px",
                             "llr", "class"]
    assert len(rows) == len(w.result.columns) and {r["frame"] for r in rows} == {"1"}
    r0 = rows[0]
    assert float(r0["y_nm"]) == pytest.approx(float(r0["row_px"]) * 0.0061, abs=1e-4)
    assert {r["class"] for r in rows} <= {"real", "spurious", "undecided"}
    with pytest.raises(ValueError, match="exists"):  # never overwritten
        w.save_table(out)


def test_columns_bad_pairs_and_no_vacuum(scene, qtbot, make_napari_viewer):
    viewer, _ = scene
    w = ColumnsWidget(viewer)
    viewer.add_image(np.zeros((64, 64), np.float32), name="other")
    w.raw_combo.value = viewer.layers["other"]
    w.run()
    assert "differ in shape" in w.summary.value
    # a crystal filling the frame: no vacuum to estimate lambda0 from
    from napari_sbd.sample_data import clean_frame

    crystal = np.tile(clean_frame()[0][400:], (2, 1))[:256]  # simulated CeO2 support only
    viewer.add_image(np.random.default_rng(0).poisson(crystal).astype(np.float32), name="c raw")
    viewer.add_image(crystal, name="c denoised", metadata={"sbd_source_layer": "c raw"})
    w.denoised_combo.value = viewer.layers["c denoised"]
    w.raw_combo.value = viewer.layers["c raw"]
    w.vacuum_spin.value = 0.0
    w.run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=30_000)
    assert "no vacuum" in w.summary.value


def test_click_shows_the_filter_over_its_crop(scene, qtbot, tiny_model_file):
    viewer, _ = scene
    path = tiny_model_file
    w = FilterWidget(viewer)
    w.model.source.value = FILE_CHOICE
    w.model.file.value = path
    assert w.raw_combo.value.name == "movie"
    viewer.layers.selection.active = viewer.layers["movie"]
    w.compute_at((1, 100, 120))
    qtbot.waitUntil(lambda: FILTER_LAYER in viewer.layers, timeout=30_000)
    layer = viewer.layers[FILTER_LAYER]
    # the overlays are added without taking the user's selection (layer controls, keys)
    assert viewer.layers.selection.active is viewer.layers["movie"]
    assert set(viewer.layers.selection) == {viewer.layers["movie"]}
    expected, (r0, c0) = effective_filter(w.model.load(), viewer.layers["movie"].data[1], (100, 120))
    np.testing.assert_allclose(layer.data, expected)
    np.testing.assert_allclose(layer.translate, np.array([r0, c0]) * 0.061)
    lo, hi = layer.contrast_limits
    assert lo == pytest.approx(-hi)
    # a round end value (1, 2 or 5 x 10^k) that the colour bar labels, at or above the
    # 99.5th percentile of the weights
    mantissa = hi / 10 ** np.floor(np.log10(hi))
    assert min(abs(mantissa - m) for m in (1, 2, 5)) < 1e-6
    assert np.percentile(np.abs(expected), 99.5) <= hi < 5 * np.percentile(np.abs(expected), 99.5)
    assert layer.bounding_box.visible and PIXEL_LAYER in viewer.layers  # the crop outlined
    np.testing.assert_allclose(viewer.layers[PIXEL_LAYER].data, [[100, 120]])
    # a second click replaces the first
    w.compute_at((0, 10, 10))
    qtbot.waitUntil(lambda: viewer.layers[FILTER_LAYER].metadata["pixel"] == (10, 10), timeout=30_000)
    assert sum(ly.name == FILTER_LAYER for ly in viewer.layers) == 1
    assert viewer.layers[FILTER_LAYER] is layer  # the same overlays, updated in place
    # the colour scale: the last click's while it fits, else the new round limit
    second, _ = effective_filter(w.model.load(), viewer.layers["movie"].data[0], (10, 10))
    p995 = float(np.percentile(np.abs(second), 99.5))
    assert layer.contrast_limits[1] == pytest.approx(sticky_limit(p995, hi))
    assert layer.contrast_limits[1] >= p995
    np.testing.assert_allclose(viewer.layers[PIXEL_LAYER].data, [[10, 10]])
    assert viewer.layers[FILTER_LAYER].metadata["frame"] == 0
    # the crop stays inside the frame, so the update skipped the viewer's ranges: they are
    # what a full recomputation gives
    ranges = tuple(viewer.dims.range)
    viewer._on_layers_change()
    assert tuple(viewer.dims.range) == ranges
    # two quick clicks: the later one is what stays on screen
    qtbot.waitUntil(lambda: w.worker is None, timeout=30_000)
    w.compute_at((1, 50, 60))
    w.compute_at((2, 70, 80))
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    qtbot.wait(200)  # any superseded result would have arrived by now
    assert viewer.layers[FILTER_LAYER].metadata["pixel"] == (70, 80)
    assert viewer.layers[FILTER_LAYER].metadata["frame"] == 2


def test_batched_overlay_updates_through_a_plugins_viewer_are_quiet(make_napari_viewer):
    # napari hands a plugin's dock a proxy of the viewer that warns on private access;
    # the batching works without that API, so the user's terminal gets no FutureWarning
    from napari.utils._proxies import PublicOnlyProxy

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8)), name="overlay")
    proxy = PublicOnlyProxy(viewer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with batched_update(proxy, proxy.layers["overlay"]):
            proxy.layers["overlay"].data = np.ones((8, 8))
    assert viewer.layers["overlay"].data.max() == 1


def test_the_filter_of_a_binned_frame_is_the_denoised_layers(make_napari_viewer, qtbot, tiny_unet,
                                                             tmp_path):
    """A frame finer than the model's range was binned: the filter is of that computation."""
    from napari_sbd.core.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "env.pt", tiny_unet, architecture="bf_unet",
                           params={"scales": 2, "base": 4}, dose=0.45, pixel_size_pm=6.1,
                           contrast="white", extra={"pixel_size_range_pm": [5.0, 10.0],
                                                    "dose_range": [0.1, 5.0]})  # binned: not split
    viewer = make_napari_viewer()
    frame = np.random.default_rng(1).poisson(0.45, (96, 96)).astype(np.float32)
    raw = viewer.add_image(frame, name="fine")  # in pixels: the Denoise dock is told 3.05 pm
    _denoise_with_file(viewer, qtbot, raw, path, pixel=3.05)
    denoised = np.asarray(viewer.layers["fine denoised"].data)
    _filter_with_file(viewer, qtbot, raw, path, (40, 50))
    layer = viewer.layers[FILTER_LAYER]
    r0, c0 = layer.metadata["origin"]
    filt = np.asarray(layer.data, np.float64)
    value = float((filt * frame[r0:r0 + filt.shape[0], c0:c0 + filt.shape[1]]).sum())
    assert value == pytest.approx(float(denoised[40, 50]), rel=1e-4)  # f(y) = J(y) y


def test_the_filter_of_a_movie_frame_is_binned_as_the_movie_was(make_napari_viewer, qtbot,
                                                                tiny_unet, tmp_path):
    """A card binning only at few counts: a bright frame of a dim movie is binned as the movie."""
    from napari_sbd.core.checkpoint import save_checkpoint
    from napari_sbd.core.inference import load_model

    path = save_checkpoint(tmp_path / "env.pt", tiny_unet, architecture="bf_unet",
                           params={"scales": 2, "base": 4}, dose=0.45, pixel_size_pm=6.1,
                           contrast="white", extra={"pixel_size_range_pm": [5.0, 10.0],
                                                    "dose_range": [0.1, 5.0], "bin_to_pm": 8.0,
                                                    "bin_below_dose": 1.2})
    model = load_model(path, device="cpu")
    rng = np.random.default_rng(2)
    movie = np.stack([rng.poisson(d, (96, 96)) for d in (0.45,) * 4 + (4.0,)]).astype(np.float32)
    # alone, the bright frame would be binned 2x2 (into the range), the movie's 3x3 (to 8 pm)
    assert model.frame_binning(movie[4], 3.05) == 2 and model.frame_binning(movie[0], 3.05) == 3
    viewer = make_napari_viewer()
    raw = viewer.add_image(movie, name="fine")
    _denoise_with_file(viewer, qtbot, raw, path, pixel=3.05)
    denoised = np.asarray(viewer.layers["fine denoised"].data)
    _filter_with_file(viewer, qtbot, raw, path, (4, 40, 50))
    layer = viewer.layers[FILTER_LAYER]
    r0, c0 = layer.metadata["origin"]
    filt = np.asarray(layer.data, np.float64)
    value = float((filt * movie[4, r0:r0 + filt.shape[0], c0:c0 + filt.shape[1]]).sum())
    assert value == pytest.approx(float(denoised[4, 40, 50]), rel=1e-4)  # f(y) = J(y) y
    alone = model.denoise(movie[4], pixel_size_pm=3.05)
    assert abs(float(alone[40, 50]) - value) > 1e-3 * abs(value)  # not the frame's own binning


def test_filter_and_likelihood_see_the_counts_the_network_saw(make_napari_viewer, qtbot,
                                                              tiny_model_file):
    """Detector units calibrated in the Denoise dock: the other docks apply the same calibration."""
    from napari_sbd.core.analysis import analyse_frame

    viewer = make_napari_viewer()
    ph = pt_on_ceo2_phantom((128, 128), particle_radius_a=4.0, seed=2)
    counts = np.random.default_rng(3).poisson(np.broadcast_to(ph.image, (2, 128, 128)))
    raw = viewer.add_image((counts * 2.0 + 100.0).astype(np.float32), name="detector",
                           scale=(1, 0.061, 0.061), units=("pixel", "angstrom", "angstrom"))
    _denoise_with_file(viewer, qtbot, raw, tiny_model_file, offset=100.0, gain=0.5)
    den = viewer.layers["detector denoised"]
    filt_w = FilterWidget(viewer)
    filt_w.model.source.value = FILE_CHOICE
    filt_w.model.file.value = tiny_model_file
    filt_w.raw_combo.value = raw
    filt_w.compute_at((1, 60, 64))
    qtbot.waitUntil(lambda: FILTER_LAYER in viewer.layers and filt_w.worker is None,
                    timeout=30_000)
    layer = viewer.layers[FILTER_LAYER]
    r0, c0 = layer.metadata["origin"]
    filt = np.asarray(layer.data, np.float64)
    value = float((filt * counts[1, r0:r0 + filt.shape[0], c0:c0 + filt.shape[1]]).sum())
    assert value == pytest.approx(float(np.asarray(den.data)[1, 60, 64]), rel=1e-4)
    col_w = ColumnsWidget(viewer)
    col_w.denoised_combo.value, col_w.raw_combo.value = den, raw
    col_w.vacuum_spin.value = 0.45
    col_w.run()
    qtbot.waitUntil(lambda: col_w.worker is None, timeout=30_000)
    assert col_w.result is not None, col_w.summary.value
    frame = int(col_w.result.frame)
    expected = analyse_frame(counts[frame].astype(np.float32), np.asarray(den.data)[frame],
                             6.1, frame=frame, vacuum_level=0.45)
    np.testing.assert_allclose(col_w.result.llr, expected.llr, rtol=1e-5)


def test_a_4d_layers_denoised_block_is_what_the_other_docks_read(make_napari_viewer, qtbot,
                                                                 tiny_model_file):
    """(position, T, H, W): columns and filter follow the block the Denoise dock denoised."""

    viewer = make_napari_viewer()
    ph = pt_on_ceo2_phantom((128, 128), particle_radius_a=4.0, seed=2)
    data = np.random.default_rng(5).poisson(np.broadcast_to(ph.image, (2, 2, 128, 128)))
    raw = viewer.add_image(data.astype(np.float32), name="series",
                           scale=(1, 1, 0.061, 0.061), units=("pixel",) * 2 + ("angstrom",) * 2)
    viewer.dims.set_current_step(0, 1)
    _denoise_with_file(viewer, qtbot, raw, tiny_model_file)
    den = viewer.layers["series [1] denoised"]
    col_w = ColumnsWidget(viewer)
    col_w.denoised_combo.value = den
    assert col_w.raw_combo.value is raw
    col_w.vacuum_spin.value = 0.45
    col_w.run()
    qtbot.waitUntil(lambda: col_w.worker is None, timeout=30_000)
    assert col_w.result is not None, col_w.summary.value
    filt_w = FilterWidget(viewer)
    filt_w.model.source.value = FILE_CHOICE
    filt_w.model.file.value = tiny_model_file
    filt_w.raw_combo.value = raw
    filt_w.compute_at((1, 1, 60, 64))
    qtbot.waitUntil(lambda: FILTER_LAYER in viewer.layers and filt_w.worker is None,
                    timeout=30_000)
    layer = viewer.layers[FILTER_LAYER]
    r0, c0 = layer.metadata["origin"]
    filt = np.asarray(layer.data, np.float64)
    value = float((filt * data[1, 1, r0:r0 + filt.shape[0], c0:c0 + filt.shape[1]]).sum())
    assert value == pytest.approx(float(np.asarray(den.data)[1, 60, 64]), rel=1e-4)


def test_the_filter_follows_the_result_on_view_fast_or_best(make_napari_viewer, qtbot,
                                                            tiny_model_file):
    """A raw layer denoised twice (fast, then best): the filter is the one of the result shown."""
    from napari_sbd.widgets.denoise import DenoiseWidget

    viewer = make_napari_viewer()
    frame = np.random.default_rng(4).poisson(0.45, (64, 64)).astype(np.float32)
    raw = viewer.add_image(frame, name="shot")
    den_w = DenoiseWidget(viewer)
    den_w.model_combo.value = FILE_CHOICE
    den_w.model_file.value = tiny_model_file
    den_w.layer_combo.value = raw
    for quality in ("fast", "best (8x slower)"):
        den_w.quality.value = quality
        den_w.run()
        qtbot.waitUntil(lambda: den_w.run_button.enabled, timeout=30_000)
    fast, best = viewer.layers["shot denoised"], viewer.layers["shot denoised [2]"]
    filt_w = FilterWidget(viewer)
    filt_w.model.source.value = FILE_CHOICE
    filt_w.model.file.value = tiny_model_file
    filt_w.raw_combo.value = raw
    for result in (fast, best, fast):
        viewer.layers.selection.active = result
        filt_w.compute_at((30, 33))
        qtbot.waitUntil(lambda: filt_w.worker is None and FILTER_LAYER in viewer.layers,
                        timeout=30_000)
        layer = viewer.layers[FILTER_LAYER]
        r0, c0 = layer.metadata["origin"]
        filt = np.asarray(layer.data, np.float64)
        value = float((filt * frame[r0:r0 + filt.shape[0], c0:c0 + filt.shape[1]]).sum())
        assert value == pytest.approx(float(np.asarray(result.data)[30, 33]), rel=1e-4), result.name
    assert abs(float(fast.data[30, 33]) - float(best.data[30, 33])) > 1e-4  # two estimators


@pytest.mark.parametrize("name", ["multi_signal.dm3", "test-1.dm4", "fei_example_tem_stack.emd",
                                  "64x64_TEM_images_acquire_1.ser", "Custom_movie.mrc"])
def test_napari_opens_each_format_with_our_reader(make_napari_viewer, name):
    from tests.conftest import FORMATS_DIR

    path = FORMATS_DIR / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-sbd")
    assert layers and layers[0].data.ndim in (2, 3)
    px = layers[0].metadata["pixel_size_pm"]
    if px:
        assert layers[0].scale[-1] == pytest.approx(px / 100)


def test_only_a_shift_click_computes_and_a_closed_dock_stops_listening(scene, qtbot,
                                                                        tiny_model_file):
    from types import SimpleNamespace

    viewer, _ = scene
    w = FilterWidget(viewer)
    w.model.source.value = FILE_CHOICE
    w.model.file.value = tiny_model_file
    where = viewer.layers["movie"].data_to_world((1, 100, 120))
    pan = SimpleNamespace(type="mouse_press", modifiers=(), position=where)
    w._on_click(viewer, pan)
    assert w.worker is None and FILTER_LAYER not in viewer.layers  # a pan computes nothing
    w._on_click(viewer, SimpleNamespace(type="mouse_press", modifiers=("Shift",), position=where))
    qtbot.waitUntil(lambda: FILTER_LAYER in viewer.layers, timeout=30_000)
    assert viewer.layers[FILTER_LAYER].metadata["pixel"] == (100, 120)
    # docked, then closed with its X: the widget lets go of the viewer
    viewer.window.add_dock_widget(w, name="filter")
    assert w._on_click in viewer.mouse_drag_callbacks
    viewer.window.remove_dock_widget(w)
    assert w.released and w._on_click not in viewer.mouse_drag_callbacks
    columns = ColumnsWidget(viewer)
    viewer.window.add_dock_widget(columns, name="columns")
    viewer.window.remove_dock_widget(columns)
    assert columns.released
    viewer.dims.set_current_step(0, 2)  # the closed columns dock no longer follows the slider
    qtbot.wait(100)
    assert columns.worker is None


def test_columns_combos_pair_the_right_layers_and_respect_the_users_choice(make_napari_viewer,
                                                                           qtbot):
    viewer = make_napari_viewer()
    raw = viewer.add_image(np.zeros((2, 64, 64), np.uint16), name="movie")
    w = ColumnsWidget(viewer)
    # only a noisy layer: it is not offered as the denoised one, and running says what to do
    assert w.denoised_combo.value is None and w.raw_combo.value is raw
    w.run()
    assert "choose the denoised layer" in w.summary.value.replace("\n", " ")
    w.denoised_combo.value = raw  # the user insists: both combos on one layer are refused
    w.run()
    assert "both the denoised and the raw layer" in w.summary.value.replace("\n", " ")
    assert w.worker is None
    w._user_chose = False  # as if the user had not chosen
    den = viewer.add_image(np.ones((2, 64, 64), np.float32), name="movie denoised",
                           metadata={"sbd_source_layer": "movie"})
    assert w.denoised_combo.value is den and w.raw_combo.value is raw  # the plugin's pair
    other = viewer.add_image(np.ones((2, 64, 64), np.float32), name="my own filter")
    w.denoised_combo.value = other  # the user's choice stays
    assert w.denoised_combo.value is other and w.raw_combo.value is raw
    viewer.add_image(np.ones((2, 64, 64), np.float32), name="movie denoised [2]",
                     metadata={"sbd_source_layer": "movie"})
    assert w.denoised_combo.value is other


def test_track_all_frames_links_columns_and_saves_the_movie_table(scene, qtbot, tmp_path):
    import csv

    viewer, _ = scene
    w = ColumnsWidget(viewer)
    w.vacuum_spin.value = 0.45
    w.track_all()
    assert w.worker is not None and w.cancel_button.enabled and not w.track_button.enabled
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    tracks = viewer.layers["movie denoised tracks"]
    rows = w.movie_rows
    assert rows and {r["frame"] for r in rows} == {0, 1}  # frame 2 is blank: no lattice
    # frames 0 and 1 are the same image: every column is one track over both frames
    by_track: dict[int, list[int]] = {}
    for r in rows:
        by_track.setdefault(r["track"], []).append(r["frame"])
    assert all(frames == [0, 1] for frames in by_track.values())
    assert len(tracks.data) == len(rows) and tuple(tracks.scale) == (1, 0.061, 0.061)
    assert len(viewer.layers["movie denoised columns, all frames"].data) == len(rows)
    summary = " ".join(w.summary.value.split())  # (wrapped to the dock's width)
    assert "without a lattice" in summary and f"linked into {len(by_track)} tracks" in summary
    path = w.save_table(tmp_path / "movie.csv")
    with open(path) as fh:
        saved = list(csv.DictReader(fh))
    assert list(saved[0])[:2] == ["track", "frame"] and len(saved) == len(rows)
    assert (tmp_path / "movie.h5").exists()
    with pytest.raises(ValueError, match="exists"):
        w.save_table(tmp_path / "movie.csv")
    # other options: the movie table no longer describes them, and is not what gets saved
    w.threshold_spin.value = 0.5
    assert w.movie_rows is None


def test_closing_the_viewer_mid_job_is_quiet(make_napari_viewer, qtbot, tiny_model_file, capfd):
    """Every dock's job running when the window closes: no traceback, no late signal."""
    from napari_sbd.widgets.denoise import DenoiseWidget

    viewer = make_napari_viewer(show=True)
    ph = pt_on_ceo2_phantom((256, 256), particle_radius_a=5.0, seed=4)
    rng = np.random.default_rng(0)
    raw = viewer.add_image(rng.poisson(np.broadcast_to(ph.image, (40, 256, 256))).astype(
        np.float32), name="movie", scale=(1, 0.061, 0.061))
    viewer.add_image(np.broadcast_to(ph.image, raw.data.shape).copy(), name="movie denoised",
                     metadata={"sbd_source_layer": "movie"}, scale=(1, 0.061, 0.061))
    den_w, col_w, filt_w = DenoiseWidget(viewer), ColumnsWidget(viewer), FilterWidget(viewer)
    for w in (den_w, col_w, filt_w):
        viewer.window.add_dock_widget(w)
    den_w.model_combo.value = FILE_CHOICE
    den_w.model_file.value = tiny_model_file
    filt_w.model.source.value = FILE_CHOICE
    filt_w.model.file.value = tiny_model_file
    den_w.layer_combo.value = raw
    den_w.run()
    col_w.vacuum_spin.value = 0.45
    col_w.track_all()
    filt_w.raw_combo.value = raw
    filt_w.compute_at((0, 128, 128))
    workers = [den_w.worker, col_w.worker, filt_w.worker]
    assert all(wk is not None for wk in workers)
    qtbot.waitUntil(lambda: den_w.output_layer.metadata["sbd_frames_done"] >= 1, timeout=30_000)
    viewer.close()
    qtbot.wait(3000)  # the jobs stop or finish meanwhile; their signals must find nothing dead
    err = capfd.readouterr().err
    assert "Traceback" not in err and "deleted" not in err, err
    assert all(w.released for w in (den_w, col_w, filt_w))
    assert workers[0].abort_requested and workers[1].abort_requested  # the movie jobs stop


_SCRIPT_ENDING_MID_FRAME = """
import sys, time
import numpy as np
from qtpy.QtWidgets import QApplication
import napari
import napari_sbd.widgets.denoise as dn

real = dn._denoise_frames
def slow(*args, **kwargs):  # each frame takes a second: the script ends inside one
    for item in real(*args, **kwargs):
        time.sleep(1.0)
        yield item
dn._denoise_frames = slow

viewer = napari.Viewer(show=True)
raw = viewer.add_image(np.random.default_rng(0).poisson(0.45, (8, 64, 64)).astype(np.float32),
                       name="movie")
w = dn.DenoiseWidget(viewer)
viewer.window.add_dock_widget(w)
w.model_combo.value = dn.FILE_CHOICE
w.model_file.value = sys.argv[1]
w.layer_combo.value = raw
w.run()
app, t0 = QApplication.instance(), time.monotonic()
while w.output_layer.metadata["sbd_frames_done"] < 1 and time.monotonic() - t0 < 60:
    app.processEvents()
    time.sleep(0.01)
viewer.close()
print("frames done at close:", w.output_layer.metadata["sbd_frames_done"], flush=True)
"""


def test_a_script_ending_mid_job_waits_for_the_frame_quietly(tmp_path, tiny_model_file):
    """Python exiting while a job is inside a frame: the job is stopped and waited for.

    Without napari's event loop nothing else waits for workers, and a frame
    finished after the interpreter began tearing down signalled into deleted
    Qt objects ("RuntimeError in aborted thread: ... has been deleted").
    """
    import subprocess
    import sys

    script = tmp_path / "ends_mid_job.py"
    script.write_text(_SCRIPT_ENDING_MID_FRAME)
    run = subprocess.run([sys.executable, str(script), str(tiny_model_file)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "frames done at close: 1" in run.stdout
    assert "aborted thread" not in run.stderr and "deleted" not in run.stderr, run.stderr


def test_overlays_never_touch_a_users_layer_of_the_same_name(scene, qtbot, tiny_model_file):
    """Only layers the plugin made (marked in their metadata) are updated or replaced."""
    viewer, _ = scene
    mine = {name: viewer.add_points([[1.0, 2.0]], name=name)
            for name in (FILTER_LAYER, "movie denoised columns", "movie denoised tracks")}
    w = FilterWidget(viewer)
    w.model.source.value = FILE_CHOICE
    w.model.file.value = tiny_model_file
    w.raw_combo.value = viewer.layers["movie"]
    w.compute_at((0, 100, 120))
    qtbot.waitUntil(lambda: f"{FILTER_LAYER} [2]" in viewer.layers, timeout=30_000)
    ours = viewer.layers[f"{FILTER_LAYER} [2]"]
    ours.name = "my renamed filter"  # a renamed overlay is still the one updated
    qtbot.waitUntil(lambda: w.worker is None, timeout=30_000)
    w.compute_at((1, 50, 60))
    qtbot.waitUntil(lambda: ours.metadata["pixel"] == (50, 60), timeout=30_000)
    cols = ColumnsWidget(viewer)
    cols.vacuum_spin.value = 0.45
    cols.run()
    qtbot.waitUntil(lambda: cols.worker is None, timeout=60_000)
    cols.track_all()
    qtbot.waitUntil(lambda: cols.worker is None, timeout=60_000)
    for name, layer in mine.items():  # untouched: same object, same single point
        assert viewer.layers[name] is layer
        np.testing.assert_array_equal(layer.data, [[1.0, 2.0]])
    assert len(viewer.layers["movie denoised columns [2]"].data) > 10
    assert "movie denoised tracks [2]" in viewer.layers


def test_every_control_of_every_dock_explains_itself(make_napari_viewer):
    """A tooltip on every control (labels are text, not controls)."""
    from magicgui.widgets import Container, Label

    from napari_sbd.widgets.denoise import DenoiseWidget

    viewer = make_napari_viewer()

    def controls(container):
        for w in container:
            if isinstance(w, Container):
                yield from controls(w)
            elif not isinstance(w, Label):
                yield w

    for dock in (DenoiseWidget(viewer), ColumnsWidget(viewer), FilterWidget(viewer)):
        bare = [w.label or w.text for w in controls(dock.form) if not w.tooltip]
        assert not bare, f"{type(dock).__name__}: no tooltip on {bare}"


def test_layer_choices_follow_a_rename(scene):
    from napari_sbd.widgets.denoise import DenoiseWidget

    viewer, _ = scene
    docks = [DenoiseWidget(viewer), ColumnsWidget(viewer), FilterWidget(viewer)]
    viewer.layers["movie"].name = "movie, session 2"
    for combo in (docks[0].layer_combo, docks[1].raw_combo, docks[2].raw_combo):
        names = [combo.native.itemText(i) for i in range(combo.native.count())]
        assert "movie, session 2" in names and "movie" not in names


def test_a_slow_filter_says_it_is_computing(scene, qtbot, tiny_model_file, monkeypatch):
    """A click still running after COMPUTING_NOTE_MS says so; a quick one only shows its result."""
    import time

    import napari_sbd.widgets.filter as module

    viewer, _ = scene
    w = FilterWidget(viewer)
    w.model.source.value = FILE_CHOICE
    w.model.file.value = tiny_model_file
    real = module._filter_safely

    def slow(*args, **kwargs):
        time.sleep(module.COMPUTING_NOTE_MS / 1000 + 0.6)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "_filter_safely", slow)
    w.compute_at((0, 60, 70))
    qtbot.waitUntil(lambda: "computing the filter at (60, 70)" in w.status.value, timeout=5_000)
    qtbot.waitUntil(lambda: w.worker is None, timeout=30_000)
    assert " ".join(w.status.value.split()).startswith("filter at (60, 70)")


@pytest.mark.parametrize(("value", "nice"), [(0.00084, 0.001), (0.002, 0.002), (0.0021, 0.005),
                                              (0.02, 0.02), (7.0, 10.0), (0.0, 1.0)])
def test_colour_limits_round_up_to_labelled_values(value, nice):
    assert nice_limit(value) == pytest.approx(nice)


@pytest.mark.parametrize(("value", "current", "limit"), [
    (0.03, None, 0.05),    # no scale yet: the round limit
    (0.06, 0.05, 0.1),     # above the current scale: up at once, never saturating more
    (0.05, 0.05, 0.05),
    (0.015, 0.05, 0.05),   # just under the round limit below (0.02): kept
    (0.013, 0.05, 0.02),   # under 0.7 x 0.02: down to its own round limit
    (0.008, 0.02, 0.02),   # 0.7 x 0.01 = 0.007 <= 0.008: kept
    (0.0004, 0.02, 0.0005),
])
def test_the_colour_scale_sticks_while_it_fits(value, current, limit):
    assert sticky_limit(value, current) == pytest.approx(limit)


def test_auto_estimates_a_layers_dose_once_not_per_click(make_napari_viewer, monkeypatch):
    import napari_sbd.widgets.filter as module

    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    raw = viewer.add_image(rng.poisson(0.45, (128, 128)).astype(np.uint16), name="raw",
                           scale=(0.061, 0.061), units=("angstrom", "angstrom"))
    w = FilterWidget(viewer)
    assert w.model.is_auto
    calls = []
    real = module.estimate_dose
    monkeypatch.setattr(module, "estimate_dose", lambda counts: calls.append(1) or real(counts))
    monkeypatch.setattr(type(w.model), "load", lambda _self, *args: args)  # no model needed
    first = w._model_for(raw)
    assert w._model_for(raw) == first and len(calls) == 1  # a second click reuses the estimate
    assert first[0] == pytest.approx(real(raw.data))
    raw.data = rng.poisson(4.0, (128, 128)).astype(np.uint16)  # new data: estimated again
    again = w._model_for(raw)
    assert len(calls) == 2 and again[0] > first[0]


def test_auto_reads_the_contrast_in_a_worker_before_the_first_filter(make_napari_viewer, qtbot):
    # dark columns at the default's point, nothing denoised yet: auto must choose between the
    # default and its black sibling (six network passes) off the GUI thread, then show the
    # black model's filter, and keep the choice for the next click
    from pathlib import Path

    from napari_sbd.core.phantom import gaussian_columns

    viewer = make_napari_viewer()
    centres = np.mgrid[20:160:38, 20:160:38].reshape(2, -1).T.astype(float)
    clean = gaussian_columns((160, 160), centres, 6.0, -0.25, 0.5)
    frame = np.random.default_rng(7).poisson(np.clip(clean, 0, None)).astype(np.float32)
    raw = viewer.add_image(frame, name="dark", scale=(0.061, 0.061), units=("angstrom", "angstrom"))
    w = FilterWidget(viewer)
    assert w.model.is_auto
    w.compute_at((80, 80))
    assert "choosing the model for 'dark'" in " ".join(w.status.value.split())
    assert FILTER_LAYER not in viewer.layers  # nothing computed on the GUI thread
    qtbot.waitUntil(lambda: FILTER_LAYER in viewer.layers and w.worker is None, timeout=60_000)
    model = w._model_for(raw, wait=False)  # kept: no second reading
    assert model is not None and Path(model.metadata["path"]).name == "black.pt"
    expected, _ = effective_filter(model, frame, (80, 80), pixel_size_pm=6.1)
    np.testing.assert_allclose(viewer.layers[FILTER_LAYER].data, expected, rtol=1e-4, atol=1e-6)


def test_the_filter_of_a_frame_split_to_the_models_dose_says_so(make_napari_viewer, qtbot,
                                                                 tiny_model_file):
    """2.5x the model's dose: denoised as 2 parts; the filter is theirs, and the dock says so."""
    from napari_sbd.core.inference import load_model

    viewer = make_napari_viewer()
    frame = np.random.default_rng(8).poisson(0.45 * 2.5, (96, 96)).astype(np.float32)
    raw = viewer.add_image(frame, name="bright")
    _denoise_with_file(viewer, qtbot, raw, tiny_model_file)
    denoised = np.asarray(viewer.layers["bright denoised"].data)
    model = load_model(tiny_model_file, device="cpu")
    np.testing.assert_allclose(denoised, model.denoise(frame), rtol=1e-5, atol=1e-7)  # as the API
    w = _filter_with_file(viewer, qtbot, raw, tiny_model_file, (40, 50))
    status = " ".join(w.status.value.split())
    assert "was denoised as 2 parts at it" in status and "the parts' average" in status
    # the filter of the parts the denoising ran on (core.jacobian tests its identities)
    from napari_sbd.core.jacobian import effective_filter

    want, origin = effective_filter(model, frame, (40, 50))
    assert tuple(viewer.layers[FILTER_LAYER].metadata["origin"]) == origin
    np.testing.assert_allclose(np.asarray(viewer.layers[FILTER_LAYER].data), want, rtol=1e-5,
                               atol=1e-7)


def _denoise_with_file(viewer, qtbot, raw, path, **settings):
    """Denoise ``raw`` in a Denoise dock with the checkpoint ``path``; ``settings``: its fields."""
    from napari_sbd.widgets.denoise import DenoiseWidget

    den_w = DenoiseWidget(viewer)
    den_w.model_combo.value = FILE_CHOICE
    den_w.model_file.value = path
    den_w.layer_combo.value = raw
    for name, value in settings.items():
        getattr(den_w, name).value = value
    den_w.run()
    qtbot.waitUntil(lambda: den_w.run_button.enabled, timeout=30_000)
    return den_w


def _filter_with_file(viewer, qtbot, raw, path, pixel):
    """Show the effective filter at ``pixel`` of ``raw`` with the checkpoint ``path``."""
    w = FilterWidget(viewer)
    w.model.source.value = FILE_CHOICE
    w.model.file.value = path
    w.raw_combo.value = raw
    w.compute_at(pixel)
    qtbot.waitUntil(lambda: FILTER_LAYER in viewer.layers and w.worker is None, timeout=30_000)
    return w


def test_the_filter_dock_says_when_the_model_is_a_blend(tiny_model_file):
    """A blend: the dock names it and its weights, and which member split the frame."""
    from napari_sbd.core.inference import Blend, load_model
    from napari_sbd.widgets.filter import _how_filtered

    single = load_model(tiny_model_file, device="cpu")
    ranged = load_model(tiny_model_file, device="cpu")
    ranged.metadata.update(dose_range=[0.1, 5.0])  # a dose-range model: never splits
    blend = Blend([(single, 0.3), (ranged, 0.7)], "test-blend")
    bright = np.random.default_rng(9).poisson(0.45 * 2.5, (64, 64)).astype(np.float32)
    text = " ".join(_how_filtered(blend, bright).split())
    assert "than a member's dose and was denoised as 2 parts" in text
    assert "a blend (test-blend: outputs averaged 30% + 70%)" in text
    assert "members' filters averaged" in text
    assert _how_filtered(single, bright.clip(0, 0)) == ""  # no split, no blend: nothing to add
