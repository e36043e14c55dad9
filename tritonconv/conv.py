"""conv2d: launchers for the implicit-GEMM kernels, the autograd Function, and the public op."""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from triton.tools.tensor_descriptor import TensorDescriptor

from tritonconv import _plans, dispatch, heuristics
# conv2d routes depthwise and 1x1 convolutions to the ops these modules register; neither imports this one.
from tritonconv import depthwise, pointwise  # noqa: F401
from tritonconv._checks import accepts_unbatched, autocast, channels_last, empty_like_layout, needs_int64
from tritonconv._shared import (GEOMETRY_SCHEMA, ConvGeometry, channel_sum, conv_geometry, dot_flags, epilogue_plan,
                                gemm_operand, geometry, geometry_args, input_grads, no_channels_output,
                                pixel_stride, register_gradient_ops, split_k_partials, tf32,
                                weight_grad_config, weight_grad_space)
from tritonconv.heuristics import cdiv
from tritonconv.kernels.conv import conv2d_forward_kernel, conv2d_input_grad_kernel, conv2d_weight_grad_kernel


# ---------------------------------------------------------------------------------------------------------
# Configurations (see tritonconv.dispatch).
# ---------------------------------------------------------------------------------------------------------

def _gemm_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """Forward and input gradient: output tiles, one pipelined reduction over (tap, channel block).

    On a GPU, 4 warps and 3 stages. 8-warp configurations
    stay in the tuning space only (where the autotuner checks each against this heuristic's output):
    flattened implicit-GEMM loops at 8 warps have miscompiled in another template, and no GPU run has
    checked them here yet. Registers and spills: `python -m bench.static --kernel conv2d_forward
    conv2d_input_grad`.
    """
    blocks = heuristics.gemm_blocks(problem, interpreter)
    if interpreter:
        return dispatch.Config.of(num_warps=4, num_stages=1, GROUP_M=8, **blocks)
    if blocks["BLOCK_M"] == 64:
        # A small tile spends most of a step on per-row address and mask arithmetic, whatever its
        # BLOCK_K: twice the channels per step halves that share (up to the channels of one tap; a
        # problem that does not say its tap count is taken as one tap).
        channels = problem.k // dict(problem.extra).get("taps", 1)
        blocks["BLOCK_K"] = heuristics.pow2_clamp(channels, 16, 2 * blocks["BLOCK_K"])
    return dispatch.Config.of(num_warps=4, num_stages=3, GROUP_M=8, **blocks)


def _forward_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """Forward: as _gemm_config, but 16-bit 128-row tiles on a GPU are 128 columns wide and reduce 32
    channels per step. A step's address and mask arithmetic is per row and per 16-byte vector, so twice
    the columns per row halve its share of the work per MAC; with the 128x128 float32 accumulator, 64
    channels per step spill on sm_80, and float32 operands spill even at 32 (`python -m bench.static
    --target sm_90 sm_80 --kernel conv2d_forward`). Weight tiles load with plain loads: the
    tensor-descriptor loads (B_DESCRIPTOR) are a tuning candidate only (_forward_space), since no GPU has
    run them."""
    config = _gemm_config(problem, interpreter)
    if interpreter or config["BLOCK_M"] != 128 or problem.dtype == torch.float32:
        return config
    return dispatch.Config.of(**{**config.launch_kwargs(), "BLOCK_N": heuristics.pow2_clamp(problem.n, 16, 128),
                                 "BLOCK_K": heuristics.pow2_clamp(problem.k, 16, 32)})


def _input_grad_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """Input gradient: as the forward, but 64-row tiles on a GPU, 128 columns wide when there is work
    for 128-row ones, and float32 reduces 32 channels per step. Its exact recomputation (see the kernel)
    keeps a second accumulator: 128-row tiles spill, as do float32 steps of 64 channels (float32 w tiles
    load element by element, transposed for the tf32 MMA), while a wider tile spreads the per-row
    arithmetic over twice the MMA work (`python -m bench.static --kernel conv2d_input_grad --space full`
    lists every configuration's registers and spills)."""
    config = _gemm_config(problem, interpreter)
    if interpreter:
        return config
    wide = config["BLOCK_M"] == 128
    block_k = min(config["BLOCK_K"], 32) if problem.dtype == torch.float32 else config["BLOCK_K"]
    return dispatch.Config.of(**{**config.launch_kwargs(), "BLOCK_M": 64, "BLOCK_K": block_k,
                                 "BLOCK_N": heuristics.pow2_clamp(problem.n, 16, 128 if wide else 64)})


