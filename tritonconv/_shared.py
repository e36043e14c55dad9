"""Host code that more than one op uses: a convolution's geometry and its checks, the torch.library
schema pieces a geometry travels as, the GEMM kernels' operand rules, and the autograd building blocks
(gradient tuples, bias gradients, the gradient-op and conv + bias + activation op factories, the
activation-backward op).

Op modules (conv, pointwise, depthwise, separable, pooling, dropout) import from here, `_checks`,
`dispatch` and `heuristics`, never from one another. An op whose backward runs another op's kernels
calls that op through `torch.ops.tritonconv`, when the backward runs: importing any tritonconv module
imports the package first, which registers every op, so such a call cannot miss.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from tritonconv import _plans, dispatch, heuristics
from tritonconv._checks import (channels_last, check_bias, check_same, check_tensor, conv_padding, empty_like_layout,
                                interpreting, output_size, pair)
from tritonconv.kernels.activations import activation_backward_kernel
from tritonconv.kernels.common import split_sum_kernel

# ---------------------------------------------------------------------------------------------------------
# Geometry.
# ---------------------------------------------------------------------------------------------------------


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
    check_bias(bias, "bias", f, input, "input")
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


def check_depthwise_weight(weight: object, name: str, input: torch.Tensor) -> torch.Tensor:
    """Check that `weight` is a depthwise filter bank (C * multiplier, 1, KH, KW) for `input`'s C channels,
    with its dtype and device."""
    check_tensor(weight, name)
    check_same(weight, name, input, "input")
    in_channels = input.shape[1]
    if in_channels < 1:
        raise ValueError(f"a depthwise convolution needs an input with at least one channel, got {in_channels}")
    f, one = weight.shape[:2]
    if one != 1 or f < in_channels or f % in_channels:
        raise ValueError(f"{name} must have shape (C * multiplier, 1, KH, KW) with C = {in_channels} input "
                         f"channels and an integer multiplier >= 1, got {tuple(weight.shape)}")
    return weight


def check_pointwise_weight(weight: object, name: str, in_channels: int, ref: torch.Tensor, source: str) -> torch.Tensor:
    """Check that `weight` is a 1x1 filter bank (F, in_channels, 1, 1) like `ref` (the input); `source`
    says where the in_channels come from, for the message."""
    check_tensor(weight, name)
    check_same(weight, name, ref, "input")
    if tuple(weight.shape[1:]) != (in_channels, 1, 1) or weight.shape[0] < 1:
        raise ValueError(f"{name} must have shape (F, {in_channels}, 1, 1) to take {source}, "
                         f"got {tuple(weight.shape)}")
    return weight


# ---------------------------------------------------------------------------------------------------------
# Depthwise taps (kernels/depthwise.py `depthwise_taps`, also run by the fused separable kernel).
# ---------------------------------------------------------------------------------------------------------

# Live taps per row up to this are unrolled (`depthwise_taps`' TAPS_W), and the rows of kernels up to
# MAX_UNROLLED_KERNEL live taps (TAPS_H); larger kernels loop.
MAX_UNROLLED_TAPS = 7
MAX_UNROLLED_KERNEL = 25


def unrolled_taps(geo: ConvGeometry) -> dict[str, int]:
    """`depthwise_taps`' TAPS_H and TAPS_W: a row of up to MAX_UNROLLED_TAPS live taps is unrolled, and
    the rows too while the kernel has at most MAX_UNROLLED_KERNEL live taps (more unrolled loads in flight
    spill registers, `python -m bench.static`); 0 for a runtime loop."""
    (h0, h1), (w0, w1) = geo.live_taps(0), geo.live_taps(1)
    taps_w = w1 - w0 if w1 - w0 <= MAX_UNROLLED_TAPS else 0
    taps_h = h1 - h0 if taps_w and (h1 - h0) * taps_w <= MAX_UNROLLED_KERNEL else 0
    return {"TAPS_H": taps_h, "TAPS_W": taps_w}


def tap_major(w: torch.Tensor, dtype: torch.dtype | None = None, columns: int | None = None) -> torch.Tensor:
    """The (F, 1, KH, KW) weights copied tap-major, as KH * KW rows of F (a (KH, KW, 1, F) tensor; kernels
    take its address and these strides): the weights of one tap for a block of channels are contiguous, one
    vector load in `depthwise_taps` (with strides swh = KW * F, sww = F).
    `dtype`: the copy's dtype, w's own when None (the fused separable kernel takes float32 weights, so that
    no tap converts them again for every K-step). `columns`: a width of at least F, so that a kernel whose
    channel blocks cover `columns` loads whole blocks without a mask (strides swh = KW * columns,
    sww = columns); the columns past F are left unset, for channels whose outputs are never stored.

    Made on every call, never cached: a copy kept per weight version goes stale when the weight changes
    where the version counter cannot see it (`w.data.mul_(...)`, as manual SGD and EMA teachers write), and
    a CUDA graph that captured a launch reading a kept copy replays it after an optimizer step changed the
    weight. Made here, the copy is part of every call and of every captured graph. It is KH * KW * F
    elements, one small copy beside a pass over the activations.
    """
    f, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    columns, dtype = columns or f, dtype or w.dtype
    # Two ops on the host (this copy was most of a cached call's host time): a tensor (KH, KW, 1, F) with
    # tap-major strides, then one copy from w's permuted view.
    if columns == f:
        packed = torch.empty((kh, kw, 1, f), dtype=dtype, device=w.device)
    else:  # every row `columns` wide, the last one too (the kernels read its whole block)
        packed = torch.empty(kh * kw * columns, dtype=dtype, device=w.device).as_strided(
            (kh, kw, 1, f), (kw * columns, columns, columns, 1))
    return packed.copy_(w.permute(2, 3, 1, 0))


# A geometry travels through torch.library ops as plain ints: (stride, top/left padding, dilation, groups,
# output size); `geometry` rebuilds it from those and the tensors' shapes, `geometry_args` flattens it.
GEOMETRY_SCHEMA = "int[] stride, int[] padding, int[] dilation, int groups, int[] output_size"


def geometry(x_shape: Sequence[int], w_shape: Sequence[int], stride: Sequence[int], padding: Sequence[int],
             dilation: Sequence[int], groups: int, output_size: Sequence[int]) -> ConvGeometry:
    """The ConvGeometry of an op's input and weight shapes and its GEOMETRY_SCHEMA arguments."""
    n, c, h, w = x_shape
    return ConvGeometry(n, c, w_shape[0], h, w, (w_shape[2], w_shape[3]), tuple(stride), tuple(padding),
                        tuple(dilation), groups, *output_size)


