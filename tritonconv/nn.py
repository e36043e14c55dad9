"""Drop-in nn modules backed by tritonconv's ops; `convert` (tritonconv/conversion.py) swaps them into an
existing model.

Modules that replace a torch module subclass it (`Conv2d` is an `nn.Conv2d`, `MaxPool2d` an
`nn.MaxPool2d`, `Dropout` an `nn.Dropout`, `SpatialDropout2d` an `nn.Dropout2d`), so constructors,
state_dict keys and `isinstance` checks stay as they were; only `forward` changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import tritonconv as tc
from tritonconv._checks import check_activation, pair


class Conv2d(nn.Conv2d):
    """`torch.nn.Conv2d` computed by `tritonconv.conv2d` (which routes depthwise and 1x1 convolutions to
    their own kernels). Non-zero padding modes pad with `F.pad` first, as torch does."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return tc.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return tc.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class DepthwiseSeparableConv2d(nn.Module):
    """KxK depthwise conv, optional activation, then 1x1 pointwise conv, in one fused kernel
    (`tritonconv.depthwise_separable_conv2d`): the intermediate never goes to memory.

    Parameters: `depthwise_weight` (C, 1, K, K), `pointwise_weight` (F, C, 1, 1) and, with bias=True,
    `depthwise_bias` (C,) and `pointwise_bias` (F,), initialised as nn.Conv2d initialises them.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] | str = 0, dilation: int = 1, bias: bool = True,
                 activation: str | None = None) -> None:
        super().__init__()
        check_activation(activation)
        kh, kw = pair(kernel_size, "kernel_size", 1)
        depthwise = nn.Conv2d(in_channels, in_channels, (kh, kw), groups=in_channels, bias=bias)
        pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.depthwise_weight = depthwise.weight
        self.pointwise_weight = pointwise.weight
        self.depthwise_bias = depthwise.bias
        self.pointwise_bias = pointwise.bias
        self.stride, self.padding, self.dilation, self.activation = stride, padding, dilation, activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return tc.depthwise_separable_conv2d(input, self.depthwise_weight, self.pointwise_weight, self.depthwise_bias,
                                             self.pointwise_bias, self.stride, self.padding, self.dilation,
                                             self.activation)

    def extra_repr(self) -> str:
        c, f = self.depthwise_weight.shape[0], self.pointwise_weight.shape[0]
        k = tuple(self.depthwise_weight.shape[2:])
        return (f"{c}, {f}, kernel_size={k}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, bias={self.depthwise_bias is not None}, activation={self.activation}")


class Dropout(nn.Dropout):
    """`torch.nn.Dropout` with a Philox mask regenerated in backward instead of stored."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return tc.dropout(input, self.p, self.training)


class SpatialDropout2d(nn.Dropout2d):
    """`torch.nn.Dropout2d`: whole (sample, channel) feature maps dropped, survivors scaled by 1/(1-p)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return tc.spatial_dropout2d(input, self.p, self.training)


class DropBlock2d(nn.Module):
    """DropBlock (torchvision's `drop_block2d` semantics): block_size x block_size squares dropped."""

    def __init__(self, p: float, block_size: int) -> None:
        super().__init__()
        self.p, self.block_size = p, block_size

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return tc.drop_block2d(input, self.p, self.block_size, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, block_size={self.block_size}"


class Cutout2d(nn.Module):
    """Cutout: one size x size square zeroed per feature map in training."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return tc.cutout2d(input, self.size, self.training)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class MaxPool2d(nn.MaxPool2d):
    """`torch.nn.MaxPool2d` whose backward stores no index tensor."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.return_indices:
            raise ValueError("tritonconv.nn.MaxPool2d does not return indices; use torch.nn.MaxPool2d for that")
        return tc.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


class MaxPoolDropout2d(nn.Module):
    """Max-pooling dropout (Wu & Gu 2015): in training each input unit is dropped with probability p
    and each window outputs the max of its kept units; in eval, probabilistic weighted pooling (the
    expectation of the training output)."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, p: float = 0.5) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.p = kernel_size, stride, padding, p

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return tc.max_pool2d_dropout(input, self.kernel_size, self.stride, self.padding, p=self.p,
                                     training=self.training)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, p={self.p}"


from tritonconv.conversion import ConversionReport, convert  # noqa: E402,F401 (tc.nn.convert; it imports this module)
