"""conv2d: launchers for the implicit-GEMM kernels, the autograd Function, and the public op."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import triton

from tritonconv import dispatch
from tritonconv._checks import (accepts_unbatched, autocast, channels_last, check_same, check_tensor, conv_padding,
                                empty_like_layout, interpreting, needs_int64, output_size, pair)
from tritonconv.kernels.conv import conv2d_forward_kernel, conv2d_input_grad_kernel, conv2d_weight_grad_kernel


@dataclass(frozen=True)
class ConvGeometry:
    """Everything about a convolution call except the tensors' contents."""

    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]          # top, left (the bottom/right padding is implied by the output size)
    dilation: tuple[int, int]
    groups: int
    out_height: int
    out_width: int

    def live_taps(self, axis: int) -> tuple[int, int]:
        """The range [start, end) of kernel taps along `axis` (0: rows, 1: columns) that read at least one
        real input element for some output position; taps outside it read only padding.

        Tap k reads input positions o*s - p + k*d for o in [0, out); that interval moves right as k grows,
        so the live taps are contiguous.
        """
        size, out = (self.height, self.out_height) if axis == 0 else (self.width, self.out_width)
        k, s, p, d = self.kernel[axis], self.stride[axis], self.pad[axis], self.dilation[axis]
        live = [t for t in range(k) if (out - 1) * s - p + t * d >= 0 and t * d - p <= size - 1]
        return (live[0], live[-1] + 1) if live else (0, 0)

    def launch_args(self) -> tuple[int, ...]:
        """Sizes and geometry in the order the implicit-GEMM kernels take them."""
        g = self.groups
        return (self.batch, self.height, self.width, self.out_height, self.out_width,
                self.in_channels // g, self.out_channels // g,
                *self.stride, *self.pad, *self.dilation)


# ---------------------------------------------------------------------------------------------------------
# Configurations (see tritonconv.dispatch).
# ---------------------------------------------------------------------------------------------------------

def _gemm_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """Forward and input gradient: output tiles, reduction over channels one tap at a time.

    128-row tiles take 8 warps: at 4 warps the input gradient's 128x64 tile needs 255 registers and
    spills on sm_90 (bench.static), while 8 warps bring it to about 170.
    """
    blocks = dispatch.gemm_blocks(problem, interpreter)
    warps = 8 if blocks["BLOCK_M"] >= 128 and not interpreter else 4
    return dispatch.Config.of(num_warps=warps, num_stages=1 if interpreter else 3, GROUP_M=8, **blocks)


def _input_grad_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """Input gradient: as the forward, but 64-row tiles at 8 warps on a GPU. Its per-tap stride masks
    cost registers: in bench.static's full sweep on sm_90 every 128-row float32 tile spilled, and 64x64
    at 4 warps spilled on sm_80, while 64-row tiles at 8 warps stayed near 210 registers. float32 steps
    16 channels at a time: keeping rows a tap misses out of the accumulator (a select per step, for NaN
    weights) holds a second accumulator tile, and with 32 the dilated probes spilled on sm_80."""
    if interpreter:
        return _gemm_config(problem, interpreter)
    blocks = {**dispatch.gemm_blocks(problem, interpreter), "BLOCK_M": 64}
    if problem.dtype == torch.float32:
        blocks["BLOCK_K"] = min(blocks["BLOCK_K"], 16)
    return dispatch.Config.of(num_warps=8, num_stages=3, GROUP_M=8, **blocks)