def geometry_args(geo: ConvGeometry) -> tuple:
    """`geo` as an op's GEOMETRY_SCHEMA arguments."""
    return list(geo.stride), list(geo.pad), list(geo.dilation), geo.groups, [geo.out_height, geo.out_width]


# ---------------------------------------------------------------------------------------------------------
# GEMM operands (the implicit-GEMM, pointwise and separable kernels).
# ---------------------------------------------------------------------------------------------------------

def tf32() -> bool:
    """Whether float32 dots may use TF32: when cuDNN may (torch.backends.cudnn.allow_tf32). Plans of the ops
    that run dots key on it, since a user may flip it between calls."""
    return torch._C._get_cudnn_allow_tf32()


def dot_flags(dtype: torch.dtype) -> dict[str, object]:
    """TF32 for float32 only when cuDNN would use it; float32 operands for bf16 under the interpreter."""
    use_tf32 = dtype == torch.float32 and tf32() and not interpreting()
    return {"DOT_PRECISION": "tf32" if use_tf32 else "ieee",
            "UPCAST": interpreting() and dtype == torch.bfloat16}


def gemm_operand(t: torch.Tensor) -> torch.Tensor:
    """`t` with its channel axis contiguous, which the implicit-GEMM kernels reduce over: as it is when it
    already is (any other strides are fine), else one transposing copy to channels_last, as cuDNN makes
    for its NHWC kernels."""
    return t if t.stride(1) == 1 or t.shape[1] == 1 else t.contiguous(memory_format=torch.channels_last)


def pixel_stride(t: torch.Tensor) -> int | None:
    """The stride between consecutive pixels (n, h, w) of `t` (N, C, H, W) when every one is that far from
    the one before (a dense NHWC tensor, or a dense NCHW one with one channel), so a run of pixels is
    addressed by one stride; else None."""
    n, _, h, w = t.shape
    sn, _, sh, sw = t.stride()
    step = sw if w > 1 else sh if h > 1 else sn
    return step if (h == 1 or sh == w * step) and (n == 1 or sn == h * w * step) else None


# ---------------------------------------------------------------------------------------------------------
# Autograd building blocks.
# ---------------------------------------------------------------------------------------------------------

