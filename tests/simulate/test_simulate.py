"""The abTEM simulator on small grids: structure sanity, physics conventions, dataset I/O."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

pytest.importorskip("abtem")
pytest.importorskip("ase")

from napari_sbd.simulate.cli import main
from napari_sbd.simulate.dataset import classify_contrast, simulate_dataset, simulate_structure
from napari_sbd.simulate.imaging import ImagingParams, exit_wave, images_at_defoci
from napari_sbd.simulate.structures import StructureParams, build_structure, column_groups

SMALL = dict(lateral_a=26.0, support_height_a=10.0, thickness_nm=1.2, particle="1nm")
FAST = ImagingParams(sampling_a=0.1, pixel_size_pm=12.0, slice_thickness_a=2.0)


def test_structure_sanity():
    atoms, info = build_structure(StructureParams(seed=3, **SMALL))
    pos, z = atoms.positions, atoms.numbers
    assert 1.75 < info["n_o"] / info["n_ce"] <= 2.0  # CeO2 with O-terminated (111) surface
    assert info["n_pt"] > 20
    from scipy.spatial import cKDTree

    d, _ = cKDTree(pos).query(pos, k=2)
    assert d[:, 1].min() > 1.9  # no overlapping atoms (Ce-O 2.34 A is the shortest bond)
    gap = pos[z == 78, 1].min() - pos[z == 8, 1].max()
    assert 2.0 < gap < 2.6  # the particle sits on the support
    assert pos[z == 78, 1].max() < atoms.cell.lengths()[1] - 3  # vacuum above it
    tilted, _ = build_structure(StructureParams(seed=3, tilt_x_deg=3, **SMALL))
    pt, pt_t = pos[z == 78], tilted.positions[tilted.numbers == 78]
    assert len(pt) == len(pt_t)
    # one atomic column (same x, y before tilting): after a 3 degree tilt about
    # x its atoms' y changes with their depth z at slope tan(3 degrees)
    (col,) = [c for c in column_groups(pt) if len(c) >= 3][:1]
    slope = np.polyfit(pt_t[col, 2], pt_t[col, 1], 1)[0]
    assert abs(abs(slope) - np.tan(np.deg2rad(3))) < 0.002
    np.testing.assert_allclose(pt_t[col, 0], pt[col, 0], atol=1e-6)  # x unchanged


def test_defects_remove_atoms_from_one_column():
    ref, _ = build_structure(StructureParams(seed=5, **SMALL))
    n_ref = int((ref.numbers == 78).sum())
    counts = {}
    for defect in ("remove_column", "half_column", "single_atom"):
        atoms, info = build_structure(StructureParams(seed=5, defect=defect, **SMALL))
        counts[defect] = int((atoms.numbers == 78).sum())
        assert info["defect_site"] is not None
    assert n_ref > counts["single_atom"] >= counts["remove_column"] + 1
    assert counts["remove_column"] < counts["half_column"] < n_ref


def test_defocus_sign_gives_white_columns_at_plus_6nm():
    atoms, info = build_structure(StructureParams(seed=1, **SMALL))
    psi, s = exit_wave(atoms, FAST)
    ims = images_at_defoci(psi, s, [6.0, -6.0], FAST)
    px = FAST.pixel_size_pm / 100
    ly = info["cell_a"][1]
    cols = np.column_stack([(ly - info["particle_columns"][:, 1]) / px,
                            info["particle_columns"][:, 0] / px])
    cls_plus, score_plus = classify_contrast(ims[6.0], cols)
    _, score_minus = classify_contrast(ims[-6.0], cols)
    assert cls_plus == "white" and score_plus > score_minus + 0.05
    # dose scaling: the vacuum (top rows) reads the dose in counts per pixel
    vac = ims[6.0][: int(3 / px)]
    assert abs(vac.mean() - FAST.dose) < 0.02 * FAST.dose


def test_dataset_metadata_reproducibility_and_resume(tmp_path):
    out = tmp_path / "ds"
    n = simulate_dataset(out, 2, [4.0, 8.0], FAST, seed=7, fixed=SMALL, workers=1)
    assert n == 4
    with open(out / "metadata.csv") as fh:
        rows = list(csv.DictReader(fh))
    required = {"file", "structure_id", "particle", "defect", "thickness_nm", "tilt_x_deg",
                "tilt_y_deg", "defocus_nm", "contrast", "pixel_size_pm", "dose", "seed",
                "version_abtem", "version_ase"}
    assert required <= set(rows[0]) and all(r[k] != "" for r in rows for k in required)
    first = (out / rows[0]["file"]).read_bytes()
    # interrupted run: one structure's record is gone -> only it is recomputed
    rec = out / "records" / "s00008.json"
    rec.unlink()
    kept = out / "s00007_df+04.0nm.tif"
    mtime = kept.stat().st_mtime_ns
    assert simulate_dataset(out, 2, [4.0, 8.0], FAST, seed=7, fixed=SMALL, workers=1) == 4
    assert kept.stat().st_mtime_ns == mtime and rec.exists()
    # bit-for-bit reproducible in a fresh folder
    again = tmp_path / "again"
    simulate_structure(again, json_params(rows[0]), FAST, [4.0])
    assert (again / rows[0]["file"]).read_bytes() == first
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    # one folder, one dataset: other settings are refused before anything is simulated
    from dataclasses import replace

    for legacy in (False, True):
        if legacy:  # a folder made before dataset.json: its first record tells
            (out / "dataset.json").unlink()
        with pytest.raises(ValueError, match=re.escape("pixel_size_pm 12.0 in the folder, 16.0 now")):
            simulate_dataset(out, 3, [4.0, 8.0], replace(FAST, pixel_size_pm=16.0), seed=7,
                             fixed=SMALL, workers=1)
        with pytest.raises(ValueError, match="defoci"):
            simulate_dataset(out, 2, [4.0, 6.0], FAST, seed=7, fixed=SMALL, workers=1)
        with pytest.raises(ValueError, match=re.escape("dose 0.45 in the folder, 0.9 now")):
            simulate_dataset(out, 2, [4.0, 8.0], replace(FAST, dose=0.9), seed=7, fixed=SMALL,
                             workers=1)
    assert not (out / "s00009_df+04.0nm.tif").exists()
    # a folder of someone else's files is not written into (an empty one is)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "metadata.csv").write_text("my own table\n")
    with pytest.raises(ValueError, match=r"not a napari-sbd dataset.*nothing was written"):
        simulate_dataset(theirs, 1, [4.0], FAST, seed=7, fixed=SMALL, workers=1)
    assert [p.name for p in theirs.iterdir()] == ["metadata.csv"]
    assert (theirs / "metadata.csv").read_text() == "my own table\n"


def json_params(row: dict) -> StructureParams:
    keys = StructureParams.__dataclass_fields__
    conv = {"seed": int, "particle": str, "defect": str}
    return StructureParams(**{k: conv.get(k, float)(row[k]) for k in keys})


def test_impossible_parameters_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="particle"):
        build_structure(StructureParams(particle="5nm"))
    with pytest.raises(ValueError, match="tilts"):
        build_structure(StructureParams(tilt_x_deg=30))
    with pytest.raises(ValueError, match="dose"):
        ImagingParams(dose=0).validate()
    with pytest.raises(ValueError, match="pixel_size_pm"):
        ImagingParams(pixel_size_pm=1.0).validate()
    assert main(["--out", str(tmp_path / "x"), "--dose", "-1", "--n-structures", "1"]) == 2
    assert "dose" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--defocus", "20:0"])
    assert json.dumps(FAST.record())


def test_dask_distributed_executor(tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        n = simulate_dataset(tmp_path / "dask", 1, [6.0], FAST, seed=11, fixed=SMALL,
                             executor=client.get_executor())
    assert n == 1 and (tmp_path / "dask" / "s00011_df+06.0nm.tif").exists()


@pytest.mark.slow
def test_images_are_bit_identical_across_processes(tmp_path):
    # FFTW plans are made per process; abTEM's default FFTW_MEASURE picked different
    # algorithms from run to run and the same command gave pixels 2e-5 apart
    import subprocess
    import sys

    import tifffile

    code = (
        "import sys; from napari_sbd.simulate.dataset import simulate_structure;"
        "from napari_sbd.simulate.imaging import ImagingParams;"
        "from napari_sbd.simulate.structures import StructureParams;"
        "simulate_structure(sys.argv[1], StructureParams(seed=3, lateral_a=26.0, "
        "support_height_a=10.0, thickness_nm=3.0, particle='1nm'), ImagingParams(), [6.0])"
    )
    for k in range(2):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"run{k}")], check=True,
                       timeout=600)
    a, b = (tifffile.imread(next((tmp_path / f"run{k}").glob("*.tif"))) for k in range(2))
    assert a.tobytes() == b.tobytes()
