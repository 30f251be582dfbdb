"""Inflate a 2D image network to 3D (I3D-style), so ImageNet weights start a video model.

No Kinetics weights are available offline; inflation (Carreira & Zisserman 2017) turns each
Conv2d into a Conv3d whose kernel repeats the 2D kernel over `t` frames divided by `t`, so a
clip of identical frames gives exactly the 2D network's features ("boring video" init), and
each BatchNorm2d / 2D pooling into its 3D counterpart with the same statistics. Time is never
strided and is padded by repeating the edge frames (zero padding would dim the first and
last frames and break that identity); the global pool at the end averages over time and space.

Which convolutions get a temporal extent: `time_kernel` for the spatial (k > 1) ones, 1 for
the pointwise (1x1) ones, as in I3D's and S3D's cheaper variants; MobileNetV2's depthwise
3x3 convolutions become 3x3x3 depthwise, which adds little compute.
"""

from __future__ import annotations

import torch
from torch import nn


class TimePadConv3d(nn.Conv3d):
    """A Conv3d that pads time by repeating the first and last frames (space as the 2D conv)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kernel_size[0] // 2
        if p:
            x = torch.cat([x[:, :, :1].expand(-1, -1, p, -1, -1), x,
                           x[:, :, -1:].expand(-1, -1, p, -1, -1)], 2)
        return super().forward(x)


def _conv3d(conv: nn.Conv2d, time_kernel: int) -> nn.Conv3d:
    kh, kw = conv.kernel_size
    t = time_kernel if max(kh, kw) > 1 else 1
    out = TimePadConv3d(conv.in_channels, conv.out_channels, (t, kh, kw),
                        stride=(1, *conv.stride), padding=(0, *conv.padding),
                        dilation=(1, *conv.dilation), groups=conv.groups,
                        bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        out.weight.copy_(conv.weight.unsqueeze(2).repeat(1, 1, t, 1, 1) / t)
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
    out.weight.requires_grad_(conv.weight.requires_grad)
    return out


def _bn3d(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    out = nn.BatchNorm3d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    out.load_state_dict(bn.state_dict())
    return out


def inflate(module: nn.Module, time_kernel: int = 3) -> nn.Module:
    """Replace, in place and recursively, 2D convolutions, batch norms and pools of `module`
    by 3D ones; returns `module`. Inputs become (B, C, T, H, W).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4).eval(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> x = torch.rand(1, 3, 8, 8)
        >>> y2 = net(x)
        >>> y3 = inflate(net)(x.unsqueeze(2).repeat(1, 1, 5, 1, 1))  # 5 identical frames
        >>> bool(torch.allclose(y2, y3, atol=1e-5))
        True
    """
    if time_kernel < 1 or time_kernel % 2 == 0:
        raise ValueError(f"time_kernel must be odd and >= 1, not {time_kernel}")
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            new: nn.Module = _conv3d(child, time_kernel)
        elif isinstance(child, nn.BatchNorm2d):
            new = _bn3d(child)
        elif isinstance(child, nn.AdaptiveAvgPool2d):
            new = nn.AdaptiveAvgPool3d(1 if child.output_size in (1, (1, 1)) else (1, *_pair(child.output_size)))
        elif isinstance(child, nn.AdaptiveMaxPool2d):
            new = nn.AdaptiveMaxPool3d(1 if child.output_size in (1, (1, 1)) else (1, *_pair(child.output_size)))
        elif isinstance(child, nn.MaxPool2d):
            new = nn.MaxPool3d((1, *_pair(child.kernel_size)), (1, *_pair(child.stride)),
                               (0, *_pair(child.padding)))
        else:
            inflate(child, time_kernel)
            continue
        new.train(child.training)
        setattr(module, name, new)
    return module


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
