"""depthwise_separable_conv2d: the fused depthwise -> activation -> pointwise kernel, its torch.library op
and autograd, the public op."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from tritonconv import _plans, dispatch
from tritonconv._checks import (accepts_unbatched, autocast, channels_last, check_activation, check_bias, check_tensor,
                                empty_like_layout, int32_batches, interpreting, needs_int64)
from tritonconv._shared import (GEOMETRY_SCHEMA, ConvGeometry, channel_sum, check_depthwise_weight,
                                check_pointwise_weight, conv_geometry, dot_flags, geometry, geometry_args,
                                input_grads, tap_major, tf32, unrolled_taps)
from tritonconv.heuristics import cdiv, pow2_clamp
from tritonconv.kernels.separable import separable_forward_kernel

# ---------------------------------------------------------------------------------------------------------
# Configurations (see tritonconv.dispatch). The Problem is the pointwise GEMM's: m = N*OH*OW pixels,
# n = F, k = C * multiplier intermediate channels; extra holds the depthwise taps per channel.
# ---------------------------------------------------------------------------------------------------------


def _fused_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """Every output channel in one tile (the op fuses only F <= MAX_FUSED_CHANNELS, `_fuses`), so that the
    depthwise block (the costly part of a K-step) is computed once. On a GPU: 16 intermediate channels per
    step (16 divides the usual channel counts, so no step is half empty), OUT_W outputs per thread along a
    row where the kernel row unrolls (the sliding window), BLOCK_M // OUT_W = 64 pixel groups (one wgmma
    tile each), 3 stages (with 2 the x copies drain every K-step)."""
    window = dict(problem.extra)["window"]
    if interpreter:
        out_w = 2 if window else 1
        # One program for the tiny test problems where it can (the interpreter pays per program).
        return dispatch.Config.of(num_warps=4, num_stages=1, OUT_W=out_w,
                                  BLOCK_M=pow2_clamp(cdiv(problem.m, out_w), 16, 64) * out_w,
                                  BLOCK_N=pow2_clamp(problem.n, 16, MAX_FUSED_CHANNELS),
                                  BLOCK_K=pow2_clamp(problem.k, 16, 32))
    out_w = 4 if window else 1
    return dispatch.Config.of(num_warps=4, num_stages=3, OUT_W=out_w, BLOCK_M=64 * out_w,
                              BLOCK_N=pow2_clamp(problem.n, 16, MAX_FUSED_CHANNELS), BLOCK_K=16)


def _fused_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    """What can win for F <= 64: 4 warps (one warpgroup; 8-warp configurations are unchecked on a GPU), one
    N-tile of every output channel, 64 or 128 pixel groups of 1, 2 or 4 outputs, 16 or 32 channels a step."""
    widths = (1, 2, 4) if dict(problem.extra)["window"] else (1,)
    return [dispatch.Config.of(num_warps=4, num_stages=stages, OUT_W=out_w, BLOCK_M=groups * out_w,
                               BLOCK_N=pow2_clamp(problem.n, 16, MAX_FUSED_CHANNELS), BLOCK_K=block_k)
            for stages in (2, 3) for out_w in widths for groups in (64, 128) for block_k in (16, 32)]


dispatch.register("separable_forward", "separable", separable_forward_kernel, _fused_config, _fused_space,
                  # The intermediate channel steps, then the live kh and kw taps of each step's depthwise block
                  # along the axes not unrolled.
                  trips=lambda problem, config, args: (
                      cdiv(args["K"], config["BLOCK_K"]),
                      *(args[end] - args[start] for start, end, unrolled in (("kh_start", "kh_end", "TAPS_H"),
                                                                            ("kw_start", "kw_end", "TAPS_W"))
                        if not args[unrolled])))


# ---------------------------------------------------------------------------------------------------------
# Launcher.
# ---------------------------------------------------------------------------------------------------------

def _stores_pre_activation(activation: str) -> bool:
    """Whether a backward needs the intermediate's pre-activation t besides a = activation(t): relu's and
    relu6's derivatives are functions of a ([a > 0] = [t > 0], [0 < a < 6] = [0 < t < 6], since rounding
    is monotone and 0 and 6 are exact), so `activation_backward` takes a in t's place; silu's and gelu's
    are not."""
    return activation in ("silu", "gelu")


# The most output channels for which the fused kernel runs (`_fuses`).
MAX_FUSED_CHANNELS = 64


def _fuses(f: int, cl: bool) -> bool:
    """Whether the fused kernel runs (F output channels, output channels_last), else our depthwise op then
    our pointwise op. The fused kernel is issue-bound: its K-steps compute the depthwise block in
    registers, again for every N-tile, and what it saves is the intermediate's round trip; it pays with
    one N-tile of up to 64 columns (4 warps) in channels_last. In NCHW our depthwise op's sliding window
    reads each input row once for all its taps, where the fused kernel gathers one element per pointer,
    so there the pair wins (bench.cost's separable table). Small maps lose too (few programs for 132 SMs,
    each walking every K-step), but deciding by size would run two ops' host paths on tiny maps, over the
    host-time bound of tests/test_host.py."""
    return f <= MAX_FUSED_CHANNELS and cl


@dispatch.on_inputs_device
def separable_forward(x: torch.Tensor, wd: torch.Tensor, bd: torch.Tensor | None, wp: torch.Tensor,
                      bp: torch.Tensor | None, geo: ConvGeometry, activation: str, store_mid: bool) -> Callable:
    """The launch of y = pointwise(activation(depthwise(x, wd) + bd), wp) + bp on tensors like these:
    run(x, wd, bd, wp, bp) -> (y, a, z); `geo` is the depthwise convolution's geometry. The output takes
    the memory format torch's two convolutions would give. With `store_mid` (a backward will follow), a is
    the intermediate activation(t) as the pointwise GEMM took it, and z its pre-activation t when the
    activation's backward needs it (`_stores_pre_activation`); otherwise (and z then) empty tensors."""
    k, f = wd.shape[0], wp.shape[0]
    plane = (geo.out_height, geo.out_width)
    cl = channels_last(x, wd, wp)
    store_z = store_mid and _stores_pre_activation(activation)
    # What the op returns for an intermediate not stored: made once for the plan (an allocation per call
    # costs host time); two tensors, since a custom op's outputs may not alias each other.
    no_a, no_z = (torch.empty(0, dtype=x.dtype, device=x.device) for _ in range(2))
    if not _fuses(f, cl):
        depthwise = _plans.planned("depthwise_conv2d", x, wd, bd, *geometry_args(geo), activation, store_z)
        pointwise = []  # planned on the first call, when there is an intermediate to plan it on

        def unfused(x, wd, bd, wp, bp):
            a, z = depthwise(x, wd, bd)
            if not pointwise:
                # The 1x1 convolution over the intermediate: unit stride, no padding, the depthwise output's
                # size.
                pointwise.append(_plans.planned("pointwise_conv2d", a, wp, bp, [1, 1], [0, 0], [1, 1], 1,
                                                list(plane), "none", False))
            y, _ = pointwise[0](a, wp, bp)
            return y, a if store_mid else no_a, z if store_z else no_z
        return unfused

    y = empty_like_layout((geo.batch, f, *plane), cl, x.dtype, "meta")
    alloc = _plans.allocator(y, x.device)
    # The intermediate in the layout our depthwise op would give it.
    mid = empty_like_layout((geo.batch, k, *plane), channels_last(x, wd), x.dtype, "meta")
    mid_alloc = _plans.allocator(mid, x.device)

    def mids() -> tuple[torch.Tensor, torch.Tensor]:
        return mid_alloc() if store_mid else no_a, mid_alloc() if store_z else no_z

    if y.numel() == 0:
        return lambda x, wd, bd, wp, bp: (alloc(), *mids())
    taps = unrolled_taps(geo)
    geometry_and_strides = (geo.height, geo.width, *plane, k, f, k // geo.in_channels, *geo.stride, *geo.pad,
                            *geo.dilation, *geo.live_taps(0), *geo.live_taps(1), *x.stride())
    later_strides = (wp.stride(0), wp.stride(1), *y.stride(), *mid.stride(), bd.stride(0) if bd is not None else 0,
                     bp.stride(0) if bp is not None else 0)
    flags = {"HAS_DW_BIAS": bd is not None, "HAS_PW_BIAS": bp is not None, "ACTIVATION": activation,
             "STORE_MID": store_mid, "STORE_Z": store_z, **taps, **dot_flags(x.dtype),
             "BF16_BITS": x.dtype == torch.bfloat16 and not interpreting(), "OPAQUE_MID": not interpreting(),
             "INT64": needs_int64(x, y, mid)}

    def prepare(cfg: dispatch.Config) -> Callable:
        # The GEMM has a multiple of OUT_W rows per output row (a thread's outputs lie in one row).
        row_width = cdiv(plane[1], cfg["OUT_W"]) * cfg["OUT_W"]
        # y, and the intermediate when stored, are dense channels_last with one GEMM row per pixel: the
        # kernel addresses row m as pixel m.
        dense = cl and row_width == plane[1] and (channels_last(x, wd) or not store_mid)
        # Tap-major weights for whole channel steps (the sliding window loads them unmasked).
        columns = cdiv(k, cfg["BLOCK_K"]) * cfg["BLOCK_K"]
        assert cfg["BLOCK_N"] >= f, "the fused kernel computes every output channel in one tile"
        # A part is None when it is the whole batch (almost always), which then needs no slicing.
        launches = []
        parts = int32_batches(geo.batch, plane[0] * row_width)
        for part in parts:
            images = part.stop - part.start
            grid = (cdiv(images * plane[0] * row_width, cfg["BLOCK_M"]),)
            kernel = _plans.launcher(separable_forward_kernel, grid, **flags, DENSE_ROWS=dense,
                                     EVEN_K=k % cfg["BLOCK_K"] == 0, **cfg.launch_kwargs())
            launches.append((None if len(parts) == 1 else part, kernel,
                             (images, *geometry_and_strides, 1, geo.kernel[1] * columns, columns, *later_strides)))

        def run(x, wd, bd, wp, bp):
            y = alloc()
            a, z = mids()
            packed = tap_major(wd, torch.float32, columns)
            # y stands in for an intermediate not stored (the kernel never touches it).
            tensors = (x, y, a if store_mid else y, z if store_z else y)
            for part, kernel, args in launches:
                xs, ys, as_, zs = tensors if part is None else (t[part] for t in tensors)
                kernel(xs, packed, wd if bd is None else bd, wp, wp if bp is None else bp, ys, as_, zs, *args)
            return y, a, z
        return run

    return dispatch.runner(dispatch.Problem(
        "separable_forward", m=geo.batch * plane[0] * plane[1], n=f, k=k, dtype=x.dtype, channels_last=cl,
        extra=(("taps", geo.kernel[0] * geo.kernel[1]), ("window", taps["TAPS_W"] > 0))), prepare, x, wd, bd, wp, bp)


