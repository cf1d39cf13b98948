"""Denoising networks: the papers' bias-free UNet, DnCNN and the DURR small UNet.

Every network here is *bias-free*: no additive constant anywhere, so that in
evaluation mode it is a positively homogeneous function of degree one of its
input (f(c y) = c f(y) for c > 0). Its Jacobian at y then reproduces the output
exactly, f(y) = J(y) y, which is what makes the effective filter of
:mod:`napari_sbd.core.jacobian` a complete explanation of each output pixel
(Mohan et al., ICLR 2020).

Every network is an :class:`SBDNetwork`: it knows its own receptive field
(:attr:`~SBDNetwork.receptive_radius`) and the multiple its input sides must
have (:attr:`~SBDNetwork.size_multiple`); tiled inference and the effective
filter rely on both being exact. :data:`ARCHITECTURES` registers them by the
name checkpoints store.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "LEVEL_CENTRE",
    "BiasFreeBatchNorm2d",
    "BiasFreeUNet",
    "DnCNN",
    "LevelGain",
    "SBDNetwork",
    "SmallUNet",
    "build_model",
    "fold_batchnorm",
    "frame_level",
]


class BiasFreeBatchNorm2d(nn.Module):
    """Batch normalisation without mean subtraction and without bias.

    Training: ``x * gamma / sqrt(var_batch + eps)``; evaluation: the running
    variance replaces the batch variance, so the layer is a fixed per-channel
    scale (linear, hence foldable into the preceding convolution).

    Parameters
    ----------
    channels : int
        Number of channels.
    eps : float
        Added to the variance for numerical safety.
    momentum : float
        Weight of the current batch in the running variance.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.running_var: torch.Tensor
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel (batch statistics in training, running ones in evaluation)."""
        if self.training:
            var = x.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var.detach())
        else:
            var = self.running_var
        scale = self.weight / torch.sqrt(var + self.eps)
        return x * scale.view(1, -1, 1, 1)

    def scale(self) -> torch.Tensor:
        """Return the evaluation-mode per-channel factor."""
        return self.weight / torch.sqrt(self.running_var + self.eps)


class SBDNetwork(nn.Module, abc.ABC):
    """What every denoising network of napari-sbd provides.

    A bias-free map from a batch of count images (N, 1, H, W) to the denoised
    batch of the same shape, with its geometry exact: tiled inference uses it
    to choose tiles and margins, the effective filter to crop its window.
    """

    @property
    @abc.abstractmethod
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (pooling or stride grid)."""

    @property
    @abc.abstractmethod
    def receptive_radius(self) -> int:
        """Largest distance in pixels from an output pixel to an input it uses."""

    @property
    def receptive_field(self) -> int:
        """Side in pixels of the receptive field (2 * radius + 1)."""
        return 2 * self.receptive_radius + 1

    @property
    def conditioned(self) -> bool:
        """Whether the network also reads the frame's count level (see :class:`LevelGain`)."""
        return False

    @abc.abstractmethod
    def forward(self, y: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        """Denoise a batch (N, 1, H, W) of counts; H and W multiples of :attr:`size_multiple`.

        ``level`` (N,) is each frame's mean counts per pixel, read only by a
        :attr:`conditioned` network (None: the mean of ``y`` itself). Tiles and
        crops of one frame must all be given the whole frame's level.
        """


def _activation(name: str) -> nn.Module:
    # Both are positively homogeneous of degree one, so the network stays
    # bias-free; LeakyReLU cannot leave a channel permanently dead.
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.1, inplace=True)
    raise ValueError(f"unknown activation {name!r}: use 'relu' or 'leaky_relu'")


def _norm(channels: int, norm: str) -> nn.Module:
    if norm == "batch":
        return BiasFreeBatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}: use 'batch' or 'none'")


class _ConvBlock(nn.Sequential):
    """(replication pad, 3x3 conv without bias, bias-free BN, activation) x 2."""

    def __init__(self, cin: int, cmid: int, cout: int, activation: str, norm: str = "batch") -> None:
        super().__init__(
            nn.ReplicationPad2d(1),
            nn.Conv2d(cin, cmid, 3, bias=False),
            _norm(cmid, norm),
            _activation(activation),
            nn.ReplicationPad2d(1),
            nn.Conv2d(cmid, cout, 3, bias=False),
            _norm(cout, norm),
            _activation(activation),
        )


