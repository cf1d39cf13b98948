"""Shared fixtures: tiny networks with non-trivial BatchNorm statistics, data paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sbd.core.models import BiasFreeBatchNorm2d, BiasFreeUNet

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    """The shared data: $SBD_SHARED, else ../shared next to the clone (.ci/run sets the former)."""
    import os

    for cand in (os.environ.get("SBD_SHARED"), REPO.parent / "shared"):
        if cand and (Path(cand) / "data").is_dir():
            return Path(cand)
    return REPO.parent / "shared"


SHARED = _shared_dir()
REFERENCE_DIR = SHARED / "data" / "reference"
FORMATS_DIR = SHARED / "data" / "formats"


def randomise_bn(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every bias-free BN a non-trivial scale so folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, BiasFreeBatchNorm2d):
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    return net.eval()


def randomise_gain(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give a network's level gains (they start at exactly 1) a real dependence on the level."""
    g = torch.Generator().manual_seed(seed)
    gain = getattr(net, "gain", None)
    assert gain is not None, "a network built with level_gain=True"
    with torch.no_grad():
        gain.out.weight.copy_(torch.randn(gain.out.weight.shape, generator=g) * 0.1)
        gain.out.bias.copy_(torch.randn(gain.out.bias.shape, generator=g) * 0.05)
    return net.eval()


@pytest.fixture
def tiny_unet() -> BiasFreeUNet:
    torch.manual_seed(0)
    return randomise_bn(BiasFreeUNet(scales=2, base=4))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def reference_images() -> list[np.ndarray]:
    import tifffile

    files = sorted(REFERENCE_DIR.glob("*.tif"))
    if not files:
        pytest.skip(f"reference images not found in {REFERENCE_DIR}")
    return [tifffile.imread(f).astype(np.float32) for f in files]


@pytest.fixture
def tiny_model_file(tmp_path, tiny_unet):
    """A checkpoint of the tiny UNet, as napari-sbd-train would write it."""
    from napari_sbd.core.checkpoint import save_checkpoint

    path = tmp_path / "tiny.pt"
    save_checkpoint(path, tiny_unet, architecture="bf_unet", params={"scales": 2, "base": 4},
                    dose=0.45, pixel_size_pm=6.1, contrast="white")
    return path


@pytest.fixture
def dataset(tmp_path):
    """A small simulator-like training folder: 4 structures x 2 contrasts, with metadata.csv."""
    import csv

    import tifffile

    from napari_sbd.core.phantom import pt_on_ceo2_phantom

    folder = tmp_path / "sim"
    folder.mkdir()
    rows = []
    for s in range(4):
        for k, contrast in enumerate(["white", "black"]):
            ph = pt_on_ceo2_phantom((112, 120), particle_radius_a=4 + s, seed=s)
            img = ph.image if contrast == "white" else 0.9 - ph.image
            name = f"s{s}_d{k}.tif"
            tifffile.imwrite(folder / name, img.astype(np.float32))
            rows.append({"file": name, "structure_id": f"S{s}", "contrast": contrast,
                         "defocus_nm": 6 + k, "dose": 0.45, "pixel_size_pm": 6.1})
    with open(folder / "metadata.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return folder
