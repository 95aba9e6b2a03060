"""A U-Net with a RegNet encoder in plain torch, for inference without the training stack.

The network is the one ``segmentation_models_pytorch.Unet(encoder_name="tu-regnety_004")``
builds (timm's RegNetY behind smp's universal encoder, smp's Unet decoder and head), module for
module, so it takes the same state dict (the same keys, shapes and arithmetic, hence the same
outputs). Importing it needs torch alone: no smp, timm or torchvision, which take seconds to
import. The file imports nothing else from the package, so a model package can carry it as the
architecture of its weights.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple  # noqa: UP035 - TorchScript reads these annotations

import torch
import torch.nn.functional as F
from torch import nn

#: RegNet encoders this file can build: stem width, stage widths, blocks per stage, channels per
#: group and squeeze-excitation ratio (timm's ``regnety_004`` and ``regnetx_004``)
REGNETS = {
    "regnety_004": {"stem": 32, "widths": (48, 104, 208, 440), "depths": (1, 3, 6, 6),
                    "group_size": 8, "se_ratio": 0.25},
    "regnetx_004": {"stem": 32, "widths": (32, 64, 160, 384), "depths": (1, 2, 7, 12),
                    "group_size": 16, "se_ratio": 0.0},
}


class ConvBn(nn.Sequential):
    """Convolution without bias, batch norm, optional ReLU (timm's ``ConvNormAct``: ``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)), inplace=True))
        return x * s.sigmoid()


class Bottleneck(nn.Module):
    """RegNet block: 1x1, grouped 3x3 (stride), squeeze-excitation, 1x1, plus the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, group_size: int, se_ratio: float):
        super().__init__()
        self.conv1 = ConvBn(cin, cout, 1)
        self.conv2 = ConvBn(cout, cout, 3, stride, groups=cout // group_size)
        self.se = SqueezeExcite(cout, int(round(cin * se_ratio))) if se_ratio else nn.Identity()
        self.conv3 = ConvBn(cout, cout, 1, act=False)
        self.downsample = ConvBn(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.se(self.conv2(self.conv1(x))))
        return F.relu(y + self.downsample(x))


class RegNetFeatures(nn.Sequential):
    """The stem and the first ``depth - 1`` stages (``s1`` ...), each halving height and width."""

    def __init__(self, in_channels: int, depth: int, stem: int, widths, depths, group_size: int,
                 se_ratio: float):
        super().__init__()
        self.add_module("stem", ConvBn(in_channels, stem, 3, 2))
        cin = stem
        for i, (width, blocks) in enumerate(zip(widths[: depth - 1], depths[: depth - 1], strict=True)):
            stage = nn.Sequential()
            for b in range(blocks):
                stage.add_module(f"b{b + 1}", Bottleneck(cin if b == 0 else width, width, 2 if b == 0 else 1,
                                                         group_size, se_ratio))
            cin = width
            self.add_module(f"s{i + 1}", stage)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:  # noqa: UP006
        feats: List[torch.Tensor] = []  # noqa: UP006
        for module in self:
            x = module(x)
            feats.append(x)
        return feats


class RegNetEncoder(nn.Module):
    """smp's universal encoder around the RegNet: the input itself, then one map per stage."""

    def __init__(self, **kwargs):
        super().__init__()
        self.model = RegNetFeatures(**kwargs)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:  # noqa: UP006
        return [x] + self.model(x)


def conv_relu(cin: int, cout: int) -> nn.Sequential:
    """smp's ``Conv2dReLU``: 3x3 convolution without bias, batch norm, ReLU (keys ``0``, ``1``)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        self.conv1 = conv_relu(cin + skip, cout)
        self.conv2 = conv_relu(cout, cout)

    def forward(self, x: torch.Tensor, size: List[int], skip: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: UP006,UP045
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class Decoder(nn.Module):
    def __init__(self, encoder_channels: list[int], decoder_channels: list[int]):
        super().__init__()
        enc = encoder_channels[1:][::-1]
        ins = [enc[0], *decoder_channels[:-1]]
        skips = [*enc[1:], 0]
        widths = zip(ins, skips, decoder_channels, strict=True)
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in widths)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:  # noqa: UP006
        n = len(features)
        x = features[n - 1]
        for i, block in enumerate(self.blocks):
            # up to the next finer feature map; the last block (the input's size) has no skip
            target = features[n - 2 - i]
            skip: Optional[torch.Tensor] = target if n - 2 - i > 0 else None  # noqa: UP045
            x = block(x, [target.shape[2], target.shape[3]], skip)
        return x


class RegNetUnet(nn.Module):
    """U-Net with a RegNet encoder; (N, in_channels, H, W) float32 in, (N, classes, H, W) logits out.

    H and W must be multiples of ``2 ** encoder_depth``.
    """

    def __init__(self, encoder: str = "regnety_004", encoder_depth: int = 5,
                 decoder_channels=(128, 64, 32, 16, 16), in_channels: int = 1, classes: int = 1):
        super().__init__()
        if encoder not in REGNETS:
            raise ValueError(f"unknown RegNet {encoder!r}; choose one of {sorted(REGNETS)}")
        if not 1 <= encoder_depth <= 5 or len(decoder_channels) != encoder_depth:
            raise ValueError(f"encoder_depth must lie in 1-5 with one decoder width per stage, got "
                             f"{encoder_depth} and {list(decoder_channels)}")
        cfg = REGNETS[encoder]
        self.encoder = RegNetEncoder(in_channels=in_channels, depth=encoder_depth, **cfg)
        channels = [in_channels, cfg["stem"], *cfg["widths"][: encoder_depth - 1]]
        self.decoder = Decoder(channels, list(decoder_channels))
        self.segmentation_head = nn.Sequential(nn.Conv2d(decoder_channels[-1], classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.decoder(self.encoder(x)))


def _round_half_even(v: float) -> int:
    """Python's ``round`` (half to even), written so that TorchScript compiles it."""
    low = math.floor(v)
    rest = v - low
    if rest > 0.5 or (rest == 0.5 and low % 2 == 1):
        return int(low) + 1
    return int(low)


class ScaledRegNetUnet(RegNetUnet):
    """The whole network step of napari-mitoseg for one slice, as a model package runs it.

    (N, 1, H, W) normalised slices at the model's pixel size in, (N, 1, H, W) foreground
    probability out: resized by ``input_scale`` (antialiased when shrinking), padded to a multiple
    of ``2 ** encoder_depth`` (reflected), the U-Net, a sigmoid, cropped and resized back. The
    weights are :class:`RegNetUnet`'s, under the same keys.
    """

    def __init__(self, encoder: str = "regnety_004", encoder_depth: int = 5,
                 decoder_channels=(128, 64, 32, 16, 16), in_channels: int = 1, classes: int = 1,
                 input_scale: float = 1.0):
        super().__init__(encoder, encoder_depth, decoder_channels, in_channels, classes)
        self.input_scale = float(input_scale)
        self.stride = 2**encoder_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probability(x)

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        nh = max(8, _round_half_even(h * self.input_scale))
        nw = max(8, _round_half_even(w * self.input_scale))
        if nh != h or nw != w:
            x = F.interpolate(x, size=[nh, nw], mode="bilinear", align_corners=False,
                              antialias=nh < h or nw < w)
        ph, pw = (-nh) % self.stride, (-nw) % self.stride
        if ph > 0 or pw > 0:
            x = F.pad(x, [0, pw, 0, ph], mode="reflect" if ph < nh and pw < nw else "replicate")
        y = torch.sigmoid(self.segmentation_head(self.decoder(self.encoder(x))))[:, :, :nh, :nw]
        if nh != h or nw != w:
            y = F.interpolate(y, size=[h, w], mode="bilinear", align_corners=False, antialias=h < nh or w < nw)
        return y.clamp(0.0, 1.0)


class PackagedRegNetUnet(ScaledRegNetUnet):
    """:class:`ScaledRegNetUnet` with two outputs, the probability and (thresholded by the model
    package's post-processing) the mask; the same tensor twice."""

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:  # noqa: UP006
        p = self.probability(x)
        return p, p