def _gemm_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    """Wide tiles up to 128x256 and 128 channels per step; the 8-warp ones are checked by the autotuner
    against the heuristic's output before use (see _gemm_config)."""
    return dispatch.product_space(num_warps=(4, 8), num_stages=(3, 4), BLOCK_M=(64, 128),
                                  BLOCK_N=(64, 128, 256), BLOCK_K=(32, 64, 128), GROUP_M=(8,))


def _forward_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    """_gemm_space (plain weight loads), then, where the GPU has TMA (`heuristics.
    tensor_memory_accelerator`), those of its configurations whose BLOCK_K divides C_g again with the
    weight tiles loaded through a tensor descriptor (B_DESCRIPTOR=1, see conv2d_forward_kernel; a config
    without the parameter loads them plainly). With such steps a box never reaches into the next tap's
    channels (which the kernel would mask in registers), and C_g is a multiple of 32 elements, so the
    packed weight's rows and every box's start are 16-byte aligned, as TMA needs."""
    space = _gemm_space(problem)
    if not heuristics.tensor_memory_accelerator():
        return space
    channels = problem.k // dict(problem.extra).get("taps", 1)
    return space + [dispatch.Config.of(**c.launch_kwargs(), B_DESCRIPTOR=1) for c in space
                    if channels % c["BLOCK_K"] == 0]