def _weight_grad_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """Weight gradient: few small [F_g, C_g] tiles per tap and a long reduction over N*OH*OW, split
    across programs until the GPU is full. The interpreter splits whenever there are two steps, so the
    tests exercise the atomic path."""
    blocks = dispatch.gemm_blocks(problem, interpreter)
    if interpreter:
        blocks["BLOCK_K"] = 32
        return dispatch.Config.of(num_warps=4, num_stages=1, SPLIT_K=2 if problem.k > 32 else 1, **blocks)
    tiles = triton.cdiv(problem.m, blocks["BLOCK_M"]) * triton.cdiv(problem.n, blocks["BLOCK_N"]) * problem.batch
    steps = triton.cdiv(problem.k, blocks["BLOCK_K"])
    # At least 8 reduction steps per split, so the atomics stay a small share of the traffic.
    split = max(1, min(dispatch.TARGET_PROGRAMS // tiles, steps // 8, 64))
    return dispatch.Config.of(num_warps=4, num_stages=3, SPLIT_K=split, **blocks)


def _gemm_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    return dispatch.product_space(num_warps=(4, 8), num_stages=(3, 4), BLOCK_M=(64, 128),
                                  BLOCK_N=(32, 64, 128), BLOCK_K=(32, 64), GROUP_M=(8,))


def _weight_grad_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    return dispatch.product_space(num_warps=(4,), num_stages=(3, 4), BLOCK_M=(32, 64, 128),
                                  BLOCK_N=(32, 64, 128), BLOCK_K=(32, 64), SPLIT_K=(1, 4, 16, 64))


dispatch.register("conv2d_forward", "implicit_gemm", conv2d_forward_kernel, _gemm_config, _gemm_space)
dispatch.register("conv2d_input_grad", "implicit_gemm", conv2d_input_grad_kernel, _input_grad_config, _gemm_space)
dispatch.register("conv2d_weight_grad", "implicit_gemm", conv2d_weight_grad_kernel, _weight_grad_config,
                  _weight_grad_space)


def _dot_flags(dtype: torch.dtype) -> dict[str, object]:
    """TF32 for float32 only when cuDNN would use it; float32 operands for bf16 under the interpreter."""
    tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not interpreting()
    return {"DOT_PRECISION": "tf32" if tf32 else "ieee",
            "UPCAST": interpreting() and dtype == torch.bfloat16}


def _gemm_operand(t: torch.Tensor) -> torch.Tensor:
    """`t` with its channel axis contiguous, which the implicit-GEMM kernels reduce over: as it is when it
    already is (any other strides are fine), else one transposing copy to channels_last, as cuDNN makes
    for its NHWC kernels."""
    return t if t.stride(1) == 1 or t.shape[1] == 1 else t.contiguous(memory_format=torch.channels_last)


@dispatch.on_inputs_device
def conv2d_forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, geo: ConvGeometry) -> torch.Tensor:
    """Launch the forward kernel; the output takes channels_last when the input or weight has it."""
    y = empty_like_layout((geo.batch, geo.out_channels, geo.out_height, geo.out_width),
                          channels_last(x, w), x.dtype, x.device)
    if y.numel() == 0:
        return y
    problem = _forward_problem(geo, x, w)
    x, w = _gemm_operand(x), _gemm_operand(w)
    g = geo.groups
    m = geo.batch * geo.out_height * geo.out_width

    def launch(cfg: dispatch.Config) -> torch.Tensor:
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(geo.out_channels // g, cfg["BLOCK_N"]), g)
        conv2d_forward_kernel[grid](
            x, w, bias if bias is not None else w, y,
            *geo.launch_args(), *geo.live_taps(0), *geo.live_taps(1),
            *x.stride(), *w.stride(), *y.stride(), bias.stride(0) if bias is not None else 0,
            HAS_BIAS=bias is not None, INT64=needs_int64(x, w, y), **_dot_flags(x.dtype), **cfg.launch_kwargs())
        return y

    return launch(dispatch.config_for(problem, launch))


def _forward_problem(geo: ConvGeometry, x: torch.Tensor, w: torch.Tensor) -> dispatch.Problem:
    g = geo.groups
    return dispatch.Problem(
        "conv2d_forward", m=geo.batch * geo.out_height * geo.out_width, n=geo.out_channels // g,
        k=geo.in_channels // g * geo.kernel[0] * geo.kernel[1], batch=g, dtype=x.dtype,
        channels_last=channels_last(x))


@dispatch.on_inputs_device
def conv2d_input_grad(dy: torch.Tensor, w: torch.Tensor, geo: ConvGeometry, like: torch.Tensor) -> torch.Tensor:
    """dL/dx for the convolution `geo`, in the memory format of `like` (the input)."""
    dx = empty_like_layout((geo.batch, geo.in_channels, geo.height, geo.width), channels_last(like),
                           dy.dtype, dy.device)
    if dx.numel() == 0:
        return dx
    dy, w = _gemm_operand(dy), _gemm_operand(w)
    g = geo.groups
    m = geo.batch * geo.height * geo.width

    def launch(cfg: dispatch.Config) -> torch.Tensor:
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(geo.in_channels // g, cfg["BLOCK_N"]), g)
        conv2d_input_grad_kernel[grid](
            dy, w, dx,
            *geo.launch_args(), *geo.live_taps(0), *geo.live_taps(1),
            *dy.stride(), *w.stride(), *dx.stride(),
            INT64=needs_int64(dy, w, dx), **_dot_flags(dy.dtype), **cfg.launch_kwargs())
        return dx

    return launch(dispatch.config_for(dispatch.Problem(
        "conv2d_input_grad", m=m, n=geo.in_channels // g, k=geo.out_channels // g * geo.kernel[0] * geo.kernel[1],
        batch=g, dtype=dy.dtype, channels_last=channels_last(like)), launch))


@dispatch.on_inputs_device
def conv2d_weight_grad(x: torch.Tensor, dy: torch.Tensor, geo: ConvGeometry, like: torch.Tensor) -> torch.Tensor:
    """dL/dw for the convolution `geo`, accumulated in float32 and returned in the layout of `like`."""
    layout_channels_last = channels_last(x)
    x, dy = _gemm_operand(x), _gemm_operand(dy)
    g = geo.groups
    kh, kw = geo.kernel
    pixels = geo.batch * geo.out_height * geo.out_width

    def launch(cfg: dispatch.Config) -> torch.Tensor:
        # SPLIT_K programs add into one float32 result, which must start at zero.
        alloc = torch.zeros if cfg["SPLIT_K"] > 1 else torch.empty
        dw = alloc((geo.out_channels, geo.in_channels // g, kh, kw), dtype=torch.float32, device=x.device)
        grid = (triton.cdiv(geo.out_channels // g, cfg["BLOCK_M"]) * triton.cdiv(geo.in_channels // g, cfg["BLOCK_N"])
                * cfg["SPLIT_K"], kh * kw, g)
        conv2d_weight_grad_kernel[grid](
            x, dy, dw, *geo.launch_args()[:7], kw, *geo.launch_args()[7:],
            *x.stride(), *dy.stride(), INT64=needs_int64(x, dy, dw), **_dot_flags(x.dtype), **cfg.launch_kwargs())
        return dw

    if pixels == 0:
        dw = torch.zeros((geo.out_channels, geo.in_channels // g, kh, kw), dtype=torch.float32, device=x.device)
    else:
        dw = launch(dispatch.config_for(dispatch.Problem(
            "conv2d_weight_grad", m=geo.out_channels // g, n=geo.in_channels // g, k=pixels, batch=g * kh * kw,
            dtype=x.dtype, channels_last=layout_channels_last), launch))
    return dw.to(like.dtype).contiguous(memory_format=torch.channels_last if channels_last(like)
                                         else torch.contiguous_format)


# ---------------------------------------------------------------------------------------------------------
# torch.library ops, so torch.compile(fullgraph=True) sees one opaque node per kernel (with a fake
# implementation for shapes) and autograd runs our backward kernels. A geometry travels as plain ints:
# (stride, top/left padding, dilation, groups, output size).
# ---------------------------------------------------------------------------------------------------------

_GEOMETRY_SCHEMA = "int[] stride, int[] padding, int[] dilation, int groups, int[] output_size"


def _geometry(x_shape: Sequence[int], w_shape: Sequence[int], stride: Sequence[int], padding: Sequence[int],
              dilation: Sequence[int], groups: int, output_size: Sequence[int]) -> ConvGeometry:
    n, c, h, w = x_shape
    return ConvGeometry(n, c, w_shape[0], h, w, (w_shape[2], w_shape[3]), tuple(stride), tuple(padding),
                        tuple(dilation), groups, *output_size)


def _geometry_args(geo: ConvGeometry) -> tuple:
    return list(geo.stride), list(geo.pad), list(geo.dilation), geo.groups, [geo.out_height, geo.out_width]


@torch.library.custom_op("tritonconv::conv2d", mutates_args=(),
                         schema=f"(Tensor x, Tensor w, Tensor? bias, {_GEOMETRY_SCHEMA}) -> Tensor")
def _conv2d_op(x, w, bias, stride, padding, dilation, groups, output_size):
    return conv2d_forward(x, w, bias, _geometry(x.shape, w.shape, stride, padding, dilation, groups, output_size))


@_conv2d_op.register_fake
def _(x, w, bias, stride, padding, dilation, groups, output_size):
    return empty_like_layout((x.shape[0], w.shape[0], *output_size), channels_last(x, w), x.dtype, x.device)


def register_gradient_ops(name: str, input_grad: Callable, weight_grad: Callable) -> tuple:
    """Register "tritonconv::{name}_input_grad"(dy, w, x, geometry...) and
    "tritonconv::{name}_weight_grad"(x, dy, w, geometry...) as custom ops with fakes: the backward ops of
    a convolution family, whose launchers take (dy, w, geo, x) and (x, dy, geo, w). Returns both ops."""

    def input_grad_op(dy, w, x, stride, padding, dilation, groups, output_size):
        return input_grad(dy, w, _geometry(x.shape, w.shape, stride, padding, dilation, groups, output_size), x)

    def weight_grad_op(x, dy, w, stride, padding, dilation, groups, output_size):
        return weight_grad(x, dy, _geometry(x.shape, w.shape, stride, padding, dilation, groups, output_size), w)

    input_op = torch.library.custom_op(f"tritonconv::{name}_input_grad", input_grad_op, mutates_args=(),
                                       schema=f"(Tensor dy, Tensor w, Tensor x, {_GEOMETRY_SCHEMA}) -> Tensor")
    weight_op = torch.library.custom_op(f"tritonconv::{name}_weight_grad", weight_grad_op, mutates_args=(),
                                        schema=f"(Tensor x, Tensor dy, Tensor w, {_GEOMETRY_SCHEMA}) -> Tensor")
    input_op.register_fake(lambda dy, w, x, *geometry: empty_like_layout(x.shape, channels_last(x), dy.dtype, dy.device))
    weight_op.register_fake(lambda x, dy, w, *geometry: empty_like_layout(w.shape, channels_last(w), w.dtype, w.device))
    return input_op, weight_op


register_gradient_ops("conv2d", conv2d_input_grad, conv2d_weight_grad)


def channel_sum(dy: torch.Tensor) -> torch.Tensor:
    """The bias gradient: dy summed over (n, h, w) in float32, in dy's dtype."""
    return dy.sum(dim=(0, 2, 3), dtype=torch.float32).to(dy.dtype)


def _setup_context(ctx, inputs, output):
    x, w, bias, *geometry = inputs
    ctx.save_for_backward(x, w)
    ctx.geometry = geometry
    ctx.has_bias = bias is not None


def _backward(ctx, dy):
    """dx and dw from our kernels; db = sum of dy over (n, h, w), accumulated in float32."""
    x, w = ctx.saved_tensors
    dx = torch.ops.tritonconv.conv2d_input_grad(dy, w, x, *ctx.geometry) if ctx.needs_input_grad[0] else None
    dw = torch.ops.tritonconv.conv2d_weight_grad(x, dy, w, *ctx.geometry) if ctx.needs_input_grad[1] else None
    db = channel_sum(dy) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return dx, dw, db, None, None, None, None, None


_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


def conv_geometry(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  stride: int | Sequence[int], padding: int | Sequence[int] | str,
                  dilation: int | Sequence[int], groups: int) -> ConvGeometry:
    """Check a conv2d call's arguments as torch.nn.functional.conv2d would, and describe its geometry."""
    check_tensor(input, "input")
    check_tensor(weight, "weight")
    check_same(weight, "weight", input, "input")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    n, c, h, w = input.shape
    f, c_per_group, kh, kw = weight.shape
    if c % groups or f % groups:
        raise ValueError(f"groups={groups} must divide input channels ({c}) and output channels ({f})")
    if c_per_group * groups != c:
        raise ValueError(f"weight of shape {tuple(weight.shape)} expects {c_per_group * groups} input channels "
                         f"(weight.shape[1] * groups = {c_per_group} * {groups}), but input has {c}")
    if kh < 1 or kw < 1 or f < 1:
        raise ValueError(f"weight must have non-empty (F, C/groups, KH, KW), got {tuple(weight.shape)}")
    if bias is not None:
        check_tensor(bias, "bias", ndim=1)
        check_same(bias, "bias", input, "input")
        if bias.shape[0] != f:
            raise ValueError(f"bias must have shape ({f},) to match weight's out channels, got {tuple(bias.shape)}")
    stride_hw = pair(stride, "stride", 1)
    dilation_hw = pair(dilation, "dilation", 1)
    pad, pad_total = conv_padding(padding, (kh, kw), stride_hw, dilation_hw)
    oh = output_size(h, kh, stride_hw[0], pad_total[0], dilation_hw[0])
    ow = output_size(w, kw, stride_hw[1], pad_total[1], dilation_hw[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"kernel ({kh}x{kw}, dilation {dilation_hw}) spans "
                         f"{dilation_hw[0] * (kh - 1) + 1}x{dilation_hw[1] * (kw - 1) + 1} pixels, more than the "
                         f"padded input ({h + pad_total[0]}x{w + pad_total[1]}); pad the input or use a smaller "
                         "kernel or dilation")
    return ConvGeometry(n, c, f, h, w, (kh, kw), stride_hw, pad, dilation_hw, groups, oh, ow)


def no_channels_output(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       geo: ConvGeometry) -> torch.Tensor:
    """What torch's convolution gives for an input without channels (C = 0): an empty (N, 0, OH, OW),
    still part of the graph, so that weight and bias get zero gradients. Nothing to launch."""
    zero = sum(t.sum() * 0 for t in (input, weight, bias) if t is not None)
    fmt = torch.channels_last if channels_last(input, weight) else torch.contiguous_format
    return zero.expand(geo.batch, 0, geo.out_height, geo.out_width).contiguous(memory_format=fmt)


def _conv2d_ours(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 geo: ConvGeometry) -> torch.Tensor:
    """conv2d with our kernels, of the family `dispatch.conv2d_family` picks."""
    if geo.in_channels == 0:
        return no_channels_output(input, weight, bias, geo)
    family = dispatch.conv2d_family(geo.groups, geo.in_channels, geo.kernel, geo.pad)
    if family == "implicit_gemm":
        return torch.ops.tritonconv.conv2d(input, weight, bias, *_geometry_args(geo))
    # tritonconv.depthwise and tritonconv.pointwise register these ops (y, pre-activation) on import.
    op = torch.ops.tritonconv.depthwise_conv2d if family == "depthwise" else torch.ops.tritonconv.pointwise_conv2d
    return op(input, weight, bias, *_geometry_args(geo), "none", False)[0]


@accepts_unbatched
def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: int | Sequence[int] = 1, padding: int | Sequence[int] | str = 0,
           dilation: int | Sequence[int] = 1, groups: int = 1, *, backend: str | None = None) -> torch.Tensor:
    """2-D convolution with exactly the semantics of `torch.nn.functional.conv2d`.

    y[n, f, i, j] = b[f] + sum_{c, u, v} x[n, g*C_g + c, i*s_h - p_h + u*d_h, j*s_w - p_w + v*d_w] * w[f, c, u, v]

    where g = f // F_g is the group of output channel f, C_g = C / groups and F_g = F / groups, and x reads
    as 0 outside the input. Computed in Triton by the kernel family `dispatch.conv2d_family` picks: the
    direct depthwise kernels when groups == C, a GEMM for unpadded 1x1 kernels, else an implicit GEMM
    (no im2col buffer), always accumulating in float32; float32 inputs use TF32 tensor cores only when
    `torch.backends.cudnn.allow_tf32` is set. Autograd computes input and weight gradients with our own
    kernels.

    Args:
        input: (N, C, H, W), NCHW or channels_last; the output takes the same memory format. An unbatched
            (C, H, W) input gives an unbatched output, as in torch; C = 0 gives an empty (N, 0, OH, OW).
        weight: (F, C / groups, KH, KW).
        bias: optional (F,).
        stride, dilation: int or (h, w) pair (or a one-element sequence), each >= 1.
        padding: int or (h, w) pair (zeros on both sides), "valid" (none) or "same" (stride 1 only;
            the output keeps H x W, any odd padding going to the bottom/right).
        groups: number of channel groups; divides C and F.
        backend: "triton" (our kernels) or "auto" (ours or PyTorch's, whichever was faster for this
            shape when timed); None takes `tritonconv.set_backend`'s default, "triton".
    """
    input, weight, bias = autocast(input, weight, bias)
    geo = conv_geometry(input, weight, bias, stride, padding, dilation, groups)
    ours = lambda: _conv2d_ours(input, weight, bias, geo)  # noqa: E731
    if dispatch.use_torch(_forward_problem(geo, input, weight), ours,
                          lambda: F.conv2d(input, weight, bias, stride, padding, dilation, groups), backend,
                          input.device):
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return ours()
