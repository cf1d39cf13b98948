"""The npe2 manifest and the console scripts are installed and valid."""

from __future__ import annotations

import shutil
import subprocess
import sys


def test_npe2_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-sbd")
    ids = {c.id for c in manifest.contributions.commands}
    assert {"napari-sbd.denoise_widget", "napari-sbd.sample_movie"} <= ids
    exe = shutil.which("npe2") or str(__import__("pathlib").Path(sys.executable).with_name("npe2"))
    proc = subprocess.run([exe, "validate", "napari-sbd"], capture_output=True, text=True)
    assert proc.returncode == 0 and "valid" in proc.stdout, proc.stdout + proc.stderr


def test_console_scripts_answer_help():
    for script in ("napari-sbd-train", "napari-sbd"):
        exe = str(__import__("pathlib").Path(sys.executable).with_name(script))
        proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "usage" in proc.stdout