def gaussian_kernel1d(sigma: float, truncate: float = 3.0) -> torch.Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma`` pixels."""
    radius = max(1, math.ceil(truncate * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(torch.float32)

#: Count level (mean counts per input pixel) at which :class:`LevelGain` is centred:
#: the papers' 0.45 counts/pixel in vacuum.
LEVEL_CENTRE = 0.45


class LevelGain(nn.Module):
    """Per-channel gains of a UNet's blocks as a function of the frame's count level.

    Poisson noise is not scale-invariant: a frame at four times the dose is, to a
    bias-free network (f(c y) = c f(y)), the same frame scaled up, so a blind
    network must read the noise level from the texture alone. This module tells it:
    from u = log(level / :data:`LEVEL_CENTRE`), a small MLP gives a positive gain per
    channel of every block, ``exp(rate * mlp(u))``. The gains multiply features and
    depend on the level only, so for a fixed level the network stays homogeneous of
    degree one in its input and its effective filter stays exact (f(y) = J(y) y with
    the level held fixed, which is how the frame's level enters: the mean of the whole
    frame, not of the tile or crop). The last layer starts at zero, so a network
    given this module starts as the network without it (all gains 1).

    Parameters
    ----------
    widths : list of int
        Output channels of each block, in the order the network applies them.
    hidden : int
        Width of the MLP's hidden layer.
    rate : float
        Multiplier of the log-gains: the gains learn ``rate`` times faster than the
        other weights under Adam (they start from an already trained network).
    """

    def __init__(self, widths: list[int], hidden: int = 32, rate: float = 5.0) -> None:
        super().__init__()
        self.widths = list(widths)
        self.rate = float(rate)
        self.hidden = nn.Linear(1, hidden)
        self.out = nn.Linear(hidden, sum(widths))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, level: torch.Tensor) -> list[torch.Tensor]:
        """Return one (N, C_b, 1, 1) gain tensor per block for levels (N,)."""
        with torch.autocast(device_type=level.device.type, enabled=False):
            u = torch.log(level.float().clamp_min(1e-4) / LEVEL_CENTRE)[:, None]
            g = torch.exp(self.rate * self.out(torch.tanh(self.hidden(u))))
        return [c[:, :, None, None] for c in torch.split(g, self.widths, dim=1)]


def frame_level(y: torch.Tensor) -> torch.Tensor:
    """Mean counts per pixel of each frame of a batch (N, 1, H, W), outside autograd."""
    return y.detach().float().mean(dim=(1, 2, 3))


def unet_widths(scales: int, base: int) -> tuple[list[int], list[tuple[tuple[int, int], int]]]:
    """Channel widths of :class:`BiasFreeUNet`: encoder levels, and each decoder block's.

    Encoder widths e_0..e_S follow the authors' layout (C, C, C, 2C, 4C, ...; the
    bottom repeats the level above so the decoder concatenates evenly). Each
    decoder block, from the bottom up: ((skip channels, channels from below), out).
    """
    enc = [base * 2 ** max(0, lev - 2) for lev in range(scales)]
    enc.append(enc[-1])
    dec, below = [], enc[scales]
    for lev in range(scales - 1, -1, -1):
        out = enc[lev - 1] if lev >= 1 else enc[0]
        dec.append(((enc[lev], below), out))
        below = out
    return enc, dec


def _unet_convs(net: BiasFreeUNet) -> list[tuple[nn.Conv2d, tuple[int, ...]]]:
    """Every convolution of a UNet in order, with the channel groups its input concatenates."""
    enc, dec = unet_widths(net.scales, net.base)
    cin = net.unshuffle**2

    def convs(block: nn.Module) -> list[nn.Conv2d]:
        return [m for m in block.modules() if isinstance(m, nn.Conv2d)]

    first, second = convs(net.inc)
    out: list[tuple[nn.Conv2d, tuple[int, ...]]] = [(first, (cin,)), (second, (enc[0],))]
    for lev, block in enumerate(net.down, start=1):
        a, b = convs(block)
        out += [(a, (enc[lev - 1],)), (b, (enc[lev],))]
    for block, (cat, _) in zip(net.up, dec):
        a, b = convs(block)
        out += [(a, cat), (b, (sum(cat) // 2,))]
    return out + [(net.outc, (enc[0],))]


def widens(have: dict[str, Any], want: dict[str, Any]) -> bool:
    """Whether :func:`widen_unet` grows a UNet of parameters ``have`` into one of ``want``.

    The same network with a larger ``base``, without BatchNorm (whose statistics
    the new channels would change) or level gains (sized by the widths).
    """
    def rest(params: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in params.items() if k != "base" and (k != "level_gain" or v)}

    return (rest(have) == rest(want) and want.get("norm") == "none"
            and not want.get("level_gain") and int(want["base"]) > int(have["base"]))


def _unet_params(net: BiasFreeUNet) -> dict[str, Any]:
    return {k: getattr(net, k) for k in ("scales", "base", "unshuffle", "centre_sigma",
                                         "activation", "norm", "level_gain")}


@torch.no_grad()
def widen_unet(small: BiasFreeUNet, wide: BiasFreeUNet) -> None:
    """Write ``small``'s weights into ``wide``, a copy with more channels, keeping its function.

    Every convolution of ``wide`` keeps ``small``'s weights between the channels
    both have; the weights reading a new channel are zero, so the new channels
    change nothing at first (``wide(y) == small(y)``), and the weights making
    them keep ``wide``'s own random initialisation, so that training gives them
    something to learn from. Max-pooling, interpolation, padding and the
    activations act channel by channel, so the identity is exact.

    Raises
    ------
    ValueError
        When ``small`` does not widen into ``wide`` (:func:`widens`).
    """
    if not widens(_unet_params(small), _unet_params(wide)):
        raise ValueError("only a network without BatchNorm or level gains widens, into the same "
                         "network with a larger base")
    for (cs, groups_s), (cw, groups_w) in zip(_unet_convs(small), _unet_convs(wide)):
        # the old channels of each concatenated group, where they sit in the wider input
        offsets = [sum(groups_w[:g]) for g in range(len(groups_w))]
        old_in = torch.cat([off + torch.arange(n) for n, off in zip(groups_s, offsets)])
        new_in = torch.ones(cw.in_channels, dtype=torch.bool)
        new_in[old_in] = False
        cw.weight[:, new_in] = 0  # reading a new channel: nothing at first
        cw.weight[: cs.out_channels, old_in] = cs.weight.to(cw.weight.dtype)  # new outputs follow


class BiasFreeUNet(SBDNetwork):
    """The papers' bias-free UNet with a large receptive field.

    Encoder: a conv block, then ``scales`` times (2x2 max-pool, conv block);
    decoder: ``scales`` times (bilinear x2 upsampling with
    ``align_corners=False``, concatenation with the encoder's features, conv
    block); a 1x1 convolution maps to the output. Channel widths follow the
    authors' layout: ``base`` channels on the first three levels, doubling
    below. No additive bias anywhere.

    Three options (all keep the network bias-free for a given frame, all off in
    the papers' configuration):

    * ``unshuffle``: lossless space-to-depth of the input by this factor
      (pixel unshuffle), pixel shuffle back at the output. HRTEM frames are
      heavily oversampled, so the full-resolution convolutions can run on
      ``unshuffle**2`` times fewer pixels at the same receptive field.
    * ``centre_sigma``: a fixed Gaussian blur B (sigma in pixels) centres the
      input and is added back: ``f(y) = g(y - B y) + B y``. B is linear, so f
      stays homogeneous of degree one; g then sees zero-mean data, which keeps
      BatchNorm-without-mean-subtraction from killing ReLU channels on
      non-negative count images.
    * ``level_gain``: per-channel gains of every block from the frame's count
      level (:class:`LevelGain`), so that one network serves a range of doses
      without having to read the noise level from the texture.

    Parameters
    ----------
    scales : int
        Number of 2x down-samplings (2 to 8).
    base : int
        Channels of the first level.
    unshuffle : int
        Space-to-depth factor of the input (1: none).
    centre_sigma : float
        Sigma in input pixels of the centring blur (0: no centring).
    activation : {"relu", "leaky_relu"}
        Non-linearity (the papers: ReLU).
    norm : {"batch", "none"}
        Bias-free BatchNorm after each convolution (the papers), or none.
    level_gain : bool
        Condition the blocks on the frame's count level (:class:`LevelGain`).
    """

    def __init__(
        self,
        scales: int = 4,
        base: int = 32,
        unshuffle: int = 1,
        centre_sigma: float = 0.0,
        activation: str = "relu",
        norm: str = "batch",
        level_gain: bool = False,
    ) -> None:
        super().__init__()
        if not 2 <= scales <= 8:
            raise ValueError(f"scales must be between 2 and 8, got {scales}")
        if base < 1 or unshuffle < 1 or centre_sigma < 0:
            raise ValueError("base and unshuffle must be >= 1 and centre_sigma >= 0")
        self.scales = scales
        self.base = base
        self.unshuffle = unshuffle
        self.centre_sigma = float(centre_sigma)
        self.activation = activation
        self.norm = norm
        cin = unshuffle * unshuffle
        enc, dec = unet_widths(scales, base)
        self.inc = _ConvBlock(cin, enc[0], enc[0], activation, norm)
        self.down = nn.ModuleList(
            _ConvBlock(enc[lev - 1], enc[lev], enc[lev], activation, norm)
            for lev in range(1, scales + 1)
        )
        self.up = nn.ModuleList(_ConvBlock(sum(cat), sum(cat) // 2, out, activation, norm)
                                for cat, out in dec)
        up_widths = [out for _, out in dec]
        self.outc = nn.Conv2d(enc[0], cin, 1, bias=False)
        if norm == "none":  # no BN to rescale: keep activations' variance by init
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, a=0.1 if activation == "leaky_relu" else 0.0)
            with torch.no_grad():  # start close to the identity path (small correction)
                self.outc.weight.mul_(0.1)
        self.level_gain = bool(level_gain)
        self.gain: LevelGain | None = None
        if level_gain:  # made last, so the convolutions draw the same initial weights
            self.gain = LevelGain(enc + up_widths)
        self.centre_kernel: torch.Tensor | None
        if self.centre_sigma > 0:
            self.register_buffer("centre_kernel", gaussian_kernel1d(self.centre_sigma))
        else:
            self.centre_kernel = None

    # -- geometry -----------------------------------------------------------
    @property
    def conditioned(self) -> bool:
        """True with ``level_gain``: the frame's count level steers the blocks."""
        return self.gain is not None

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (pooling grid)."""
        return self.unshuffle * 2**self.scales

    @property
    def centre_radius(self) -> int:
        """Half-width in pixels of the centring blur (0 without centring)."""
        return 0 if self.centre_kernel is None else (self.centre_kernel.numel() - 1) // 2

    def _input_interval(self, p: int) -> tuple[int, int]:
        """Exact range of input pixels the output pixel ``p`` depends on (1-D).

        Walks the network backwards with integer index maps: a 3x3 conv widens
        by one pixel of its level, a 2x2 max-pool maps coarse ``i`` to fine
        ``[2i, 2i+1]``, bilinear upsampling (align_corners=False) maps fine
        ``j`` to coarse ``[(j-1)//2, (j+1)//2]``. Border clamping only ever
        shrinks the range, so ignoring it gives the interior (largest) case.
        """
        s = self.scales

        def enc(level: int, a: int, b: int) -> tuple[int, int]:
            a, b = a - 2, b + 2  # the level's conv block
            for _ in range(level):
                a, b = 2 * a, 2 * b + 1  # max-pool
                a, b = a - 2, b + 2  # conv block one level finer
            return a, b

        def dec(level: int, a: int, b: int) -> tuple[int, int]:
            a, b = a - 2, b + 2  # conv block on the concatenation
            lo, hi = enc(level, a, b)  # skip branch
            if level + 1 == s:
                lo2, hi2 = enc(s, (a - 1) // 2, (b + 1) // 2)
            else:
                lo2, hi2 = dec(level + 1, (a - 1) // 2, (b + 1) // 2)
            return min(lo, lo2), max(hi, hi2)

        u = self.unshuffle
        lo, hi = dec(0, p // u, p // u)
        lo, hi = lo * u, hi * u + u - 1
        r = self.centre_radius
        return lo - r, hi + r

    @property
    def receptive_radius(self) -> int:
        """Largest distance in pixels from an output pixel to an input it uses."""
        m = self.size_multiple
        # The dependency pattern repeats with the pooling grid: check one period.
        return max(
            max(p - lo, hi - p) for p in range(m) for lo, hi in [self._input_interval(p)]
        )

    # -- forward ------------------------------------------------------------
    def _blur(self, y: torch.Tensor) -> torch.Tensor:
        assert self.centre_kernel is not None
        k = self.centre_kernel.to(dtype=y.dtype)
        r = (k.numel() - 1) // 2
        y = F.pad(y, (r, r, r, r), mode="replicate")
        y = F.conv2d(y, k.view(1, 1, 1, -1))
        return F.conv2d(y, k.view(1, 1, -1, 1))

    def forward(self, y: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        """Denoise a batch (N, 1, H, W); H and W multiples of :attr:`size_multiple`.

        ``level`` (N,): each frame's mean counts per pixel, read with ``level_gain``
        only (None: the mean of ``y``; tiles of a frame must pass the frame's).
        """
        gains: list[torch.Tensor] = []
        if self.gain is not None:
            gains = self.gain(frame_level(y) if level is None else level.to(y.device))
        g = iter(gains)

        def gained(x: torch.Tensor) -> torch.Tensor:
            return x * next(g).to(x.dtype) if gains else x

        smooth = None
        if self.centre_kernel is not None:
            # the blurred frame, the bulk of the output, in the input's precision even under
            # mixed-precision training: only the network's correction is rounded then
            with torch.autocast(device_type=y.device.type, enabled=False):
                smooth = self._blur(y)
        x = y - smooth if smooth is not None else y
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        skips = [gained(self.inc(x))]
        for block in self.down:
            skips.append(gained(block(F.max_pool2d(skips[-1], 2))))
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = gained(block(torch.cat([skip, x], dim=1)))
        x = self.outc(x)
        if self.unshuffle > 1:
            x = F.pixel_shuffle(x, self.unshuffle)
        return x.to(smooth.dtype) + smooth if smooth is not None else x


class DnCNN(SBDNetwork):
    """DnCNN (Zhang et al. 2017), bias-free: 3x3 convs, BN, ReLU, residual.

    Parameters
    ----------
    depth : int
        Number of convolutional layers (20 in the papers).
    width : int
        Channels of the hidden layers (64 in the papers).
    """

    def __init__(self, depth: int = 20, width: int = 64) -> None:
        super().__init__()
        if depth < 3:
            raise ValueError(f"DnCNN needs depth >= 3, got {depth}")
        self.depth, self.width = depth, width
        layers: list[nn.Module] = [
            nn.ReplicationPad2d(1), nn.Conv2d(1, width, 3, bias=False), nn.ReLU(inplace=True)
        ]
        for _ in range(depth - 2):
            layers += [
                nn.ReplicationPad2d(1),
                nn.Conv2d(width, width, 3, bias=False),
                BiasFreeBatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ReplicationPad2d(1), nn.Conv2d(width, 1, 3, bias=False)]
        self.body = nn.Sequential(*layers)

    @property
    def size_multiple(self) -> int:
        """Any size: no pooling."""
        return 1

    @property
    def receptive_radius(self) -> int:
        """One pixel per 3x3 layer (field 41 px for 20 layers)."""
        return self.depth

    def forward(self, y: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        """Residual learning: the body estimates the noise (``level`` is not read)."""
        return y - self.body(y)


class SmallUNet(SBDNetwork):
    """The small UNet of DURR (Zhang et al. 2018), bias-free, as in the ICLR paper C.3.

    Parameters
    ----------
    width : int
        Channels of the first level (32 in the paper; 2x at the second).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w, w2 = width, 2 * width
        self.width = width

        def conv(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> nn.Module:
            return _PaddedConv(cin, cout, k, stride, dilation)

        act = nn.ReLU
        self.conv1 = nn.Sequential(conv(1, w, 5), act())
        self.conv2 = nn.Sequential(conv(w, w, 3), BiasFreeBatchNorm2d(w), act())
        self.conv3 = nn.Sequential(conv(w, w2, 3, stride=2), BiasFreeBatchNorm2d(w2), act())
        self.conv4 = nn.Sequential(conv(w2, w2, 3), BiasFreeBatchNorm2d(w2), act())
        self.conv5 = nn.Sequential(conv(w2, w2, 3, dilation=2), BiasFreeBatchNorm2d(w2), act())
        self.conv6 = nn.Sequential(conv(w2, w2, 3, dilation=4), BiasFreeBatchNorm2d(w2), act())
        self.conv7 = nn.Sequential(
            nn.ConvTranspose2d(w2, w2, 4, stride=2, padding=1, bias=False),
            BiasFreeBatchNorm2d(w2),
            act(),
        )
        self.conv8 = nn.Sequential(conv(w2 + w, w, 3), BiasFreeBatchNorm2d(w), act())
        self.conv9 = conv(w, 1, 5)

    @property
    def size_multiple(self) -> int:
        """Even sides: one stride-2 level."""
        return 2

    @property
    def receptive_radius(self) -> int:
        """Conservative bound in input pixels (field about 45-50 px)."""
        # 5x5 (2) + 3x3 (1) + strided 3x3 (1) + at half resolution 3x3 (1),
        # dilation 2 (2), dilation 4 (4), transposed 4x4 (1) -> 8 coarse = 16
        # fine + stride alignment (1), then 3x3 (1) and 5x5 (2).
        return 2 + 1 + 1 + 16 + 1 + 1 + 2

    def forward(self, y: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        """Denoise a batch (N, 1, H, W) with even H and W (``level`` is not read)."""
        x1 = self.conv2(self.conv1(y))
        x = self.conv6(self.conv5(self.conv4(self.conv3(x1))))
        x = self.conv7(x)
        x = self.conv8(torch.cat([x, x1], dim=1))
        return self.conv9(x)


class _PaddedConv(nn.Sequential):
    """Replication padding and a bias-free conv (SmallUNet's layers; BN folds into the conv)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__(
            nn.ReplicationPad2d(dilation * (k - 1) // 2),
            nn.Conv2d(cin, cout, k, stride=stride, dilation=dilation, bias=False),
        )

    @property
    def conv(self) -> nn.Conv2d:
        """The convolution (a BN after it folds into its weights)."""
        conv = self[1]
        assert isinstance(conv, nn.Conv2d)
        return conv


ARCHITECTURES: dict[str, type[SBDNetwork]] = {
    "bf_unet": BiasFreeUNet,
    "dncnn": DnCNN,
    "small_unet": SmallUNet,
}


def build_model(architecture: str, **params: Any) -> SBDNetwork:
    """Instantiate a registered architecture by name.

    Parameters
    ----------
    architecture : str
        One of :data:`ARCHITECTURES` ("bf_unet", "dncnn", "small_unet").
    **params
        Constructor arguments of that architecture.

    Returns
    -------
    SBDNetwork
        The untrained network.
    """
    try:
        cls = ARCHITECTURES[architecture]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {architecture!r}; known: {known}") from None
    return cls(**params)


def fold_batchnorm(model: SBDNetwork) -> SBDNetwork:
    """Fold every evaluation-mode :class:`BiasFreeBatchNorm2d` into the conv before it.

    Works in place on a module that is already in eval mode and replaces each
    folded BN by an identity. The result computes the same function (up to
    float rounding, about 1e-6 relative) about 10-16% faster on the CPU.

    Parameters
    ----------
    model : SBDNetwork
        A network from this module, in eval mode.

    Returns
    -------
    SBDNetwork
        The same object, folded.
    """
    if model.training:
        raise RuntimeError("fold_batchnorm needs a model in eval mode")

    def visit(module: nn.Module) -> None:
        names = list(module._modules)
        last_conv: nn.Conv2d | nn.ConvTranspose2d | None = None
        for name in names:
            child = module._modules[name]
            assert child is not None  # only registered submodules are listed
            if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d)):
                last_conv = child
            elif isinstance(child, BiasFreeBatchNorm2d) and last_conv is not None:
                with torch.no_grad():
                    s = child.scale()
                    if isinstance(last_conv, nn.ConvTranspose2d):
                        last_conv.weight.mul_(s.view(1, -1, 1, 1))
                    else:
                        last_conv.weight.mul_(s.view(-1, 1, 1, 1))
                module._modules[name] = nn.Identity()
                last_conv = None
            elif isinstance(child, (nn.ReplicationPad2d,)):
                continue
            elif isinstance(child, _PaddedConv):  # a following BN folds into its conv
                last_conv = child.conv
            else:
                visit(child)
                last_conv = None

    visit(model)
    return model
