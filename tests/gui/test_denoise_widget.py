"""The denoise dock widget, driven end to end under Xvfb."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sbd.widgets._layers import pixel_size_pm
from napari_sbd.widgets.denoise import FILE_CHOICE, DenoiseWidget

pytestmark = pytest.mark.gui


@pytest.fixture
def model_file(tiny_model_file):
    return tiny_model_file


@pytest.fixture
def widget(make_napari_viewer, model_file):
    viewer = make_napari_viewer()
    w = DenoiseWidget(viewer)
    w.model_combo.value = FILE_CHOICE
    w.model_file.value = model_file
    return viewer, w


def _wait(qtbot, w):
    qtbot.waitUntil(lambda: w.run_button.enabled, timeout=30_000)


def test_denoises_a_stack_into_a_new_layer(widget, qtbot, rng):
    viewer, w = widget
    stack = rng.poisson(0.45, (3, 48, 40)).astype(np.uint16)
    raw = viewer.add_image(stack, name="movie", scale=(1, 0.061, 0.061), translate=(0, 5, 7))
    w.layer_combo.value = raw
    assert "trained at 0.45" in w.info.value
    w.run()
    _wait(qtbot, w)
    out = viewer.layers["movie denoised"]
    assert out.data.shape == stack.shape and out.data.dtype == np.float32
    assert tuple(out.scale) == tuple(raw.scale) and tuple(out.translate) == tuple(raw.translate)
    expected = w.load_denoiser().denoise(stack)
    np.testing.assert_allclose(out.data, expected, rtol=1e-6, atol=1e-9)
    assert out.metadata["sbd_complete"] is True
    np.testing.assert_array_equal(raw.data, stack)  # input untouched
    # each frame's dose, and its span in the dock
    doses = out.metadata["sbd_dose"]
    np.testing.assert_allclose([doses[i] for i in range(3)], stack.reshape(3, -1).mean(axis=1))
    assert "over the 3 frames denoised" in " ".join(w.dose_note.value.split())


def test_cancel_marks_the_layer_incomplete(widget, qtbot, rng):
    viewer, w = widget
    raw = viewer.add_image(rng.poisson(0.45, (300, 128, 128)).astype(np.float32), name="long")
    w.layer_combo.value = raw
    w.run()
    qtbot.waitUntil(lambda: viewer.layers["long denoised"].metadata["sbd_frames_done"] >= 1,
                    timeout=30_000)
    w.cancel()
    _wait(qtbot, w)
    (out,) = [ly for ly in viewer.layers if ly.name.startswith("long denoised")]
    assert "cancelled" in out.name
    assert out.metadata["sbd_complete"] is False
    assert out.metadata["sbd_frames_done"] < 300


def test_bad_inputs_are_reported_not_raised(widget, qtbot, tmp_path, model_file):
    viewer, w = widget
    # label layers are not images of counts: they are never offered
    viewer.add_labels(np.zeros((64, 64), np.int32), name="mask")
    assert "mask" not in [name for name, _ in w.layer_combo.choices] and not any(
        getattr(c, "name", None) == "mask" for c in w.layer_combo.choices)
    rgb = viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="photo", rgb=True)
    w.layer_combo.value = rgb
    w.run()
    assert "RGB" in w.info.value and "photo denoised" not in viewer.layers
    bad = tmp_path / "bad.pt"
    bad.write_text("not a model")
    w.model_file.value = bad
    assert "not a readable PyTorch file" in w.info.value
    viewer.add_image(np.zeros((64, 64), np.float32), name="frame")
    w.layer_combo.value = viewer.layers["frame"]
    w.run()
    assert "frame denoised" not in viewer.layers
    # a frame that is not counts, found by the worker: reported; the frames done before it
    # are kept in a layer that says so, an empty result is not left behind
    w.model_file.value = model_file

    def denoise_with_a_bad_frame(name: str, n: int, bad: int) -> np.ndarray:
        stack = np.zeros((n, 64, 64), np.float32)
        stack[bad] = -1
        w.layer_combo.value = viewer.add_image(stack, name=name)
        w.run()
        _wait(qtbot, w)
        assert "negative" in w.info.value
        return stack

    stack = denoise_with_a_bad_frame("offset", 3, bad=2)
    assert "2 finished frames kept" in w.info.value
    kept = viewer.layers["offset denoised (failed: 2 of 3 frames)"]
    np.testing.assert_allclose(kept.data[:2], w.load_denoiser().denoise(stack[:2]), rtol=1e-6, atol=1e-9)
    denoise_with_a_bad_frame("offset0", 2, bad=0)
    assert not [ly.name for ly in viewer.layers if ly.name.startswith("offset0 denoised")]
    # detector units (a later frame): the message points at the dock's calibration fields
    bright = np.zeros((2, 64, 64), np.float32)
    bright[1] = 3000
    viewer.add_image(bright, name="detector units")
    w.layer_combo.value = viewer.layers["detector units"]
    w.run()
    _wait(qtbot, w)
    info = " ".join(w.info.value.split())
    assert "not look like counts" in info and "electrons per count" in info, info


def test_sample_data_and_launcher(make_napari_viewer):
    from napari_sbd.sample_data import pt_ceo2_movie

    (noisy, nkw, _), (clean, _ckw, _) = pt_ceo2_movie()
    assert noisy.ndim == 3 and noisy.shape[1:] == clean.shape
    assert abs(noisy.mean() - 0.45) < 0.05 and nkw["scale"][-1] == pytest.approx(0.061)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-sbd", "pt_ceo2_movie")
    assert {"Pt-CeO2 noisy", "Pt-CeO2 clean"} <= {ly.name for ly in viewer.layers}


def test_save_denoised_layer_with_our_writer(make_napari_viewer, tmp_path):
    import json

    import tifffile

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.ones((2, 32, 32), np.float32), name="x denoised",
                             scale=(1, 0.061, 0.061), units=("pixel", "angstrom", "angstrom"),
                             metadata={"sbd_model": {"dose": 0.45}, "sbd_complete": True})
    path = tmp_path / "x.tif"
    layer.save(str(path), plugin="napari-sbd")
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].shape == (2, 32, 32)
        desc = json.loads(tif.pages[0].description)
    assert desc["pixel_size_pm"] == pytest.approx(6.1) and desc["complete"] is True
    # opened again, the layer has its model and state back, and its physical scale
    viewer.open(str(path), plugin="napari-sbd")
    back = viewer.layers["x"]
    assert back.metadata["sbd_model"] == {"dose": 0.45} and back.metadata["sbd_complete"] is True
    assert tuple(back.scale)[-1] == pytest.approx(0.061)


def test_warns_before_running_when_dose_or_pixel_size_differ(widget, qtbot, rng):
    from napari.utils.notifications import notification_manager

    viewer, w = widget

    def messages_of_a_run(layer=None) -> str:
        if layer is not None:
            w.layer_combo.value = layer
        notification_manager.records.clear()
        w.run()
        _wait(qtbot, w)
        return " ".join(str(n.message) for n in notification_manager.records)

    bright = rng.poisson(4.0, (1, 48, 48)).astype(np.float32)  # 9x the model's dose
    raw = viewer.add_image(bright, name="bright", scale=(1, 0.122, 0.122),
                           units=("pixel", "angstrom", "angstrom"))  # 12.2 pm: twice the model's
    messages = messages_of_a_run(raw)
    assert "trained at 0.45" in messages and "pm/pixel" in messages
    assert "no pixel size" not in messages
    # a layer in plain pixels: what is assumed is said
    plain = viewer.add_image(rng.poisson(0.45, (48, 48)).astype(np.float32), name="plain")
    messages = messages_of_a_run(plain)
    assert "layer 'plain' has no pixel size" in messages and "6.1 pm is assumed" in messages
    assert w.pixel.value == 0  # unknown, and shown as such
    # entered by hand: no warning, and the result carries it (the Columns dock reads it)
    w.pixel.value = 6.1
    assert "no pixel size" not in messages_of_a_run()
    assert pixel_size_pm(w.output_layer) == 6.1
    w.layer_combo.value = raw
    assert w.pixel.value == pytest.approx(12.2)  # each layer's own, read when chosen


def test_rerun_keeps_the_earlier_result_and_best_quality_is_the_ensemble(widget, qtbot, rng):
    viewer, w = widget
    stack = rng.poisson(0.45, (2, 48, 40)).astype(np.uint16)
    raw = viewer.add_image(stack, name="movie")
    w.layer_combo.value = raw
    w.run()
    _wait(qtbot, w)
    first = viewer.layers["movie denoised"]
    first.data[0, 0, 0] = 123.0  # the user's edit of the first result
    w.quality.value = "best (8x slower)"
    w.run()
    _wait(qtbot, w)
    assert viewer.layers["movie denoised"] is first and first.data[0, 0, 0] == 123.0
    second = viewer.layers["movie denoised [2]"]
    assert second.metadata["sbd_ensemble"] is True
    np.testing.assert_allclose(second.data, w.load_denoiser().denoise(stack, ensemble=True),
                               rtol=1e-5, atol=1e-6)


def test_a_long_stack_is_denoised_into_a_disk_backed_layer(widget, qtbot, rng):
    import zarr

    viewer, w = widget
    stack = rng.poisson(0.45, (200, 32, 32)).astype(np.uint16)
    raw = viewer.add_image(stack, name="long")
    viewer.dims.set_current_step(0, 150)
    w.layer_combo.value = raw
    w.run()
    # napari's activity bar says "busy" without counting: a counting one runs a nested event
    # loop per frame, and 200 fast frames recursed past Python's limit (the dock counts)
    assert w.worker.pbar.total == 0
    _wait(qtbot, w)
    out = viewer.layers["long denoised"]
    # the result lives in a zarr store on disk, one chunk per frame: no float32 copy of the
    # whole stack in memory, whatever its length
    assert isinstance(out.data, zarr.Array) and out.data.chunks == (1, 32, 32)
    assert not isinstance(out.data.store, zarr.storage.MemoryStore)
    assert out.metadata["sbd_complete"] is True
    # the same up to float rounding (near-zero outputs differ in their last bits)
    np.testing.assert_allclose(np.asarray(out.data[150]), w.load_denoiser().denoise(stack[150]),
                               rtol=1e-6, atol=1e-9)


def test_the_launcher_window_fits_a_laptop_screen(qtbot):
    import warnings

    from napari_sbd.launch import build_viewer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        viewer, docks = build_viewer(show=True)
    # no deprecated napari API called by ours (napari names the caller's line in them)
    ours = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)
            and "site-packages" not in w.filename]
    try:
        assert not ours, ours
        assert viewer.dims.axis_labels == ("frame", "y", "x")
        window = viewer.window._qt_window
        hint = window.minimumSizeHint()
        # everything docked needs less than a 1366x768 laptop screen offers
        assert hint.width() <= 1366 and hint.height() <= 700
        avail = window.screen().availableGeometry()
        if avail.width() >= hint.width() and avail.height() >= hint.height():
            assert avail.contains(window.frameGeometry())
        # one panel of tabs: each dock is tabbed with the others
        qtbot.wait(200)
        qt_docks = [d for d, _w in docks.values()]
        assert set(window.tabifiedDockWidgets(qt_docks[0])) == set(qt_docks[1:])
    finally:
        viewer.close()


def test_progress_says_frames_and_time_left():
    from napari_sbd.widgets.denoise import progress_text

    assert progress_text(0, 200, 0.0) == "0 of 200 frames"
    assert progress_text(4, 200, 2.0) == "4 of 200 frames, 0.5 s/frame, about 1 min 38 s left"
    assert progress_text(190, 200, 95.0) == "190 of 200 frames, 0.5 s/frame, about 5 s left"
    assert progress_text(200, 200, 100.0) == "200 of 200 frames, 0.5 s/frame"


def test_calibration_turns_detector_units_into_counts(widget, qtbot, rng):
    viewer, w = widget
    counts = rng.poisson(0.45, (2, 48, 40)).astype(np.float32)
    raw = viewer.add_image(counts * 8 + 50, name="detector")
    w.layer_combo.value = raw
    assert "electrons/pixel/frame" in w.dose_note.value
    w.offset.value, w.gain.value = 50.0, 0.125
    assert w.dose_note.value.startswith(f"{counts[:2].mean():.3g} electrons")
    w.run()
    _wait(qtbot, w)
    out = viewer.layers["detector denoised"]
    np.testing.assert_allclose(np.asarray(out.data), w.load_denoiser().denoise(counts),
                               rtol=1e-5, atol=1e-6)
    assert out.metadata["sbd_calibration"] == {"offset": 50.0, "electrons_per_count": 0.125}
    np.testing.assert_array_equal(raw.data, counts * 8 + 50)  # the user's layer is unchanged


def test_help_menu_links_the_guides(widget):
    from napari_sbd.widgets._layers import GUIDES, guide_path

    viewer, _w = widget
    titles = [a.text() for a in viewer.window.help_menu.actions()]
    assert all(t in titles for t in GUIDES)
    assert titles.count(next(iter(GUIDES))) == 1  # once, however many docks are opened
    assert guide_path("analysis.md") is not None  # the source checkout holds the pages


def test_a_4d_layer_denoises_the_block_on_screen(widget, qtbot, rng):
    viewer, w = widget
    data = rng.poisson(0.45, (2, 3, 40, 40)).astype(np.float32)  # (channel, T, H, W)
    raw = viewer.add_image(data, name="multi", scale=(1, 1, 0.061, 0.061))
    viewer.dims.set_current_step(0, 1)
    w.layer_combo.value = raw
    w.run()
    _wait(qtbot, w)
    out = viewer.layers["multi [1] denoised"]
    assert out.data.shape == (3, 40, 40) and tuple(out.scale) == (1, 0.061, 0.061)
    np.testing.assert_allclose(np.asarray(out.data), w.load_denoiser().denoise(data[1]),
                               rtol=1e-5, atol=1e-6)


def test_the_frame_on_screen_or_a_range_instead_of_the_whole_stack(widget, qtbot, rng):
    viewer, w = widget
    stack = rng.poisson(0.45, (5, 48, 40)).astype(np.uint16)
    raw = viewer.add_image(stack, name="movie")
    w.layer_combo.value = raw
    expected = w.load_denoiser().denoise(stack)
    viewer.dims.set_current_step(0, 3)
    w.frames_combo.value = "the frame on screen"
    w.run()
    _wait(qtbot, w)
    one = viewer.layers["movie denoised (frame 3)"]
    assert one.metadata["sbd_frames"] == [3] and one.metadata["sbd_complete"] is True
    np.testing.assert_allclose(one.data[3], expected[3], rtol=1e-6, atol=1e-9)
    assert not np.any(one.data[[0, 1, 2, 4]])  # the others were not computed
    assert w.range_edit.native.isHidden()  # asked for only with "range"
    w.frames_combo.value = "range"
    assert not w.range_edit.native.isHidden()
    w.range_edit.value = "1:3"
    w.run()
    _wait(qtbot, w)
    part = viewer.layers["movie denoised (frames 1-2)"]
    assert part.metadata["sbd_frames"] == [1, 2]
    np.testing.assert_allclose(part.data[1:3], expected[1:3], rtol=1e-6, atol=1e-9)
    n_layers = len(viewer.layers)
    w.range_edit.value = "7:9"  # beyond the stack: said, nothing added
    w.run()
    assert len(viewer.layers) == n_layers and "selects no frame" in w.info.value


def test_the_files_calibration_fills_offset_and_electrons_per_count(widget, rng):
    viewer, w = widget
    raw = (rng.poisson(0.45, (2, 48, 40)) * 4 + 100).astype(np.uint16)
    layer = viewer.add_image(raw, name="dm", metadata={"intensity_calibration": {
        "offset": 100.0, "electrons_per_count": 0.25, "units": "e-"}})
    w.layer_combo.value = layer
    assert (w.offset.value, w.gain.value) == (100.0, 0.25)
    assert "electrons/pixel/frame" in w.dose_note.value  # the calibrated counts are counts


def test_frames_whose_dose_drifts_out_of_the_models_are_named(widget, qtbot, rng, monkeypatch):
    import napari_sbd.widgets.denoise as module

    said = []
    monkeypatch.setattr(module, "show_warning", said.append)
    viewer, w = widget
    stack = rng.poisson(0.45 * np.array([1, 1, 0.15])[:, None, None] * np.ones((3, 48, 40)))
    viewer.add_image(stack.astype(np.float32), name="drift")
    w.layer_combo.value = viewer.layers["drift"]
    w.run()
    _wait(qtbot, w)
    assert any("1 of 3 frames has a dose outside" in m and "frames 2" in m for m in said), said


def test_auto_model_is_chosen_from_the_layer_and_the_filter_follows_it(make_napari_viewer, qtbot,
                                                                         rng):
    from pathlib import Path

    from napari_sbd.core.inference import choose_bundled_model
    from napari_sbd.core.selection import auto_read
    from napari_sbd.widgets._model import AUTO_CHOICE
    from napari_sbd.widgets.filter import FilterWidget

    viewer = make_napari_viewer()
    w = DenoiseWidget(viewer)
    assert w.model_combo.value == AUTO_CHOICE  # the dock's first choice
    raw = viewer.add_image(rng.poisson(0.2, (2, 64, 64)).astype(np.float32), name="bright",
                           scale=(1, 0.061, 0.061), units=("pixel", "angstrom", "angstrom"))
    w.layer_combo.value = raw
    # said on choosing the layer, before anything runs: outside the default's window the
    # envelope models compete on held-out counts
    assert ("auto will take the bundled 'envelope' or 'high-dose' model, whichever better "
            "predicts counts held out" in " ".join(w.dose_note.value.split()))
    w.model_combo.value = w.model_combo.choices[1]  # a bundled model: nothing to announce
    assert "auto will take" not in w.dose_note.value
    w.model_combo.value = AUTO_CHOICE
    w.run()
    assert "choosing between the bundled 'envelope' and 'high-dose'" in " ".join(
        w.info.value.split())
    _wait(qtbot, w)
    dose = float(raw.data[:2].mean())
    expected = choose_bundled_model(dose, 6.1, *auto_read(raw.data, 6.1, dose))[0]
    assert f"auto: the bundled '{expected}' model" in " ".join(w.info.value.split())
    out = viewer.layers["bright denoised"]
    assert Path(out.metadata["sbd_model"]["path"]).name == f"{expected}.pt"
    filt = FilterWidget(viewer)  # on auto, the filter is the one of the network that denoised
    assert Path(filt._model_for(raw).metadata["path"]).name == f"{expected}.pt"
    viewer.layers.remove(out)  # nothing denoised: the filter's auto reads the counts the same way
    assert Path(filt._model_for(raw).metadata["path"]).name == f"{expected}.pt"


def test_a_mismatch_with_the_model_is_said_before_running(make_napari_viewer, rng):
    """The dose note says what the chosen model will warn about, before Denoise is pressed."""
    from napari_sbd.widgets._model import AUTO_CHOICE, DEFAULT_CHOICE

    viewer = make_napari_viewer()
    w = DenoiseWidget(viewer)
    w.model_combo.value = AUTO_CHOICE
    coarse = viewer.add_image(rng.poisson(0.45, (2, 64, 64)).astype(np.float32), name="coarse",
                              scale=(1, 0.61, 0.61), units=("pixel", "angstrom", "angstrom"))
    w.layer_combo.value = coarse  # 61 pm: coarser than every bundled model's range
    note = " ".join(w.dose_note.value.split())
    assert "auto will take" in note and "61 pm/pixel, outside the 4.8-10.5 pm/pixel" in note
    w.pixel.value = 6.1  # the default's own point: nothing to warn about
    assert "outside" not in w.dose_note.value and "results may be poor" not in w.dose_note.value
    w.model_combo.value = DEFAULT_CHOICE  # a single-point model at 3x its dose
    bright = viewer.add_image(rng.poisson(1.35, (2, 64, 64)).astype(np.float32), name="bright",
                              scale=(1, 0.061, 0.061), units=("pixel", "angstrom", "angstrom"))
    w.layer_combo.value = bright
    assert "the model was trained at 0.45" in " ".join(w.dose_note.value.split())


def test_auto_model_reads_dark_columns_and_picks_the_black_contrast_model(make_napari_viewer,
                                                                          qtbot):
    from pathlib import Path

    from napari_sbd.core.phantom import gaussian_columns

    viewer = make_napari_viewer()
    w = DenoiseWidget(viewer)
    centres = np.mgrid[20:256:38, 20:256:38].reshape(2, -1).T.astype(float)
    clean = gaussian_columns((256, 256), centres, 6.0, -0.25, 0.5)  # dark columns, 0.45 mean
    frames = np.random.default_rng(7).poisson(np.clip(clean, 0, None), (2, 256, 256))
    raw = viewer.add_image(frames.astype(np.float32), name="dark", scale=(1, 0.061, 0.061),
                           units=("pixel", "angstrom", "angstrom"))
    w.layer_combo.value = raw
    # the choice runs both networks: said before, decided when it runs
    assert ("auto will take the bundled 'default' or 'black' model, whichever"
            in " ".join(w.dose_note.value.split()))
    w.run()
    # the six network passes run in the worker, not on the GUI thread: run() returns at once
    assert "choosing between" in " ".join(w.info.value.split())
    assert viewer.layers["dark denoised"].metadata["sbd_model"] is None
    _wait(qtbot, w)
    said = " ".join(w.info.value.split())
    assert "auto: the bundled 'black' model" in said and "black contrast" in said
    out = viewer.layers["dark denoised"]
    assert Path(out.metadata["sbd_model"]["path"]).name == "black.pt"
    assert out.metadata["sbd_complete"] is True
    np.testing.assert_allclose(out.data, w._denoiser.denoise(frames.astype(np.float32)),
                               rtol=1e-5, atol=1e-6)
    # cancelled while choosing: no frame, the layer says so
    w.run()
    w.cancel()
    _wait(qtbot, w)
    stopped = viewer.layers[-1]  # the second result, the last layer added
    assert stopped.name.startswith("dark denoised [2] (cancelled")
    assert stopped.metadata["sbd_complete"] is False


def test_a_bundled_blend_can_be_chosen_and_shares_its_models_with_auto(make_napari_viewer):
    from napari_sbd.core.inference import BLENDS, Blend, blend_installed
    from napari_sbd.widgets._model import BLEND_50_CHOICE

    if not all(blend_installed(n) for n in BLENDS):
        pytest.skip("the bundled default and high-dose models are needed")
    w = DenoiseWidget(make_napari_viewer())
    assert BLEND_50_CHOICE in w.model_combo.choices
    w.model_combo.value = BLEND_50_CHOICE
    den = w.model.load()
    assert isinstance(den, Blend) and den.name == "blend-50"
    assert "2 models averaged" in " ".join(w.model.info.value.split())
    # auto's candidates above the default's dose: the same blend, built from the same models
    w.model_combo.value = w.model_combo.choices[0]  # auto
    candidates = w.model.candidate_models(1.35, 6.1)
    blend = candidates["blend-50"]
    assert [m for m, _ in blend.members] == [candidates["default"],
                                            candidates["blend-70"].members[1][0]]
