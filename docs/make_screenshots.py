"""Screenshots of each widget at work on the sample movie, for docs/.

Run under Xvfb (the test set-up installs it)::

    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python docs/make_screenshots.py [--model PATH]

(a laptop's screen: the launcher sizes its window to the screen it opens on).

It drives the real widgets, waits for their workers, and saves
docs/images/{denoise,columns,tracks,filter}.png (the whole window, docks included).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qtpy.QtWidgets import QApplication

OUT = Path(__file__).resolve().parent / "images"


def _wait(predicate, timeout_s: float = 300.0) -> None:
    import time

    t0 = time.monotonic()
    while not predicate():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError("the widget did not finish in time")
    for _ in range(20):
        QApplication.processEvents()


def main() -> None:
    """Build the viewer, run each widget, save the pictures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default", help="checkpoint to use (default: bundled)")
    args = parser.parse_args()
    from napari_sbd.launch import build_viewer
    from napari_sbd.widgets._model import DEFAULT_CHOICE, FILE_CHOICE

    OUT.mkdir(exist_ok=True)
    from napari.settings import get_settings

    # no pop-up toasts in the pictures (they covered the scale bar); the settings file is
    # left as it was at the end
    settings = get_settings().application
    level = settings.gui_notification_level
    settings.gui_notification_level = "error"
    viewer, docked = build_viewer(show=True)
    docks = {name: dock for name, (dock, _w) in docked.items()}
    den_w = docked["Denoise (SBD)"][1]
    col_w = docked["Columns and likelihood (SBD)"][1]
    fil_w = docked["Effective filter (SBD)"][1]
    for picker in (den_w.model, fil_w.model):
        if args.model == "default":
            picker.source.value = DEFAULT_CHOICE
        else:
            picker.source.value = FILE_CHOICE
            picker.file.value = args.model
    # the denoise widget on the noisy movie
    den_w.layer_combo.value = viewer.layers["Pt-CeO2 noisy"]
    den_w.run()
    _wait(lambda: den_w.run_button.enabled)
    viewer.reset_view()
    docks["Denoise (SBD)"].raise_()
    viewer.window.screenshot(str(OUT / "denoise.png"), canvas_only=False)
    # columns and likelihood on the denoised movie
    col_w._reset()
    col_w.run()
    _wait(lambda: col_w.worker is None)
    if col_w.result is None:
        raise RuntimeError(f"column detection failed: {col_w.summary.value}")
    viewer.layers["Pt-CeO2 noisy"].visible = False
    docks["Columns and likelihood (SBD)"].raise_()
    viewer.window.screenshot(str(OUT / "columns.png"), canvas_only=False)
    # every column through the movie: Track all frames
    col_w.track_all()
    _wait(lambda: col_w.worker is None)
    if col_w.movie_rows is None:
        raise RuntimeError(f"tracking failed: {col_w.summary.value}")
    for name in ("Pt-CeO2 noisy denoised LLR map", "Pt-CeO2 noisy denoised columns"):
        viewer.layers[name].visible = False
    viewer.window.screenshot(str(OUT / "tracks.png"), canvas_only=False)
    for name in ("Pt-CeO2 noisy denoised tracks", "Pt-CeO2 noisy denoised columns, all frames"):
        viewer.layers[name].visible = False
    for name in ("Pt-CeO2 noisy denoised LLR map", "Pt-CeO2 noisy denoised columns"):
        viewer.layers[name].visible = True
    # the effective filter at a surface column of the particle
    viewer.layers["Pt-CeO2 noisy denoised LLR map"].visible = False
    viewer.layers["Pt-CeO2 noisy denoised columns"].visible = False
    res = col_w.result
    real = res.columns.centres[res.llr >= 0.005]
    top = real[real[:, 0].argmin()]  # the topmost well-supported column: a surface site
    fil_w.raw_combo.value = viewer.layers["Pt-CeO2 noisy"]
    fil_w.compute_at((int(viewer.dims.current_step[0]), int(top[0]), int(top[1])))  # the frame shown
    _wait(lambda: "effective filter" in viewer.layers and fil_w.worker is None)
    viewer.reset_view()
    docks["Effective filter (SBD)"].raise_()
    viewer.window.screenshot(str(OUT / "filter.png"), canvas_only=False)
    settings.gui_notification_level = level
    print("saved", *(p.name for p in sorted(OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