# ---------------------------------------------------------------------------------------------------------
# torch.library op (opaque to torch.compile, with a fake implementation for shapes), autograd, public op.
# The geometry arguments are the depthwise convolution's.
# ---------------------------------------------------------------------------------------------------------

@torch.library.custom_op("tritonconv::depthwise_separable_conv2d", mutates_args=(),
                         schema=f"(Tensor x, Tensor wd, Tensor? bd, Tensor wp, Tensor? bp, {GEOMETRY_SCHEMA}, "
                                "str activation, bool store_mid) -> (Tensor, Tensor, Tensor)")
@dispatch.on_inputs_device  # the launch runs under its tensors\' device
def _separable_op(x, wd, bd, wp, bp, stride, padding, dilation, groups, output_size, activation, store_mid):
    geo = geometry(x.shape, wd.shape, stride, padding, dilation, groups, output_size)
    return separable_forward(x, wd, bd, wp, bp, geo, activation, store_mid)(x, wd, bd, wp, bp)


@_separable_op.register_fake
def _(x, wd, bd, wp, bp, stride, padding, dilation, groups, output_size, activation, store_mid):
    mid = empty_like_layout((x.shape[0], wd.shape[0], *output_size), channels_last(x, wd), x.dtype, x.device)
    return (empty_like_layout((x.shape[0], wp.shape[0], *output_size), channels_last(x, wd, wp), x.dtype, x.device),
            mid if store_mid else x.new_empty(0),
            torch.empty_like(mid) if store_mid and _stores_pre_activation(activation) else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, wd, _bd, wp, _bp, *geo_args, activation, _store_mid = inputs
    _, a, z = output
    ctx.save_for_backward(x, wd, wp, a, z)
    ctx.mark_non_differentiable(a, z)
    ctx.geometry = geo_args
    ctx.activation = activation


def _backward(ctx, dy, _da, _dz):
    """The unfused backward on the intermediate the forward stored (a = activation(t), and t when the
    activation's derivative needs it): the pointwise GEMMs give da and dwp, our elementwise kernel
    dt = da * activation'(t), the depthwise kernels dx and dwd."""
    x, wd, wp, a, z = ctx.saved_tensors
    act, needs = ctx.activation, ctx.needs_input_grad
    if a.dim() != 4:
        raise RuntimeError("tritonconv::depthwise_separable_conv2d was called with store_mid=False, so it kept "
                           "no intermediate for a backward; pass store_mid=True when a gradient is needed")
    # The 1x1 convolution over the intermediate: unit stride, no padding, the depthwise output's size.
    pw_geometry = ([1, 1], [0, 0], [1, 1], 1, ctx.geometry[-1])
    dwp = _plans.call("pointwise_weight_grad", a, dy, wp, *pw_geometry) if needs[3] else None
    dbp = channel_sum(dy) if needs[4] else None
    dx = dwd = dbd = None
    if any(needs[:3]):
        da = _plans.call("pointwise_input_grad", dy, wp, a, *pw_geometry)
        dt = da if act == "none" else _plans.call("activation_backward", da,
                                                  z if _stores_pre_activation(act) else a, act)
        dx = _plans.call("depthwise_conv2d_input_grad", dt, wd, x, *ctx.geometry) if needs[0] else None
        dwd = _plans.call("depthwise_conv2d_weight_grad", x, dt, wd, *ctx.geometry) if needs[1] else None
        dbd = channel_sum(dt) if needs[2] else None
    return input_grads(ctx, dx, dwd, dbd, dwp, dbp)


_AUTOGRAD = _plans.register_autograd(_separable_op, _backward, _setup_context)


def _checked(input: torch.Tensor, depthwise_weight: torch.Tensor, pointwise_weight: torch.Tensor,
             depthwise_bias: torch.Tensor | None, pointwise_bias: torch.Tensor | None, stride: int | Sequence[int],
             padding: int | Sequence[int] | str, dilation: int | Sequence[int],
             activation: str | None) -> tuple[ConvGeometry, str]:
    """Check a depthwise_separable_conv2d call: the depthwise geometry and the kernel's activation name."""
    act = check_activation(activation)
    check_tensor(input, "input")
    check_depthwise_weight(depthwise_weight, "depthwise_weight", input)
    mid = depthwise_weight.shape[0]
    check_bias(depthwise_bias, "depthwise_bias", mid, input, "input")
    check_pointwise_weight(pointwise_weight, "pointwise_weight", mid, input,
                           f"the depthwise output's {mid} channels")
    check_bias(pointwise_bias, "pointwise_bias", pointwise_weight.shape[0], input, "input")
    return conv_geometry(input, depthwise_weight, None, stride, padding, dilation, input.shape[1]), act


def _plan(x: torch.Tensor, wd: torch.Tensor, bd: torch.Tensor | None, wp: torch.Tensor, bp: torch.Tensor | None,
          args: tuple, store_mid: bool) -> _plans.Plan:
    """Check a call and plan it (see tritonconv._plans); `args` are (stride, padding, dilation, activation),
    `store_mid`: autograd records the call, so the forward keeps the intermediate."""
    geo, act = _checked(x, wd, wp, bd, bp, *args)
    return _plans.Plan(separable_forward(x, wd, bd, wp, bp, geo, act, store_mid),
                       (*geometry_args(geo), act, store_mid), _AUTOGRAD, first=True, device=x.device)


@accepts_unbatched
def depthwise_separable_conv2d(input: torch.Tensor, depthwise_weight: torch.Tensor, pointwise_weight: torch.Tensor,
                               depthwise_bias: torch.Tensor | None = None,
                               pointwise_bias: torch.Tensor | None = None, stride: int | Sequence[int] = 1,
                               padding: int | Sequence[int] | str = 0, dilation: int | Sequence[int] = 1,
                               activation: str | None = None) -> torch.Tensor:
    """Depthwise-separable convolution: depthwise, then `activation`, then pointwise.

    t[n, k, i, j] = bd[k] + sum_{u, v} x[n, k // m, i*s_h - p_h + u*d_h, j*s_w - p_w + v*d_w] * wd[k, 0, u, v]
    y[n, f, i, j] = bp[f] + sum_k act(t[n, k, i, j]) * wp[f, k, 0, 0]

    i.e. `F.conv2d(act(F.conv2d(input, wd, bd, stride, padding, dilation, groups=C)), wp, bp)` with
    multiplier m = wd.shape[0] / C. Up to 64 output channels one kernel computes the intermediate t in
    float32 registers, rounds act(t) to the input dtype (as the two-op pair would store it) and feeds it to
    the pointwise matrix product on chip; over 64 (where fusing does not pay) our depthwise op then our
    pointwise op run. When autograd records the call, the forward keeps act(t) (and t for silu and gelu)
    and the backward runs the unfused backward kernels on it.

    Args:
        input: (N, C, H, W), NCHW or channels_last; the output takes the same memory format; or (C, H, W).
        depthwise_weight: (C * m, 1, KH, KW), multiplier m >= 1; depthwise_bias: optional (C * m,).
        pointwise_weight: (F, C * m, 1, 1); pointwise_bias: optional (F,).
        stride, padding, dilation: of the depthwise convolution, as in `tritonconv.depthwise_conv2d`.
        activation: between the two convolutions: None, "relu", "relu6", "silu" or "gelu" (exact erf form).
    """
    tensors = (input, depthwise_weight, depthwise_bias, pointwise_weight, pointwise_bias)
    eager = _plans.eager(*tensors)
    tensors = autocast(*tensors)
    args = (stride, padding, dilation, activation)
    grad = _plans.needs_grad(*tensors)
    if eager:
        key = ("depthwise_separable_conv2d", *map(_plans.meta, tensors), *args, grad, tf32())
        return _plans.plan(key, lambda: _plan(*tensors, args, grad))(grad, *tensors)
    x, wd, bd, wp, bp = tensors
    geo, act = _checked(x, wd, wp, bd, bp, *args)
    return torch.ops.tritonconv.depthwise_separable_conv2d(x, wd, bd, wp, bp, *geometry_args(geo), act, grad)[0]
