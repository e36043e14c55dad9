"""Drop-in nn modules backed by tritonconv's ops, and `convert` to swap them into an existing model.

Modules that replace a torch module subclass it (`Conv2d` is an `nn.Conv2d`, `MaxPool2d` an
`nn.MaxPool2d`, `Dropout` an `nn.Dropout`, `SpatialDropout2d` an `nn.Dropout2d`), so constructors,
state_dict keys and `isinstance` checks stay as they were; only `forward` changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """`torch.nn.MaxPool2d` whose backward stores no index tensor (with return_indices, torch's indices
    are computed from the stored taps)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return tc.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                             self.return_indices)


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


# ---------------------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------------------

@dataclass
class ConversionReport:
    """What `convert` replaced and what it left, module by module."""

    replaced: list[tuple[str, str, str]] = field(default_factory=list)  # (name, from, to)
    left: list[tuple[str, str, str]] = field(default_factory=list)      # (name, type, why)
    folded: list[str] = field(default_factory=list)                     # BatchNorms folded into convs
    fused: list[str] = field(default_factory=list)                      # depthwise -> pointwise sequences

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)} modules, left {len(self.left)}"
                 + (f", folded {len(self.folded)} BatchNorms" if self.folded else "")
                 + (f", fused {len(self.fused)} separable pairs" if self.fused else "")]
        lines += [f"  {name}: {old} -> {new}" for name, old, new in self.replaced]
        lines += [f"  {name}: kept {kind} ({why})" for name, kind, why in self.left]
        lines += [f"  {name}: BatchNorm folded" for name in self.folded]
        lines += [f"  {name}: fused into DepthwiseSeparableConv2d" for name in self.fused]
        return "\n".join(lines)


def _convertible_conv(module: nn.Conv2d) -> str | None:
    """Why `module` cannot run on our kernels, or None when it can."""
    if type(module) is not nn.Conv2d:
        return f"a subclass ({type(module).__name__}) may change forward"
    if module.weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {module.weight.dtype} is not supported"
    return None


def _replacement(module: nn.Module) -> tuple[nn.Module | None, str | None]:
    """Our module for a torch module, sharing its parameters, or (None, why not)."""
    if isinstance(module, nn.Conv2d):
        why = _convertible_conv(module)
        if why:
            return None, why
        new = Conv2d.__new__(Conv2d)
        new.__dict__ = module.__dict__.copy()  # same parameters, buffers, hooks and attributes
        return new, None
    if type(module) is nn.MaxPool2d:
        new = MaxPool2d.__new__(MaxPool2d)
        new.__dict__ = module.__dict__.copy()
        return new, None
    if type(module) in (nn.Dropout, nn.Dropout2d):
        if module.inplace:
            return None, "inplace=True is not supported"
        cls = Dropout if type(module) is nn.Dropout else SpatialDropout2d
        new = cls.__new__(cls)
        new.__dict__ = module.__dict__.copy()
        return new, None
    return None, None


def _fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the conv before it: w' = w * g / sqrt(var + eps),
    b' = (b - mean) * g / sqrt(var + eps) + beta."""
    with torch.no_grad():
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps) if bn.affine else \
            1 / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() if bn.affine else torch.zeros_like(scale)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        conv.weight.copy_((conv.weight.double() * scale[:, None, None, None]).to(conv.weight.dtype))
        new_bias = ((bias - bn.running_mean.double()) * scale + shift).to(conv.weight.dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)


_ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.GELU: "gelu"}


def _activation_name(module: nn.Module) -> str | None:
    if isinstance(module, nn.GELU) and module.approximate != "none":
        return None
    return _ACTIVATIONS.get(type(module))


def _is_depthwise(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.groups == module.in_channels == module.out_channels
            and module.padding_mode == "zeros")


def _is_pointwise(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.kernel_size == (1, 1) and module.stride == (1, 1)
            and module.groups == 1 and module.padding in ((0, 0), "valid"))


def _rewrite_sequential(seq: nn.Sequential, prefix: str, fold_batchnorm: bool, fuse_separable: bool,
                        report: ConversionReport) -> None:
    """Fold conv -> BN pairs and fuse depthwise -> [BN] -> [activation] -> 1x1 runs inside one Sequential."""
    names = list(seq._modules)
    if fold_batchnorm:
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d) and not bn.training \
                    and bn.track_running_stats and bn.num_features == conv.out_channels:
                _fold_batchnorm(conv, bn)
                seq._modules[b] = nn.Identity()
                report.folded.append(f"{prefix}{b}")
    if not fuse_separable:
        return
    names = [n for n in seq._modules if not isinstance(seq._modules[n], nn.Identity)]
    i = 0
    while i < len(names):
        first = seq._modules[names[i]]
        j, activation = i + 1, None
        if _is_depthwise(first) and j < len(names) and _activation_name(seq._modules[names[j]]):
            activation = _activation_name(seq._modules[names[j]])
            j += 1
        if _is_depthwise(first) and j < len(names) and _is_pointwise(seq._modules[names[j]]):
            dw, pw = first, seq._modules[names[j]]
            fused = DepthwiseSeparableConv2d(dw.in_channels, pw.out_channels, dw.kernel_size, dw.stride, dw.padding,
                                             dw.dilation, bias=False, activation=activation)
            fused.depthwise_weight, fused.pointwise_weight = dw.weight, pw.weight
            fused.depthwise_bias, fused.pointwise_bias = dw.bias, pw.bias
            seq._modules[names[i]] = fused
            for name in names[i + 1:j + 1]:
                seq._modules[name] = nn.Identity()
            report.fused.append(f"{prefix}{names[i]}")
            i = j + 1
        else:
            i += 1


def convert(model: nn.Module, *, fold_batchnorm: bool = False, fuse_separable: bool = False,
            verbose: bool = False) -> nn.Module:
    """Replace, in place, the modules of `model` that tritonconv runs, and return the model.

    `nn.Conv2d` (dilated, grouped, depthwise, 1x1; any padding mode) becomes `tritonconv.nn.Conv2d`,
    `nn.MaxPool2d` becomes `MaxPool2d`, `nn.Dropout`/`nn.Dropout2d` become `Dropout`/`SpatialDropout2d`,
    each sharing the original's parameters, so weights and state_dict keys stay. Subclasses of those
    modules and in-place dropouts are left, with the reason.

    Options (both change the module tree, so state_dict keys of the touched modules change):
    - fold_batchnorm: fold each eval-mode BatchNorm2d that directly follows a conv in an nn.Sequential
      into that conv's weight and bias (the BatchNorm becomes nn.Identity).
    - fuse_separable: in an nn.Sequential, replace depthwise conv -> [activation] -> 1x1 conv (after
      folding, so a BatchNorm between them is gone) with one `DepthwiseSeparableConv2d`.

    The report (`ConversionReport`: replaced, left, folded, fused) is stored as
    `model.tritonconv_report` and printed when `verbose`.
    """
    report = ConversionReport()
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Sequential) and (fold_batchnorm or fuse_separable):
            _rewrite_sequential(module, f"{name}." if name else "", fold_batchnorm, fuse_separable, report)
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            new, why = _replacement(child)
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if new is not None:
                setattr(parent, child_name, new)
                report.replaced.append((full, type(child).__name__, f"tritonconv.nn.{type(new).__name__}"))
            elif why is not None:
                report.left.append((full, type(child).__name__, why))
    model.tritonconv_report = report
    if verbose:
        print(report)
    return model