def _rows_reading_input(args: Mapping[str, object], forward: bool) -> float:
    """The forward's share of (tile row, live tap row kh) pairs whose tap reads a real input row (output
    row oh reads input row oh*sh - ph + kh*dh), or the input gradient's mean number of live tap rows that
    reach dy from an input row (input row ih gets output row (ih + ph - kh*dh) / sh when that division is
    exact and lands in [0, OH): its phase's taps, phase by phase). A tile that spans whole rows skips a tap
    exactly when no row reads with it, so this scales the channel loops run; skipping along columns is
    not counted."""
    h, oh, s, p, d = args["H"], args["OH"], args["stride_h"], args["pad_h"], args["dil_h"]
    live = range(args["kh_start"], args["kh_end"])
    if not live:
        return 0.0
    if forward:
        return sum(0 <= r * s - p + kh * d < h for kh in live for r in range(oh)) / (oh * len(live))
    return sum((r + p - kh * d) % s == 0 and 0 <= (r + p - kh * d) // s < oh for kh in live for r in range(h)) / h


def _phase_columns(args: Mapping[str, object]) -> float:
    """The input gradient's mean number of live tap columns of an input column's phase (iw + pw - kw*dw
    a multiple of sw), over the input's columns."""
    w, s, p, d = args["W"], args["stride_w"], args["pad_w"], args["dil_w"]
    return sum((c + p - kw * d) % s == 0 for kw in range(args["kw_start"], args["kw_end"]) for c in range(w)) / w


def _gemm_trips(problem: dispatch.Problem, config: dispatch.Config, args: Mapping[str, object]) -> tuple[float, ...]:
    """Forward: one loop over (live tap, channel block), over the taps that read real input for some row of
    the tile (the kw range is not cut per tile in this estimate). Input gradient: the same over its
    phase's taps, averaged over the programs launched (a smaller phase leaves some idle), and the exact
    recomputation's loop, which runs only for a tile whose result holds a NaN: never, here."""
    forward = problem.kernel == "conv2d_forward"
    steps = cdiv(args["C_PER_GROUP" if forward else "F_PER_GROUP"], config["BLOCK_K"])
    if forward:
        taps = (args["kh_end"] - args["kh_start"]) * (args["kw_end"] - args["kw_start"])
        return (taps * steps * _rows_reading_input(args, forward),)
    sh, sw = args["stride_h"], args["stride_w"]
    n, h, w = args["N"], args["H"], args["W"]
    tiles = sum(cdiv(n * cdiv(h - rh, sh) * cdiv(w - rw, sw), config["BLOCK_M"]) for rh in range(sh) for rw in range(sw))
    launched = cdiv(n * cdiv(h, sh) * cdiv(w, sw), config["BLOCK_M"]) * sh * sw
    return (steps * _rows_reading_input(args, forward) * _phase_columns(args) * tiles / launched, 0.0, 0.0)


def _weight_grad_trips(problem: dispatch.Problem, config: dispatch.Config,
                       args: Mapping[str, object]) -> tuple[float, ...]:
    """Weight gradient: one split's share of the whole BLOCK_K-pixel steps over N*OH*OW, then the ragged
    last step, which only the last split runs (so 1/SPLIT_K of one per program)."""
    pixels, splits = args["N"] * args["OH"] * args["OW"], config["SPLIT_K"]
    return (cdiv(pixels // config["BLOCK_K"], splits), (pixels % config["BLOCK_K"] != 0) / splits)


dispatch.register("conv2d_forward", "implicit_gemm", conv2d_forward_kernel, _forward_config, _forward_space,
                  trips=_gemm_trips)
dispatch.register("conv2d_input_grad", "implicit_gemm", conv2d_input_grad_kernel, _input_grad_config, _gemm_space,
                  trips=_gemm_trips)
dispatch.register("conv2d_weight_grad", "implicit_gemm", conv2d_weight_grad_kernel, weight_grad_config,
                  weight_grad_space, trips=_weight_grad_trips)


def _tap_bits(geo: ConvGeometry) -> dict[str, int]:
    """TAPS_H and TAPS_W: the live taps per axis when they fit the 32 bits of tap_reduction's per-row word
    (a program visits at most those, the input gradient a phase's share of them), else 0."""
    (h0, h1), (w0, w1) = geo.live_taps(0), geo.live_taps(1)
    fits = (h1 - h0) * (w1 - w0) <= 32
    return {"TAPS_H": (h1 - h0) * fits, "TAPS_W": (w1 - w0) * fits}


@dispatch.on_inputs_device
def conv2d_forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, geo: ConvGeometry) -> Callable:
    """The forward kernel's launch on tensors like these: run(x, w, bias) -> y. The output takes
    channels_last when the input or weight has it."""
    y = empty_like_layout((geo.batch, geo.out_channels, geo.out_height, geo.out_width), channels_last(x, w),
                          x.dtype, "meta")
    alloc = _plans.allocator(y, x.device)
    if y.numel() == 0:
        return lambda x, w, bias: alloc()
    xg, wg = gemm_operand(_plans.meta_like(x)), gemm_operand(_plans.meta_like(w))
    g = geo.groups
    m = geo.batch * geo.out_height * geo.out_width
    flags = {"HAS_BIAS": bias is not None, "INT64": needs_int64(xg, wg, y), **_tap_bits(geo),
             **dot_flags(x.dtype)}

    def launch_args(w_strides: Sequence[int]) -> tuple:
        return (*geo.launch_args(), *geo.live_taps(0), *geo.live_taps(1), *xg.stride(), *w_strides, *y.stride(),
                bias.stride(0) if bias is not None else 0)

    def prepare(cfg: dispatch.Config) -> Callable:
        grid = (cdiv(m, cfg["BLOCK_M"]) * cdiv(geo.out_channels // g, cfg["BLOCK_N"]), g)
        kernel = _plans.launcher(conv2d_forward_kernel, grid, EVEN_K=geo.in_channels // g % cfg["BLOCK_K"] == 0,
                                 **flags, **{"B_DESCRIPTOR": 0, **cfg.launch_kwargs()})
        if cfg.get("B_DESCRIPTOR"):
            args = launch_args(_k_major_strides(w))

            def run(x, w, bias):
                y = alloc()
                wk = _k_major(w)
                k = math.prod(wk.shape[1:])  # the row stride too (with one filter, stride(0) may be anything)
                rows = TensorDescriptor(wk, [wk.shape[0], k], [k, 1], [cfg["BLOCK_N"], cfg["BLOCK_K"]])
                kernel(gemm_operand(x), wk, w if bias is None else bias, y, *args, rows)
                return y
            return run
        args = launch_args(wg.stride())

        def run(x, w, bias):
            y = alloc()
            kernel(gemm_operand(x), gemm_operand(w), w if bias is None else bias, y, *args, None)
            return y
        return run

    return dispatch.runner(_forward_problem(geo, x, w), prepare, x, w, bias)


def _k_major_strides(w: torch.Tensor) -> tuple[int, int, int, int]:
    """The strides of the weight (F, C_g, KH, KW) packed as the K-major GEMM operand (F, KH*KW*C_g): a dense
    channels_last tensor's."""
    f, c, kh, kw = w.shape
    return (kh * kw * c, 1, kw * c, c)


def _k_major(w: torch.Tensor) -> torch.Tensor:
    """The weight with `_k_major_strides` and a 16-byte aligned start, as a tensor descriptor of the packed
    (F, KH*KW*C_g) matrix needs: as it is when it already is (a dense channels_last weight), else a copy.
    A stride along an axis of size 1 is never used, so it may be anything."""
    packed = all(size == 1 or have == want for size, have, want in zip(w.shape, w.stride(), _k_major_strides(w)))
    return w if packed and w.data_ptr() % 16 == 0 else w.clone(memory_format=torch.channels_last)


def _forward_problem(geo: ConvGeometry, x: torch.Tensor, w: torch.Tensor) -> dispatch.Problem:
    g = geo.groups
    return dispatch.Problem(
        "conv2d_forward", m=geo.batch * geo.out_height * geo.out_width, n=geo.out_channels // g,
        k=geo.in_channels // g * geo.kernel[0] * geo.kernel[1], batch=g, dtype=x.dtype,
        channels_last=channels_last(x), extra=(("taps", geo.kernel[0] * geo.kernel[1]),))


def _phase_constants(geo: ConvGeometry) -> tuple[int, int, int, int]:
    """(gcd_h, gcd_w, inv_h, inv_w) for the input-gradient kernel's phase_taps: g = gcd(dilation, stride)
    and the inverse of dilation/g modulo stride/g (0 when stride/g is 1), per axis."""
    gcds = [math.gcd(d, s) for d, s in zip(geo.dilation, geo.stride)]
    invs = [pow(d // gd, -1, s // gd) if s > gd else 0 for d, s, gd in zip(geo.dilation, geo.stride, gcds)]
    return (*gcds, *invs)


@dispatch.on_inputs_device
def conv2d_input_grad(dy: torch.Tensor, w: torch.Tensor, geo: ConvGeometry, like: torch.Tensor) -> Callable:
    """The launch of dL/dx for the convolution `geo` on tensors like these: run(dy, w) -> dx, in the memory
    format of `like` (the input)."""
    dx = empty_like_layout((geo.batch, geo.in_channels, geo.height, geo.width), channels_last(like), dy.dtype, "meta")
    alloc = _plans.allocator(dx, dy.device)
    if dx.numel() == 0:
        return lambda dy, w: alloc()
    dyg, wg = gemm_operand(_plans.meta_like(dy)), gemm_operand(_plans.meta_like(w))
    g = geo.groups
    phases = geo.stride[0] * geo.stride[1]
    # Pixels of the largest phase (ih mod sh, iw mod sw): the kernel's rows per phase (see its docstring).
    rows = geo.batch * cdiv(geo.height, geo.stride[0]) * cdiv(geo.width, geo.stride[1])
    args = (*geo.launch_args(), *geo.live_taps(0), *geo.live_taps(1), *_phase_constants(geo), *dyg.stride(),
            *wg.stride(), *dx.stride())
    flags = {"INT64": needs_int64(dyg, wg, dx), **dot_flags(dy.dtype)}

    def prepare(cfg: dispatch.Config) -> Callable:
        grid = (cdiv(rows, cfg["BLOCK_M"]) * cdiv(geo.in_channels // g, cfg["BLOCK_N"]), g, phases)
        # Steps of 128 channels keep no register for the rows' tap words: the tile then spills on sm_80.
        taps = _tap_bits(geo) if cfg["BLOCK_K"] < 128 else {"TAPS_H": 0, "TAPS_W": 0}
        kernel = _plans.launcher(conv2d_input_grad_kernel, grid, EVEN_K=geo.out_channels // g % cfg["BLOCK_K"] == 0,
                                 EVEN_N=geo.in_channels // g % cfg["BLOCK_N"] == 0, **taps, **flags,
                                 **cfg.launch_kwargs())

        def run(dy, w):
            dx = alloc()
            kernel(gemm_operand(dy), gemm_operand(w), dx, *args)
            return dx
        return run

    return dispatch.runner(dispatch.Problem(
        "conv2d_input_grad", m=geo.batch * geo.height * geo.width, n=geo.in_channels // g, k=geo.out_channels // g * geo.kernel[0] * geo.kernel[1],
        batch=g, dtype=dy.dtype, channels_last=channels_last(like), extra=(("taps", geo.kernel[0] * geo.kernel[1]),)),
        prepare, dy, w)


def even_pixels(t: torch.Tensor) -> torch.Tensor:
    """`t` (N, C, H, W) as a GEMM operand (`gemm_operand`) whose pixels (n, h, w) are evenly spaced in
    memory (`pixel_stride`): as it is when they already are, else a channels_last copy."""
    t = gemm_operand(t)
    return t if pixel_stride(t) is not None else t.contiguous(memory_format=torch.channels_last)


@dispatch.on_inputs_device
def conv2d_weight_grad(x: torch.Tensor, dy: torch.Tensor, geo: ConvGeometry, like: torch.Tensor) -> Callable:
    """The launch of dL/dw for the convolution `geo` on tensors like these: run(x, dy) -> dw, accumulated in
    float32 and returned in the dtype and layout of `like` (the weight)."""
    g = geo.groups
    kh, kw = geo.kernel
    shape = (geo.out_channels, geo.in_channels // g, kh, kw)
    fmt = torch.channels_last if channels_last(like) else torch.contiguous_format
    pixels = geo.batch * geo.out_height * geo.out_width
    if pixels == 0:
        return lambda x, dy: torch.zeros(shape, dtype=like.dtype, device=x.device).contiguous(memory_format=fmt)
    xg, dyg = gemm_operand(_plans.meta_like(x)), even_pixels(_plans.meta_like(dy))
    dw = torch.empty(shape, dtype=torch.float32, device="meta")
    args = (*geo.launch_args()[:7], kw, *geo.launch_args()[7:], *xg.stride(), dyg.stride(1), pixel_stride(dyg))
    flags = {"INT64": needs_int64(xg, dyg, dw), **dot_flags(x.dtype)}
    deterministic = torch.are_deterministic_algorithms_enabled()

    def prepare(cfg: dispatch.Config) -> Callable:
        alloc, total, workspace = split_k_partials(shape, cfg["SPLIT_K"], like.dtype, x.device, fmt)
        tiles = cdiv(geo.out_channels // g, cfg["BLOCK_M"]) * cdiv(geo.in_channels // g, cfg["BLOCK_N"])
        grid = (tiles * cfg["SPLIT_K"], kh * kw, g)
        kernel = _plans.launcher(conv2d_weight_grad_kernel, grid, WORKSPACE=workspace,
                                 EVEN_M=geo.out_channels // g % cfg["BLOCK_M"] == 0,
                                 EVEN_N=geo.in_channels // g % cfg["BLOCK_N"] == 0, **flags, **cfg.launch_kwargs())

        def run(x, dy):
            dw = alloc()
            kernel(gemm_operand(x), even_pixels(dy), dw, *args)
            return total(dw)
        return run

    return dispatch.runner(dispatch.Problem(
        "conv2d_weight_grad", m=geo.out_channels // g, n=geo.in_channels // g, k=pixels, batch=g * kh * kw,
        dtype=x.dtype, channels_last=channels_last(x), extra=(("deterministic", True),) if deterministic else ()),
        prepare, x, dy)


# ---------------------------------------------------------------------------------------------------------
# torch.library ops, so torch.compile(fullgraph=True) sees one opaque node per kernel (with a fake
# implementation for shapes) and autograd runs our backward kernels. A geometry travels as plain ints
# (see tritonconv._shared.GEOMETRY_SCHEMA).
# ---------------------------------------------------------------------------------------------------------

@torch.library.custom_op("tritonconv::conv2d", mutates_args=(),
                         schema=f"(Tensor x, Tensor w, Tensor? bias, {GEOMETRY_SCHEMA}) -> Tensor")
@dispatch.on_inputs_device  # the launch runs under its tensors\' device
def _conv2d_op(x, w, bias, stride, padding, dilation, groups, output_size):
    geo = geometry(x.shape, w.shape, stride, padding, dilation, groups, output_size)
    return conv2d_forward(x, w, bias, geo)(x, w, bias)


@_conv2d_op.register_fake
def _(x, w, bias, stride, padding, dilation, groups, output_size):
    return empty_like_layout((x.shape[0], w.shape[0], *output_size), channels_last(x, w), x.dtype, x.device)


register_gradient_ops("conv2d", conv2d_input_grad, conv2d_weight_grad)


def _setup_context(ctx, inputs, output):
    x, w, bias, *geo_args = inputs
    ctx.save_for_backward(x, w)
    ctx.geometry = geo_args
    ctx.has_bias = bias is not None


def _backward(ctx, dy):
    """dx and dw from our kernels; db = sum of dy over (n, h, w), accumulated in float32."""
    x, w = ctx.saved_tensors
    dx = _plans.call("conv2d_input_grad", dy, w, x, *ctx.geometry) if ctx.needs_input_grad[0] else None
    dw = _plans.call("conv2d_weight_grad", x, dy, w, *ctx.geometry) if ctx.needs_input_grad[1] else None
    db = channel_sum(dy) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return input_grads(ctx, dx, dw, db)


_AUTOGRAD = _plans.register_autograd(_conv2d_op, _backward, _setup_context)


def conv2d_family(groups: int, in_channels: int, kernel: tuple[int, int], pad: tuple[int, int]) -> str:
    """Which family of our kernels computes a convolution:

    - "depthwise": every group is one input channel (groups == C, so F = C * multiplier): the direct
      per-channel kernels, since a GEMM would have nothing to reduce over;
    - "pointwise": an unpadded, ungrouped 1x1 kernel (dilation is irrelevant, a stride subsamples
      pixels): a plain GEMM over channels, with no im2col address arithmetic;
    - "implicit_gemm": everything else.
    """
    if groups == in_channels:
        return "depthwise"
    if kernel == (1, 1) and pad == (0, 0) and groups == 1:
        return "pointwise"
    return "implicit_gemm"


def _conv2d_ours(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 geo: ConvGeometry) -> torch.Tensor:
    """conv2d with our kernels, of the family `conv2d_family` picks, through their torch.library ops."""
    if geo.in_channels == 0:
        return no_channels_output(input, weight, bias, geo)
    family = conv2d_family(geo.groups, geo.in_channels, geo.kernel, geo.pad)
    if family == "implicit_gemm":
        return torch.ops.tritonconv.conv2d(input, weight, bias, *geometry_args(geo))
    # The conv + bias + activation ops of tritonconv.depthwise and tritonconv.pointwise: (y, pre-activation).
    op = torch.ops.tritonconv.depthwise_conv2d if family == "depthwise" else torch.ops.tritonconv.pointwise_conv2d
    return op(input, weight, bias, *geometry_args(geo), "none", False)[0]


def _use_torch(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geo: ConvGeometry,
               args: tuple, backend: str | None) -> bool:
    """Whether the call runs F.conv2d(input, weight, bias, *args) (backend "auto" timed it faster)."""
    return dispatch.use_torch(_forward_problem(geo, input, weight), lambda: _conv2d_ours(input, weight, bias, geo),
                              lambda: F.conv2d(input, weight, bias, *args), backend,
                              input.device)


def _conv2d_plan(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, args: tuple,
                 backend: str | None) -> _plans.Plan:
    """Check a call to conv2d(input, weight, bias, *args) and plan it (see tritonconv._plans)."""
    geo = conv_geometry(input, weight, bias, *args)
    if _use_torch(input, weight, bias, geo, args, backend):
        return _plans.Plan(lambda x, w, b: F.conv2d(x, w, b, *args))
    if geo.in_channels == 0:
        return _plans.Plan(lambda x, w, b: no_channels_output(x, w, b, geo))
    family = conv2d_family(geo.groups, geo.in_channels, geo.kernel, geo.pad)
    if family == "implicit_gemm":
        return _plans.Plan(conv2d_forward(input, weight, bias, geo), geometry_args(geo), _AUTOGRAD,
                           device=input.device)
    return epilogue_plan(f"{family}_conv2d", input, weight, bias, geo, "none", False)


@accepts_unbatched
def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: int | Sequence[int] = 1, padding: int | Sequence[int] | str = 0,
           dilation: int | Sequence[int] = 1, groups: int = 1, *, backend: str | None = None) -> torch.Tensor:
    """2-D convolution with exactly the semantics of `torch.nn.functional.conv2d`.

    y[n, f, i, j] = b[f] + sum_{c, u, v} x[n, g*C_g + c, i*s_h - p_h + u*d_h, j*s_w - p_w + v*d_w] * w[f, c, u, v]

    where g = f // F_g is the group of output channel f, C_g = C / groups and F_g = F / groups, and x reads
    as 0 outside the input. Computed in Triton by the kernel family `conv2d_family` picks: the
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
    eager = _plans.eager(input, weight, bias)
    input, weight, bias = autocast(input, weight, bias)
    args = (stride, padding, dilation, groups)
    if eager:
        key = ("conv2d", _plans.meta(input), _plans.meta(weight), _plans.meta(bias), *args, backend, tf32())
        plan = _plans.plan(key, lambda: _conv2d_plan(input, weight, bias, args, backend))
        return plan(_plans.needs_grad(input, weight, bias), input, weight, bias)
    geo = conv_geometry(input, weight, bias, *args)
    if _use_torch(input, weight, bias, geo, args, backend):
        return F.conv2d(input, weight, bias, *args)
    return _conv2d_ours(input, weight, bias, geo)
