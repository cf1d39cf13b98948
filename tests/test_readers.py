"""io.readers: every supported format from real microscope software, with its pixel size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_sbd.io.readers import ReaderError, get_reader, read_file, write_tiff

from .conftest import FORMATS_DIR


def _fmt(name):
    path = FORMATS_DIR / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    return str(path)


@pytest.mark.parametrize(
    ("name", "shape", "pixel_pm"),
    [
        ("multi_signal.dm3", (512, 512), 17.7516),  # 0.01775 nm, a real 300 kV HAADF image
        ("test_STEM_image.dm3", (68, 68), 248.538),
        ("fei_example_tem_stack.emd", (2, 3, 3), 8.17288),
        ("64x64_TEM_images_acquire_1.ser", (64, 64), 6281.83),
    ],
)
def test_microscope_formats_with_pixel_size(name, shape, pixel_pm):
    path = _fmt(name)
    assert get_reader(path) is read_file
    data, kwargs, kind = read_file(path)[0]
    assert kind == "image" and tuple(data.shape) == shape
    assert kwargs["metadata"]["pixel_size_pm"] == pytest.approx(pixel_pm, rel=1e-4)
    a = pixel_pm / 100
    assert kwargs["scale"][-2:] == pytest.approx((a, a), rel=1e-4)
    assert kwargs["units"][-1] == "angstrom"


def test_dm4_stack_without_calibration():
    data, kwargs, _ = read_file(_fmt("test-1.dm4"))[0]
    assert data.shape == (2, 2, 2) and kwargs["metadata"]["pixel_size_pm"] is None
    assert "scale" not in kwargs  # uncalibrated: plain pixels, not a made-up size


def test_mrc_movie_is_memory_mapped():
    data, kwargs, _ = read_file(_fmt("Custom_movie.mrc"))[0]
    assert data.shape == (30, 16, 16)
    assert isinstance(data, np.memmap) or hasattr(data, "filename") or data.base is not None
    assert kwargs["metadata"]["pixel_size_pm"] is None  # header voxel size is -10: invalid


def test_tiff_stack_roundtrip_through_the_writer(tmp_path):
    stack = np.random.default_rng(0).random((4, 32, 48)).astype(np.float32)
    path = str(tmp_path / "den.tif")
    attrs = {"name": "movie denoised", "scale": (1, 0.061, 0.061), "units": ("pixel", "angstrom", "angstrom"),
             "metadata": {"sbd_model": {"dose": 0.45}, "sbd_source_layer": "movie", "sbd_complete": True}}
    assert write_tiff(path, stack, attrs) == [path]
    assert [p.name for p in tmp_path.iterdir()] == ["den.tif"]  # atomic: no temporary left
    with tifffile.TiffFile(path) as tif:
        desc = json.loads(tif.pages[0].description)
    assert desc["pixel_size_pm"] == pytest.approx(6.1) and desc["model"] == {"dose": 0.45}
    data, kwargs, _ = read_file(path)[0]
    np.testing.assert_array_equal(np.asarray(data), stack)
    assert isinstance(data, np.memmap)  # large stacks are never read whole
    assert kwargs["metadata"]["pixel_size_pm"] == pytest.approx(6.1)


def test_imagej_tiff_pixel_size(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.zeros((3, 16, 16), np.uint16), imagej=True,
                     resolution=(1 / 0.0061, 1 / 0.0061), metadata={"unit": "nm", "axes": "TYX"})
    _, kwargs, _ = read_file(str(path))[0]
    assert kwargs["metadata"]["pixel_size_pm"] == pytest.approx(6.1, rel=1e-3)


def test_a_4d_imagej_series_keeps_its_axes_and_pixel_size(tmp_path):
    """(series, T, H, W): one layer (the docks work on the movie on screen)."""
    path = tmp_path / "series.tif"
    tifffile.imwrite(path, np.zeros((2, 3, 16, 16), np.uint16), imagej=True,
                     resolution=(1 / 0.0061, 1 / 0.0061), metadata={"unit": "nm", "axes": "TZYX"})
    data, kwargs, _ = read_file(str(path))[0]
    assert data.shape == (2, 3, 16, 16)
    assert kwargs["scale"] == pytest.approx((1, 1, 0.061, 0.061), rel=1e-3)
    with pytest.raises(ReaderError, match="4-D series of stacks"):
        bad = tmp_path / "five.tif"
        tifffile.imwrite(bad, np.zeros((2, 2, 2, 16, 16), np.uint16))
        read_file(str(bad))


def test_unsupported_and_rgb(tmp_path):
    assert get_reader(str(tmp_path / "a.png")) is None
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(ReaderError, match="RGB"):
        read_file(str(rgb))


def test_mrc_with_a_negative_voxel_size_says_so(tmp_path):
    import mrcfile

    from napari_sbd.io.readers import read_mrc

    path = tmp_path / "neg.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((2, 32, 32), np.float32))
        m.voxel_size = -1.5
    with pytest.warns(UserWarning, match="not a size"):
        ((_data, kwargs, _),) = read_mrc(str(path))
    assert (kwargs.get("metadata") or {}).get("pixel_size_pm") is None


def test_a_files_electron_calibration_is_read_and_anything_else_ignored():
    from napari_sbd.io.readers import intensity_calibration

    def dm(origin, scale, units):
        return {"ImageList": {"TagGroup0": {"ImageData": {"Calibrations": {
            "Brightness": {"Origin": origin, "Scale": scale, "Units": units}}}}}}

    assert intensity_calibration(dm(100.0, 0.25, "e-")) == {
        "offset": 100.0, "electrons_per_count": 0.25, "units": "e-"}
    assert intensity_calibration(dm(0.0, 1.0, "e-")) is None  # identity: already electrons
    assert intensity_calibration(dm(100.0, 0.25, [])) is None  # no unit: not electrons
    assert intensity_calibration(dm(100.0, 0.25, "nA")) is None
    assert intensity_calibration(dm(100.0, -1.0, "e-")) is None
    assert intensity_calibration({}) is None
    # the real files in ../shared record the identity without a unit
    from napari_sbd.io.readers import read_file

    for name in ("test-1.dm4", "test_STEM_image.dm3"):
        for _data, kw, _kind in read_file(FORMATS_DIR / name):
            assert "intensity_calibration" not in kw["metadata"]


def test_opening_a_file_does_not_import_torch_and_the_api_is_whole():
    import subprocess
    import sys

    import napari_sbd

    code = ("import sys, napari_sbd.io.readers; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # napari's reader stays light
    assert set(napari_sbd.__all__) == set(napari_sbd._LAZY)  # one list of public names
    assert all(getattr(napari_sbd, name) is not None for name in napari_sbd.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = napari_sbd.nope
