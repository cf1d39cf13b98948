"""Choosing a model from held-out counts (binomial thinning) and auto's contrast."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sbd.core import selection
from napari_sbd.core.inference import bundled_model_path
from napari_sbd.core.phantom import gaussian_columns
from napari_sbd.core.selection import (
    auto_candidates,
    auto_contrast,
    auto_model,
    auto_read,
    held_out_log_likelihood,
)


class _Fixed:
    """A stand-in denoiser that returns a fixed image (scaled to the input's level)."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image

    def denoise(self, frame: np.ndarray, pixel_size_pm: float | None = None,
                dose: float | None = None) -> np.ndarray:
        return (self.image * frame.mean() / self.image.mean()).astype(np.float32)


def _columns(amplitude: float, side: int = 256) -> np.ndarray:
    # columns 2.3 A apart at 6.1 pm, 0.45 counts/pixel in vacuum
    centres = np.mgrid[20:side - 10:38, 20:side - 10:38].reshape(2, -1).T.astype(float)
    return np.clip(gaussian_columns((side, side), centres, 6.0, amplitude, 0.45), 0.02, None)


def test_the_truth_predicts_held_out_counts_better_than_a_wrong_image():
    clean = _columns(0.25)
    frame = np.random.default_rng(0).poisson(clean).astype(np.float32)
    truth, flat = _Fixed(clean), _Fixed(np.full_like(clean, clean.mean()))
    inverted = _Fixed(np.clip(2 * clean.mean() - clean, 0.02, None))
    ll = {name: held_out_log_likelihood(m, frame) for name, m in
          [("truth", truth), ("flat", flat), ("inverted", inverted)]}
    assert ll["truth"] > ll["flat"] > ll["inverted"]
    # the same frame and seed: the same split, the same score
    assert held_out_log_likelihood(truth, frame) == ll["truth"]
    assert held_out_log_likelihood(truth, frame, seed=1) != ll["truth"]
    with pytest.raises(ValueError, match="keep must be between 0 and 1"):
        held_out_log_likelihood(truth, frame, keep=1.0)


def test_held_out_counts_are_binned_as_the_frame_will_be(tiny_unet):
    """A card that bins only under a dose: the kept 90% is binned as the whole frame is."""
    from napari_sbd.core.inference import Denoiser

    model = Denoiser(tiny_unet, {"dose": 0.45, "dose_range": [0.1, 5.0],
                                 "pixel_size_range_pm": [5.0, 10.0], "bin_to_pm": 8.0})
    frame = np.random.default_rng(4).poisson(1.0, (96, 96)).astype(np.float32)
    mean = float(frame.mean())
    # the threshold between the kept counts' mean (90%) and the frame's
    model.metadata["bin_below_dose"] = 0.95 * mean
    assert model.frame_binning(frame, 3.05) == 2 < model.frame_binning(0.9 * frame, 3.05)
    kept, held = selection._thin(frame, selection.KEEP_FRACTION, 0)
    as_run = selection._score(model.denoise(kept.astype(np.float32), pixel_size_pm=3.05,
                                            dose=mean) / 0.9, held, 0.9)
    by_kept = selection._score(model.denoise(kept.astype(np.float32), pixel_size_pm=3.05) / 0.9,
                               held, 0.9)
    assert held_out_log_likelihood(model, frame, pixel_size_pm=3.05) == pytest.approx(as_run)
    assert as_run != pytest.approx(by_kept)


def test_auto_contrast_takes_the_model_that_predicts_the_counts():
    white, black = _columns(0.25), _columns(-0.25)
    models = {"white": _Fixed(white), "black": _Fixed(black)}
    rng = np.random.default_rng(3)
    for clean, expected in [(white, "white"), (black, "black")]:
        frames = rng.poisson(clean, size=(2, *clean.shape)).astype(np.float32)
        # in the default's window: the models decide, from the first frame of a stack too
        assert auto_contrast(frames[0], 6.1, 0.45, models=models) == expected
        assert auto_contrast(frames, 6.1, 0.45, models=models) == expected
        # a frame too small to tell two models apart: the skew of its counts
        assert auto_contrast(frames[0, :40, :40], 6.1, 0.45, models=models) is None


def test_outside_the_defaults_window_no_network_runs(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("no model is needed where only white-contrast models exist")

    monkeypatch.setattr(selection, "load_model", refuse)
    clean = _columns(0.25, side=512) * 4
    frame = np.random.default_rng(1).poisson(clean).astype(np.float32)
    assert auto_contrast(frame, 6.1, 2.5) == "white"  # the skew of the counts
    assert auto_contrast(frame, 12.0, 0.45) == "white"  # a pixel size outside the window


def test_outside_the_window_the_envelope_model_that_predicts_the_counts_is_chosen():
    from napari_sbd.core.inference import AUTO_HIGH_DOSE, choose_bundled_model

    sharp = _columns(0.25)
    blurred = np.full_like(sharp, sharp.mean()) * 0.5 + sharp * 0.5  # half the contrast
    rng = np.random.default_rng(5)
    # a pixel size outside the default's window, a dose under the rule's threshold
    dose, px = 0.9 * AUTO_HIGH_DOSE, 10.0
    assert auto_candidates(dose, px) == ("envelope", "high-dose")
    assert auto_candidates(0.45, 6.1) == ("default", "black")
    assert choose_bundled_model(dose, px)[0] == "envelope"  # the rule alone
    for truth, expected in [(sharp, "high-dose"), (blurred, "envelope")]:
        models = {"envelope": _Fixed(blurred), "high-dose": _Fixed(sharp)}
        frame = rng.poisson(truth * 4).astype(np.float32)  # many counts: a clear verdict
        contrast, envelope = auto_read(frame, px, dose, models=models)
        assert envelope == expected
        name, why = choose_bundled_model(dose, px, contrast, envelope)
        assert name == expected and "held out" in why and "outside" in why
        # the tools' one call: the same choice, from a superset of loaded models too
        assert auto_model(frame, px, dose, models={**models, "default": _Fixed(sharp)}) == (
            name, why)
    # too small to tell: no verdict, the dose rule decides
    assert auto_read(frame[:40, :40], px, dose, models=models)[1] is None
    assert choose_bundled_model(2 * AUTO_HIGH_DOSE, 8.0, None, None)[0] == "high-dose"
    # inside the window the pair is the default's: the envelope models never decide there
    pair = {"default": _Fixed(sharp), "black": _Fixed(np.clip(2 * sharp.mean() - sharp, 0.02,
                                                                None))}
    assert auto_read(rng.poisson(sharp).astype(np.float32), 6.1, 0.45, models=pair) == ("white",
                                                                                          None)
    assert choose_bundled_model(0.45, 6.1, "white", "high-dose")[0] == "default"


def test_without_both_envelope_models_the_rule_decides(monkeypatch, tmp_path):
    real = selection.bundled_model_path
    monkeypatch.setattr(selection, "bundled_model_path",
                        lambda name="default": tmp_path / "none.pt" if name == "high-dose"
                        else real(name))
    assert auto_candidates(0.45, 10.0) == ()

    def refuse(*_args, **_kwargs):
        raise AssertionError("no model runs where the rules decide alone")

    monkeypatch.setattr(selection, "load_model", refuse)
    frame = np.random.default_rng(6).poisson(_columns(0.25, side=512)).astype(np.float32)
    assert auto_read(frame, 10.0, 0.45) == ("white", None)


@pytest.mark.skipif(not (bundled_model_path("default").exists()
                         and bundled_model_path("black").exists()),
                    reason="the bundled default and black-contrast models are needed")
def test_the_bundled_pair_reads_bright_and_dark_columns():
    rng = np.random.default_rng(4)
    for amplitude, expected in [(0.25, "white"), (-0.25, "black")]:
        frame = rng.poisson(_columns(amplitude)).astype(np.float32)
        assert auto_contrast(frame, 6.1, 0.45, device="cpu") == expected


def test_blends_join_the_candidates_where_the_default_splits_frames():
    from napari_sbd.core.inference import BLENDS, blend_installed

    if not all(blend_installed(n) for n in BLENDS):
        pytest.skip("the bundled default and high-dose models are needed")
    assert auto_candidates(0.45, 6.1) == ("default", "black")  # the default's own dose
    assert auto_candidates(1.35, 6.1) == ("default", "black", "blend-50", "blend-70")
    assert auto_candidates(1.35, None) == ("default", "black", "blend-50", "blend-70")
    assert auto_candidates(4.0, 6.1) == ("envelope", "high-dose", "blend-50", "blend-70")
    # the default at a pixel size it was not trained at is no member to blend
    assert auto_candidates(4.0, 10.0) == ("envelope", "high-dose")
    assert selection.blend_candidates(float("nan"), 6.1) == ()
    # the threshold is the default's dose as its card records it
    from napari_sbd.core.inference import load_model
    from napari_sbd.core.units import PAPERS_DOSE

    assert load_model("default", device="cpu").card.dose == PAPERS_DOSE


class _Counted(_Fixed):
    """A fixed image that counts its calls (a network pass each)."""

    def __init__(self, image: np.ndarray) -> None:
        super().__init__(image)
        self.calls = 0

    def denoise(self, frame: np.ndarray, pixel_size_pm: float | None = None,
                dose: float | None = None) -> np.ndarray:
        self.calls += 1
        return super().denoise(frame, pixel_size_pm, dose)


def test_a_blend_is_scored_from_its_members_predictions_and_wins_where_it_is_best():
    from napari_sbd.core.inference import Blend

    truth = _columns(0.25, side=384)
    # two members wrong in opposite directions: their average is the truth
    high, low = _Counted(truth * 1.5 - 0.5 * truth.mean()), _Counted(truth * 0.5 + 0.5 * truth.mean())
    blend = Blend.__new__(Blend)  # a blend of stand-ins (no networks): only its members matter
    blend.members = [(high, 0.5), (low, 0.5)]
    lopsided = Blend.__new__(Blend)
    lopsided.members = [(high, 0.9), (low, 0.1)]
    frame = np.random.default_rng(7).poisson(truth * 4).astype(np.float32)
    models = {"high": high, "low": low, "blend": blend, "lopsided": lopsided}
    assert selection.held_out_choice(frame, models) == "blend"
    # each member ran once per split, for itself and for both blends
    assert high.calls == low.calls == selection.SPLITS
    # the same verdict as scoring the averaged image as a model of its own
    average = _Fixed(0.5 * high.image + 0.5 * low.image)
    own = {k: sum(held_out_log_likelihood(m, frame, seed=s) for s in range(selection.SPLITS))
           for k, m in [("high", high), ("low", low), ("blend", average)]}
    assert max(own, key=own.get) == "blend"
