"""Arithmetic for designing conv stacks, without running anything: the receptive field of a stack of
(dilated, strided) convolutions, and the weight and multiply-accumulate counts of one convolution done
three ways: standard KxK, depthwise-separable (KxK depthwise then 1x1) and factorised (1xK then Kx1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def receptive_field(kernel_sizes: Sequence[int], dilations: Sequence[int] | None = None,
                    strides: Sequence[int] | None = None) -> int:
    """Receptive field, in input pixels along one axis, of a stack of conv layers.

    Layer i with kernel k_i and dilation d_i widens the field by (k_i - 1) * d_i times the product of the
    strides before it:  rf = 1 + sum_i (k_i - 1) * d_i * prod_{j<i} s_j.
    Three 3x3 layers give 7; with dilations 1, 2, 4 they give 15.
    """
    n = len(kernel_sizes)
    dilations = [1] * n if dilations is None else list(dilations)
    strides = [1] * n if strides is None else list(strides)
    if len(dilations) != n or len(strides) != n:
        raise ValueError(f"dilations and strides need one entry per layer ({n}), got "
                         f"{len(dilations)} and {len(strides)}")
    if min([*kernel_sizes, *dilations, *strides], default=1) < 1:
        raise ValueError("kernel sizes, dilations and strides must all be >= 1")
    field, jump = 1, 1
    for k, d, s in zip(kernel_sizes, dilations, strides):
        field += (k - 1) * d * jump
        jump *= s
    return field


@dataclass(frozen=True)
class ConvCost:
    """Weights and multiply-accumulates of one conv layer, without bias."""

    params: int
    macs: int


def conv_cost(in_channels: int, out_channels: int, kernel_size: int, out_h: int, out_w: int,
              separable: bool = False, factorized: bool = False) -> ConvCost:
    """Weights and MACs of a KxK conv from C to F channels producing an out_h x out_w (H x W) map.

    Standard: K*K*C*F weights and K*K*C*F*H*W MACs.
    separable=True, depthwise-separable (KxK depthwise, then 1x1 pointwise): K*K*C + C*F weights and
    (K*K*C + C*F)*H*W MACs, a fraction 1/F + 1/K^2 of the standard.
    factorized=True, spatially factorised (1xK from C to F channels, then Kx1 from F to F, the same receptive
    field; the intermediate map is H x W): K*C*F + K*F*F weights and (K*C*F + K*F*F)*H*W MACs, a fraction
    (C + F) / (K*C) of the standard (2/K when C = F).
    Every weight is used once per output pixel, so MACs = weights * H * W in all three.
    """
    if separable and factorized:
        raise ValueError("separable and factorized are two different separations: pass at most one")
    c, f, k = in_channels, out_channels, kernel_size
    if separable:
        params = k * k * c + c * f
    elif factorized:
        params = k * c * f + k * f * f
    else:
        params = k * k * c * f
    return ConvCost(params=params, macs=params * out_h * out_w)