def input_grads(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """A backward's return value: `grads` for the op's leading inputs, None for every later argument
    (geometry, flags, seeds), as many as the op has inputs (`ctx.needs_input_grad`)."""
    return grads + (None,) * (len(ctx.needs_input_grad) - len(grads))


def channel_sum(dy: torch.Tensor) -> torch.Tensor:
    """The bias gradient: dy summed over (n, h, w) in float32, in dy's dtype."""
    return dy.sum(dim=(0, 2, 3), dtype=torch.float32).to(dy.dtype)


def register_gradient_ops(name: str, input_grad: Callable, weight_grad: Callable) -> None:
    """Register "tritonconv::{name}_input_grad"(dy, w, x, geometry...) and
    "tritonconv::{name}_weight_grad"(x, dy, w, geometry...) as custom ops with fakes, plannable for
    backward passes (`_plans.call`): the backward ops of a convolution family, whose launchers take
    (dy, w, geo, x) and (x, dy, geo, w) and return run(dy, w) and run(x, dy)."""

    @dispatch.on_inputs_device  # the launch is planned under its tensors' device
    def input_grad_plan(dy, w, x, stride, padding, dilation, groups, output_size):
        run = input_grad(dy, w, geometry(x.shape, w.shape, stride, padding, dilation, groups, output_size), x)
        return lambda dy, w, x: run(dy, w)

    @dispatch.on_inputs_device  # the launch is planned under its tensors' device
    def weight_grad_plan(x, dy, w, stride, padding, dilation, groups, output_size):
        run = weight_grad(x, dy, geometry(x.shape, w.shape, stride, padding, dilation, groups, output_size), w)
        return lambda x, dy, w: run(x, dy)

    @dispatch.on_inputs_device  # the launch runs under its tensors' device
    def input_grad_op(dy, w, x, *geo_args):
        return input_grad_plan(dy, w, x, *geo_args)(dy, w, x)

    @dispatch.on_inputs_device  # the launch runs under its tensors' device
    def weight_grad_op(x, dy, w, *geo_args):
        return weight_grad_plan(x, dy, w, *geo_args)(x, dy, w)

    _plans.plannable(f"{name}_input_grad", 3, input_grad_plan)
    _plans.plannable(f"{name}_weight_grad", 3, weight_grad_plan)
    input_op = torch.library.custom_op(f"tritonconv::{name}_input_grad", input_grad_op, mutates_args=(),
                                       schema=f"(Tensor dy, Tensor w, Tensor x, {GEOMETRY_SCHEMA}) -> Tensor")
    weight_op = torch.library.custom_op(f"tritonconv::{name}_weight_grad", weight_grad_op, mutates_args=(),
                                        schema=f"(Tensor x, Tensor dy, Tensor w, {GEOMETRY_SCHEMA}) -> Tensor")
    input_op.register_fake(lambda dy, w, x, *geo_args: empty_like_layout(x.shape, channels_last(x), dy.dtype, dy.device))
    weight_op.register_fake(lambda x, dy, w, *geo_args: empty_like_layout(w.shape, channels_last(w), w.dtype, w.device))


def _elementwise_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """m elements: 1024 per program on a GPU (8 per thread), the whole tiny test tensor in the interpreter."""
    block = heuristics.pow2_clamp(problem.m, 16, 4096) if interpreter else 1024
    return dispatch.Config.of(num_warps=4, num_stages=1, BLOCK=block)


def _elementwise_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    return dispatch.product_space(num_warps=(4, 8), num_stages=(1,), BLOCK=(512, 1024, 2048, 4096))


def _elementwise_programs(config: dispatch.Config, problem: dispatch.Problem) -> int:
    return heuristics.cdiv(problem.m, config["BLOCK"])


dispatch.register("activation_backward", "elementwise", activation_backward_kernel, _elementwise_config,
                  _elementwise_space, programs=_elementwise_programs, trips=lambda problem, config, args: ())  # no loop


dispatch.register("split_sum", "elementwise", split_sum_kernel, _elementwise_config, _elementwise_space,
                  programs=_elementwise_programs, trips=lambda problem, config, args: ())  # no loop: unrolled


def weight_grad_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """Weight gradients (m output channels, n input channels, k pixels, batch taps x groups): few [m, n]
    tiles and a long reduction over pixels, split across programs (SPLIT_K) until they fill two waves
    of the GPU (at the occupancy the tile's shared memory allows). Tiles up to 128 output channels by 64
    input channels at 4 warps: a step's pixel arithmetic (per pixel, in both operands' layouts) then
    pays for twice the MMA work of a 64x64 tile, while 128x128 spills (`python -m bench.cost --kernel
    conv2d_weight_grad pointwise_weight_grad`, `python -m bench.static --space full`). The interpreter
    splits whenever there are two steps, so the tests exercise the split paths."""
    blocks = heuristics.gemm_blocks(problem, interpreter)
    if interpreter:
        blocks["BLOCK_K"] = 32
        return dispatch.Config.of(num_warps=4, num_stages=1, SPLIT_K=2 if problem.k > 32 else 1, **blocks)
    blocks["BLOCK_M"] = heuristics.pow2_clamp(problem.m, 16, 128)
    blocks["BLOCK_N"] = heuristics.pow2_clamp(problem.n, 16, 64)
    unsplit = dispatch.Config.of(num_warps=4, num_stages=3, SPLIT_K=1, **blocks)
    resident = max(1, heuristics.SMEM_PER_SM // dispatch.smem_bytes(unsplit, problem.dtype))
    tiles = dispatch.gemm_programs(unsplit, problem)
    # At least 8 reduction steps per split, so the atomics (or the workspace) stay a small share of the
    # traffic.
    fill = heuristics.cdiv(2 * heuristics.SM_COUNT * resident, tiles)
    split = max(1, min(fill, dispatch.gemm_steps(unsplit, problem) // 8, 256))
    return dispatch.Config.of(num_warps=4, num_stages=3, SPLIT_K=split, **blocks)


def weight_grad_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    """Tiles up to 128x128, 4 warps (see weight_grad_config), splits up to 256."""
    return dispatch.product_space(num_warps=(4,), num_stages=(3, 4), BLOCK_M=(32, 64, 128),
                                  BLOCK_N=(32, 64, 128), BLOCK_K=(32, 64), SPLIT_K=(1, 4, 16, 64, 256))


def split_k_partials(shape: tuple[int, ...], splits: int, dtype: torch.dtype, device: torch.device,
                     memory_format: torch.memory_format) -> tuple[Callable[[], torch.Tensor],
                                                                 Callable[[torch.Tensor], torch.Tensor], bool]:
    """How `splits` programs that each reduce one slice of a sum of `shape` (a weight gradient) combine
    their float32 partial sums: (alloc, total, workspace).

    alloc() makes the float32 buffer the kernel writes and total(buffer) returns the sum in `dtype` and
    `memory_format` (one copy at most). With one split the kernel stores the result. Under
    `torch.use_deterministic_algorithms(True)` the splits store into their own slices of a (splits, *shape)
    workspace (workspace is True), which total() adds in a fixed order (kernels/common.py
    `split_sum_kernel`): the same bits on every run. Otherwise the splits add into a zero-filled result
    with atomics, whose order changes from run to run.
    """
    f32 = functools.partial(torch.empty, dtype=torch.float32, device=device)
    if splits > 1 and torch.are_deterministic_algorithms_enabled():
        numel = int(torch.Size(shape).numel())
        problem = dispatch.Problem("split_sum", m=numel, n=splits, dtype=dtype)
        cfg = dispatch.config_for(problem)
        kernel = _plans.launcher(split_sum_kernel, (dispatch.programs(cfg, problem),), SPLITS=splits,
                                 **cfg.launch_kwargs())

        def total(parts: torch.Tensor) -> torch.Tensor:
            out = torch.empty(shape, dtype=dtype, device=device)  # split_sum writes the logical order
            kernel(parts, out, numel)
            return out.contiguous(memory_format=memory_format)
        return functools.partial(f32, (splits, *shape)), total, True
    alloc = functools.partial(torch.zeros, shape, dtype=torch.float32, device=device) if splits > 1 \
        else functools.partial(f32, shape)
    return alloc, lambda result: result.to(dtype=dtype, memory_format=memory_format), False


@dispatch.on_inputs_device
def activation_backward(dy: torch.Tensor, z: torch.Tensor, activation: str) -> Callable:
    """The launch of dz = dy * activation'(z), elementwise, on tensors like these: run(dy, z) -> dz, in z's
    memory format."""
    if z.numel() == 0:
        return lambda dy, z: torch.empty_like(z)
    problem = dispatch.Problem("activation_backward", m=z.numel(), dtype=z.dtype, extra=(("activation", activation),))

    def prepare(cfg: dispatch.Config) -> Callable:
        kernel = _plans.launcher(activation_backward_kernel, (dispatch.programs(cfg, problem),), ACTIVATION=activation,
                                 **cfg.launch_kwargs())

        def run(dy, z):
            if dy.stride() != z.stride():
                # The kernel walks flat storage, so dy must share z's layout (autograd may hand in any strides).
                dy = torch.empty_like(z).copy_(dy)
            dz = torch.empty_like(z)
            kernel(dy, z, dz, dz.numel())
            return dz
        return run

    return dispatch.runner(problem, prepare, dy, z)


@torch.library.custom_op("tritonconv::activation_backward", mutates_args=(),
                         schema="(Tensor dy, Tensor z, str activation) -> Tensor")
@dispatch.on_inputs_device  # the launch runs under its tensors\' device
def _activation_backward_op(dy, z, activation):
    return activation_backward(dy, z, activation)(dy, z)


@_activation_backward_op.register_fake
def _(dy, z, activation):
    return torch.empty_like(z)


_plans.plannable("activation_backward", 2, activation_backward)


def needs_pre_activation(activation: str, *tensors: torch.Tensor | None) -> bool:
    """Whether a forward must keep the activation's input: an activation is applied and autograd will
    differentiate through it."""
    return activation != "none" and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# The launcher and autograd of each op registered by `register_epilogue_op`, for `epilogue_plan`.
_EPILOGUES: dict[str, tuple[Callable, _plans.Autograd]] = {}


def register_epilogue_op(name: str, forward: Callable, gradients: str) -> None:
    """Register "tritonconv::{name}": a conv + bias + activation op
    (x, w, bias, *geometry, activation, store_pre) -> (y, z), launched by
    `forward(x, w, bias, geo, activation, store_pre)`, which returns run(x, w, bias) -> (y, z), with its
    fake and its autograd; z is the pre-activation when `store_pre`, else an empty tensor.

    The activation's backward needs its input z. Recomputing z would cost a second convolution as large as
    the forward; instead the forward writes z beside y (one more output-sized store) when the public op
    says a backward will follow (`needs_pre_activation`). Then dz = dy * activation'(z) (our elementwise
    kernel), the ops "tritonconv::{gradients}_input_grad" and "_weight_grad" (see `register_gradient_ops`)
    give dx and dw, and db is dz summed over (n, h, w). z itself is an internal output, never
    differentiated.
    """
    @dispatch.on_inputs_device  # the launch is planned under its tensors' device
    def planner(x, w, bias, stride, padding, dilation, groups, output_size, activation, store_pre):
        geo = geometry(x.shape, w.shape, stride, padding, dilation, groups, output_size)
        return forward(x, w, bias, geo, activation, store_pre)

    @dispatch.on_inputs_device  # the launch runs under its tensors' device
    def compute(x, w, bias, *args):
        return planner(x, w, bias, *args)(x, w, bias)

    def fake(x, w, bias, stride, padding, dilation, groups, output_size, activation, store_pre):
        y = empty_like_layout((x.shape[0], w.shape[0], *output_size), channels_last(x, w), x.dtype, x.device)
        return y, torch.empty_like(y) if store_pre else x.new_empty(0)

    def setup_context(ctx, inputs, output):
        x, w, _bias, *geo_args, activation, _store_pre = inputs
        ctx.save_for_backward(x, w, output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.geometry = geo_args
        ctx.activation = activation

    def backward(ctx, dy, _dz):
        x, w, z = ctx.saved_tensors
        dz = dy if ctx.activation == "none" else _plans.call("activation_backward", dy, z, ctx.activation)
        dx = _plans.call(f"{gradients}_input_grad", dz, w, x, *ctx.geometry) if ctx.needs_input_grad[0] else None
        dw = _plans.call(f"{gradients}_weight_grad", x, dz, w, *ctx.geometry) if ctx.needs_input_grad[1] else None
        db = channel_sum(dz) if ctx.needs_input_grad[2] else None
        return input_grads(ctx, dx, dw, db)

    op = torch.library.custom_op(f"tritonconv::{name}", compute, mutates_args=(),
                                 schema=f"(Tensor x, Tensor w, Tensor? bias, {GEOMETRY_SCHEMA}, str activation, "
                                        "bool store_pre) -> (Tensor, Tensor)")
    op.register_fake(fake)
    _plans.plannable(name, 3, planner)
    _EPILOGUES[name] = forward, _plans.register_autograd(op, backward, setup_context)


def epilogue_plan(name: str, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, geo: ConvGeometry,
                  activation: str, store_pre: bool) -> _plans.Plan:
    """The plan (see tritonconv._plans) of "tritonconv::{name}" (an op of `register_epilogue_op`) on
    tensors like these, returning y."""
    forward, autograd = _EPILOGUES[name]
    return _plans.Plan(forward(x, w, bias, geo, activation, store_pre),
                       (*geometry_args(geo), activation, store_pre), autograd, first=True,
                       device=x.device)
