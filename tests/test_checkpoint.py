"""core.checkpoint: round trip, safe loading, and one clear error per bad file."""

from __future__ import annotations

import pickle

import pytest
import torch

from napari_sbd.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_sbd.core.models import BiasFreeUNet

META = dict(dose=0.45, pixel_size_pm=6.1, contrast="white", training_data="unit test")


@pytest.fixture
def saved(tmp_path, tiny_unet):
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_unet, architecture="bf_unet", params={"scales": 2, "base": 4},
                    validation_psnr=31.5, **META)
    return path


def test_round_trip_keeps_weights_and_metadata(saved, tiny_unet):
    net, meta = load_checkpoint(saved)
    for k, v in tiny_unet.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k
    assert meta["dose"] == 0.45 and meta["pixel_size_pm"] == 6.1 and meta["contrast"] == "white"
    assert meta["architecture"] == "bf_unet" and meta["params"] == {"scales": 2, "base": 4}
    assert meta["validation_psnr"] == 31.5 and meta["training_data"] == "unit test"
    assert "package_version" in meta and "created" in meta
    assert not net.training


def test_save_is_atomic_and_leaves_no_temporary(saved):
    import os
    import stat

    assert [p.name for p in saved.parent.iterdir()] == ["model.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o666 & ~umask  # not private like mkstemp


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_checkpoint(tmp_path / "nope.pt")
    assert "nope.pt" in str(err.value)


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_checkpoint(saved)
    assert str(saved) in str(err.value)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(p)


def test_text_file(tmp_path):
    p = tmp_path / "notes.pt"
    p.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        load_checkpoint(p)


def test_foreign_torch_file(tmp_path, tiny_unet):
    p = tmp_path / "foreign.pt"
    torch.save(tiny_unet.state_dict(), p)  # a bare state dict from another project
    with pytest.raises(CheckpointError, match="not a napari-sbd checkpoint"):
        load_checkpoint(p)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_file_with_code_is_refused_without_running_it(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"format": "napari-sbd-checkpoint", "x": _Evil()}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="refused for safety"):
        load_checkpoint(p)
    assert "code ran" not in capsys.readouterr().out


def test_weights_that_do_not_match_the_architecture(tmp_path, tiny_unet):
    p = tmp_path / "mismatch.pt"
    # declared as a wider network than the weights it holds
    save_checkpoint(p, tiny_unet, architecture="bf_unet", params={"scales": 2, "base": 8}, **META)
    with pytest.raises(CheckpointError, match="do not match") as err:
        load_checkpoint(p)
    assert "wrong shape" in str(err.value)
    save_checkpoint(p, BiasFreeUNet(3, 4), architecture="bf_unet",
                    params={"scales": 2, "base": 4}, **META)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(p)


def test_unknown_architecture_and_bad_params(tmp_path, tiny_unet):
    p = tmp_path / "m.pt"
    save_checkpoint(p, tiny_unet, architecture="bf_unet", params={"scales": 2, "base": 4}, **META)
    payload = torch.load(p, weights_only=True)
    payload["metadata"]["architecture"] = "transformer"
    torch.save(payload, p)
    with pytest.raises(CheckpointError, match="unknown to this"):
        load_checkpoint(p)
    payload["metadata"]["architecture"] = "bf_unet"
    payload["metadata"]["params"] = {"scales": 2, "colour": "red"}
    torch.save(payload, p)
    with pytest.raises(CheckpointError, match="parameters"):
        load_checkpoint(p)
    del payload["metadata"]["dose"]
    torch.save(payload, p)
    with pytest.raises(CheckpointError, match="lacks metadata: dose"):
        load_checkpoint(p)


def test_newer_format_version(tmp_path, saved):
    payload = torch.load(saved, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, saved)
    with pytest.raises(CheckpointError, match="upgrade napari-sbd"):
        load_checkpoint(saved)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path)


def test_flipped_bytes_in_the_weights_are_detected(saved):
    data = bytearray(saved.read_bytes())
    payload = torch.load(saved, weights_only=True)
    # find the bytes of the largest tensor in the file and flip 64 of them
    big = max(payload["state_dict"].values(), key=lambda t: t.numel())
    raw = big.contiguous().view(torch.uint8).numpy().tobytes()
    at = bytes(data).find(raw[:32])
    assert at > 0
    for i in range(at + 8, at + 72):
        data[i] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged") as err:
        load_checkpoint(saved)
    assert "copy it again" in str(err.value)


def test_nan_or_negative_weights_are_refused_by_the_probe(tmp_path, tiny_unet):
    p = tmp_path / "nan.pt"
    with torch.no_grad():
        next(iter(tiny_unet.parameters())).fill_(float("nan"))
    save_checkpoint(p, tiny_unet, architecture="bf_unet", params={"scales": 2, "base": 4}, **META)
    with pytest.raises(CheckpointError, match="NaN or infinite values on a test frame"):
        load_checkpoint(p)
    # a network whose output is the negative of its input (as flipped bytes gave: -5 counts)
    from napari_sbd.core.checkpoint import _probe

    class Negate(torch.nn.Module):
        def forward(self, x):
            return -x

    with pytest.raises(CheckpointError, match="negative counts"):
        _probe(Negate(), "neg.pt")
    _probe(torch.nn.Identity(), "identity.pt")  # a mean-preserving network passes


def test_pickled_code_message_never_suggests_unsafe_loading(tmp_path, capsys):
    p = tmp_path / "evil2.pt"
    torch.save({"format": "napari-sbd-checkpoint", "x": _Evil()}, p)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(p)
    msg = str(err.value)
    assert "contains code" in msg and "refused for safety" in msg and "print" in msg
    assert "weights_only" not in msg and "truncated" not in msg
    assert "code ran" not in capsys.readouterr().out


def test_huge_declared_network_is_refused_without_allocating(tmp_path, tiny_unet):
    import resource

    p = tmp_path / "huge.pt"
    save_checkpoint(p, tiny_unet, architecture="bf_unet", params={"scales": 2, "base": 4}, **META)
    payload = torch.load(p, weights_only=True)
    payload["metadata"]["params"] = {"scales": 2, "base": 10**6}  # 36 TB of weights
    del payload["weights_sha256"]
    torch.save(payload, p)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(p)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 500
