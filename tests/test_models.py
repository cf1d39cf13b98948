"""core.models: architecture, bias-freeness, receptive field, BN folding."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_sbd.core.models import (
    ARCHITECTURES,
    BiasFreeUNet,
    DnCNN,
    SmallUNet,
    build_model,
    fold_batchnorm,
)

from .conftest import randomise_bn, randomise_gain


@pytest.mark.parametrize(
    ("scales", "base", "params"),
    [(4, 32, 351_264), (4, 64, 1_402_944), (4, 128, 5_607_552)],
)
def test_unet_parameter_counts_match_the_papers(scales, base, params):
    # ICLR Table 2: 352K, 1.41M, 5.61M parameters
    net = BiasFreeUNet(scales=scales, base=base)
    assert sum(p.numel() for p in net.parameters()) == params


def test_comparison_networks_match_the_papers():
    # ICLR Table 2: DnCNN 668K (41 px), small UNet 233K (45 px)
    assert abs(sum(p.numel() for p in DnCNN().parameters()) - 668_000) < 3_000
    assert sum(p.numel() for p in SmallUNet().parameters()) == 233_408
    assert DnCNN().receptive_field == 41


@pytest.mark.parametrize("net", [BiasFreeUNet(2, 4), DnCNN(4, 4), SmallUNet(4),
                                 BiasFreeUNet(2, 4, unshuffle=2, centre_sigma=2.0)])
def test_no_additive_bias_anywhere(net):
    for name, module in net.named_modules():
        assert getattr(module, "bias", None) is None, name


def test_level_gains_are_the_only_biases_and_read_the_level_only():
    net = BiasFreeUNet(2, 4, unshuffle=2, centre_sigma=2.0, level_gain=True)
    with_bias = [n for n, m in net.named_modules() if getattr(m, "bias", None) is not None]
    assert with_bias and all(n.startswith("gain.") for n in with_bias)


def test_receptive_field_of_the_papers_configurations():
    # "about 221 px" for 4 scales and "about 900 px" for 6 (the papers); ours is exact
    assert 200 <= BiasFreeUNet(4, 8).receptive_field <= 260
    assert 850 <= BiasFreeUNet(6, 8).receptive_field <= 1050
    # more scales, larger field, for every depth the design asks for
    fields = [BiasFreeUNet(s, 4).receptive_field for s in range(2, 7)]
    assert fields == sorted(fields) and len(set(fields)) == 5


# Small instances of every registered architecture (a new one must be added here to be tested).
SMALL = {
    "bf_unet": [dict(scales=3, base=4), dict(scales=2, base=4, unshuffle=2, centre_sigma=3.0),
                dict(scales=2, base=4, unshuffle=2, level_gain=True)],
    "dncnn": [dict(depth=5, width=4)],
    "small_unet": [dict(width=4)],
}


def test_every_registered_architecture_is_tested():
    assert set(SMALL) == set(ARCHITECTURES)


@pytest.mark.parametrize(
    ("arch", "params"), [(a, p) for a, ps in SMALL.items() for p in ps],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}{w}" for k, w in v.items()),
)
def test_receptive_radius_bounds_the_true_dependency(arch, params):
    net = build_model(arch, **params)
    torch.manual_seed(1)
    net = randomise_bn(net)
    if net.conditioned:
        net = randomise_gain(net)
    # positive weights: no cancellation can hide a dependency
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.uniform_(m.weight, 0.01, 0.1)
    radius = net.receptive_radius
    n = 2 * radius + 4 * net.size_multiple + 40
    n += (-n) % net.size_multiple
    x = (torch.rand(1, 1, n, n) + 0.1).requires_grad_(True)
    worst = 0
    for p in range(n // 2, n // 2 + net.size_multiple):
        x.grad = None
        net(x)[0, 0, p, p].backward()
        rows = torch.nonzero(x.grad[0, 0].abs().sum(1) > 0).flatten()
        worst = max(worst, p - rows.min().item(), rows.max().item() - p)
    assert worst <= radius
    if isinstance(net, BiasFreeUNet):
        assert worst == radius  # exact, not just a bound


def test_eval_mode_is_positively_homogeneous(tiny_unet):
    x = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        assert torch.allclose(tiny_unet(3.7 * x), 3.7 * tiny_unet(x), rtol=1e-5, atol=1e-6)


def test_bilinear_upsampling_does_not_depend_on_image_size(tiny_unet):
    # align_corners=False: a crop's interior equals the whole image's interior
    x = torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        whole = tiny_unet(x)[0, 0, 48:80, 48:80]
        crop = tiny_unet(x[..., 16:112, 16:112])[0, 0, 32:64, 32:64]
    assert torch.allclose(whole, crop, atol=1e-6)


@pytest.mark.parametrize(
    "net", [BiasFreeUNet(3, 4, centre_sigma=2.0), DnCNN(5, 4), SmallUNet(4)],
    ids=["unet", "dncnn", "small-unet"],
)
def test_batchnorm_folding_keeps_the_output(net):
    net = randomise_bn(net)
    folded = fold_batchnorm(copy.deepcopy(net))
    assert not any("BatchNorm" in type(m).__name__ for m in folded.modules())
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        a, b = net(x), folded(x)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_fold_refuses_training_mode():
    with pytest.raises(RuntimeError, match="eval"):
        fold_batchnorm(BiasFreeUNet(2, 4).train())


def test_build_model_by_name_and_bad_names():
    assert isinstance(build_model("bf_unet", scales=2, base=4), BiasFreeUNet)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet")
    with pytest.raises(ValueError, match="scales"):
        BiasFreeUNet(scales=1)


def test_training_mode_batchnorm_learns_running_variance():
    net = BiasFreeUNet(2, 4).train()
    bn = net.inc[2]
    before = bn.running_var.clone()
    net(torch.rand(2, 1, 16, 16) * 10)
    assert not torch.equal(before, bn.running_var)
    assert np.isfinite(bn.running_var.numpy()).all()


def test_level_gains_start_as_the_network_without_them():
    torch.manual_seed(0)
    plain = BiasFreeUNet(2, 4, unshuffle=2, centre_sigma=2.0, activation="leaky_relu", norm="none")
    gained = BiasFreeUNet(2, 4, unshuffle=2, centre_sigma=2.0, activation="leaky_relu",
                          norm="none", level_gain=True)
    missing, unexpected = gained.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(k.startswith("gain.") for k in missing) and not unexpected
    x = torch.rand(2, 1, 32, 32) * 3
    with torch.no_grad():
        assert torch.equal(plain(x), gained(x))
        assert torch.equal(gained(x), gained(x, torch.tensor([0.1, 7.0])))  # all gains are 1


def test_level_gains_keep_the_network_homogeneous_for_a_given_level():
    torch.manual_seed(0)
    net = randomise_gain(BiasFreeUNet(2, 4, centre_sigma=2.0, activation="leaky_relu",
                                      norm="none", level_gain=True))
    assert net.conditioned and not BiasFreeUNet(2, 4).conditioned
    x = torch.rand(1, 1, 32, 48) * 2
    level = torch.tensor([0.45])
    with torch.no_grad():
        # for a fixed level the map is homogeneous of degree one ...
        ref = 3.7 * net(x, level)
        torch.testing.assert_close(net(3.7 * x, level), ref, rtol=1e-5,
                                   atol=1e-5 * float(ref.abs().max()))
        # ... the level is what tells a brighter frame from a scaled one ...
        assert not torch.allclose(net(x, torch.tensor([4.0])), net(x, level), rtol=1e-3)
        # ... and by default it is the frame's own mean counts
        torch.testing.assert_close(net(x), net(x, x.mean().reshape(1)))
