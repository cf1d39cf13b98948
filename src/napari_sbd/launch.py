"""``napari-sbd``: open napari with the plugin's widgets docked.

With no file arguments it loads the built-in sample movie, so a new user sees
the whole workflow without downloading anything.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

WIDGETS = ("Denoise (SBD)", "Columns and likelihood (SBD)", "Effective filter (SBD)")


def build_viewer(files: Sequence[str] = (), *, show: bool = True):
    """Create a viewer with the widgets docked and ``files`` (or the sample) open.

    Parameters
    ----------
    files : sequence of str
        Files to open with napari's readers; empty for the sample movie.
    show : bool
        Show the window.

    Returns
    -------
    viewer : napari.Viewer
        The viewer.
    docks : dict
        Display name -> (dock widget, widget) of each docked widget.
    """
    import napari

    viewer = napari.Viewer(title="napari-sbd", show=show)
    if files:
        viewer.open(list(files))
    else:
        viewer.open_sample("napari-sbd", "pt_ceo2_movie")
    # physical units in view: a scale bar, and named axes for a movie
    scale_bar_of(viewer).visible = True
    if viewer.dims.ndim == 3:
        viewer.dims.axis_labels = ("frame", "y", "x")
    docks = {name: viewer.window.add_plugin_dock_widget("napari-sbd", name) for name in WIDGETS}
    compact_layout(viewer, [dock for dock, _w in docks.values()])
    return viewer, docks


def scale_bar_of(viewer):
    """Return the viewer's scale-bar overlay (napari 0.9 moved it to ``viewer.canvas.overlays``)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and "scale_bar" in overlays:
        return overlays["scale_bar"]
    return viewer.scale_bar  # napari < 0.9


def compact_layout(viewer, qt_docks) -> None:
    """Return the docks as tabs of one panel, and the window no larger than its screen.

    Three docks stacked needed about 1230 px of height: on a laptop (1366x768,
    or 1920x1080 at 125%) the frame slider and the status bar fell off-screen.
    """
    window = viewer.window._qt_window
    for dock in qt_docks[1:]:
        window.tabifyDockWidget(qt_docks[0], dock)
    qt_docks[0].raise_()
    from qtpy.QtCore import Qt

    # one panel for all tabs: as wide as the widest dock's controls
    width = max(d.widget().minimumSizeHint().width() for d in qt_docks) + 24
    window.resizeDocks([qt_docks[0]], [width], Qt.Orientation.Horizontal)
    screen = window.screen()
    if screen is not None:
        avail = screen.availableGeometry()
        width = min(max(window.width(), int(0.95 * avail.width())), avail.width())
        height = min(max(window.height(), int(0.92 * avail.height())), avail.height())
        window.resize(width, height)
        window.move(avail.x() + (avail.width() - width) // 2, avail.y() + (avail.height() - height) // 2)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``napari-sbd`` command."""
    parser = argparse.ArgumentParser(
        prog="napari-sbd",
        description="Open napari with the napari-sbd widgets docked, on FILES or on the "
        "built-in sample movie (a low-dose Pt/CeO2 frame stack).",
    )
    parser.add_argument("files", nargs="*", help="images or stacks to open (default: sample)")
    args = parser.parse_args(argv)
    import napari

    build_viewer(args.files)
    napari.run()


if __name__ == "__main__":
    main()
