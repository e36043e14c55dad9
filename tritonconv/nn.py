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
from tritonconv._checks import FLOAT_DTYPES, check_activation, check_int, check_probability, conv_padding, pair
from tritonconv.pooling import check_window


def _check_dtypes(module: nn.Module, input: torch.Tensor, *parameters: torch.Tensor | None) -> None:
    """A dtype error raised from a module names the fix for the model (model.float()), where the op's own
    error could only name the tensor."""
    for what, t in (("input", input), *(("parameter", p) for p in parameters)):
        if isinstance(t, torch.Tensor) and t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"tritonconv.nn.{type(module).__name__} got a {t.dtype} {what}; tritonconv supports "
                            "float32, float16 and bfloat16: cast the model with model.float() (or .half(), "
                            ".bfloat16()) and its input with input.float()")


class Conv2d(nn.Conv2d):
    """`torch.nn.Conv2d` computed by `tritonconv.conv2d` (which routes depthwise and 1x1 convolutions to
    their own kernels). Non-zero padding modes pad with `F.pad` first, as torch does."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        _check_dtypes(self, input, weight, bias)
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return tc.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return tc.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class DepthwiseSeparableConv2d(nn.Module):
    """KxK depthwise conv, optional activation, then 1x1 pointwise conv (`tritonconv.depthwise_separable_conv2d`:
    one fused kernel up to 64 output channels, the intermediate kept on chip unless autograd needs it).

    Parameters: `depthwise_weight` (C, 1, K, K), `pointwise_weight` (F, C, 1, 1) and, with bias=True,
    `depthwise_bias` (C,) and `pointwise_bias` (F,), initialised as nn.Conv2d initialises them.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] | str = 0, dilation: int = 1, bias: bool = True,
                 activation: str | None = None) -> None:
        super().__init__()
        check_activation(activation)
        kh, kw = pair(kernel_size, "kernel_size", 1)
        conv_padding(padding, (kh, kw), pair(stride, "stride", 1), pair(dilation, "dilation", 1))
        depthwise = nn.Conv2d(in_channels, in_channels, (kh, kw), groups=in_channels, bias=bias)
        pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.depthwise_weight = depthwise.weight
        self.pointwise_weight = pointwise.weight
        self.depthwise_bias = depthwise.bias
        self.pointwise_bias = pointwise.bias
        self.stride, self.padding, self.dilation, self.activation = stride, padding, dilation, activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        _check_dtypes(self, input, self.depthwise_weight, self.pointwise_weight)
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
        _check_dtypes(self, input)
        return tc.dropout(input, self.p, self.training)


class SpatialDropout2d(nn.Dropout2d):
    """`torch.nn.Dropout2d`: whole (sample, channel) feature maps dropped, survivors scaled by 1/(1-p)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        _check_dtypes(self, input)
        return tc.spatial_dropout2d(input, self.p, self.training)


class DropBlock2d(nn.Module):
    """DropBlock (torchvision's `drop_block2d` semantics): block_size x block_size squares dropped."""

    def __init__(self, p: float, block_size: int) -> None:
        super().__init__()
        self.p, self.block_size = check_probability(p), check_int(block_size, "block_size", 1)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        _check_dtypes(self, input)
        return tc.drop_block2d(input, self.p, self.block_size, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, block_size={self.block_size}"


class Cutout2d(nn.Module):
    """Cutout: one size x size square zeroed per feature map in training."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = check_int(size, "size", 1)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        _check_dtypes(self, input)
        return tc.cutout2d(input, self.size, self.training)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class MaxPool2d(nn.MaxPool2d):
    """`torch.nn.MaxPool2d` whose backward stores no index tensor (with return_indices, torch's indices
    are computed from the stored taps)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_window(self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def forward(self, input: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        _check_dtypes(self, input)
        return tc.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                             self.return_indices)


class MaxPoolDropout2d(nn.Module):
    """Max-pooling dropout (Wu & Gu 2015): in training each input unit is dropped with probability p
    and each window outputs the max of its kept units; in eval, probabilistic weighted pooling (the
    expectation of the training output)."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1, p: float = 0.5) -> None:
        super().__init__()
        check_window(kernel_size, stride, padding, dilation)
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.p = check_probability(p)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        _check_dtypes(self, input)
        return tc.max_pool2d_dropout(input, self.kernel_size, self.stride, self.padding, self.dilation, self.p,
                                     self.training)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, p={self.p}")


from tritonconv.conversion import ConversionReport, convert  # noqa: E402,F401 (tc.nn.convert; it imports this module)
