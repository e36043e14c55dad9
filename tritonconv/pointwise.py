"""pointwise_conv2d: the 1x1 convolution GEMM with a bias + activation epilogue, its torch.library op and
autograd, the public op."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from tritonconv import _plans, dispatch, heuristics
from tritonconv._checks import (accepts_unbatched, autocast, channels_last, check_activation, check_tensor,
                                empty_like_layout, int32_batches)
from tritonconv._shared import (ConvGeometry, check_pointwise_weight, conv_geometry, dot_flags, epilogue_plan,
                                geometry_args, needs_pre_activation, no_channels_output, pixel_stride,
                                register_epilogue_op, register_gradient_ops, split_k_partials, tf32,
                                weight_grad_config, weight_grad_space)
from tritonconv.heuristics import cdiv
from tritonconv.kernels.pointwise import pointwise_forward_kernel, pointwise_weight_grad_kernel

# ---------------------------------------------------------------------------------------------------------
# Configurations (see tritonconv.dispatch).
# ---------------------------------------------------------------------------------------------------------


def _gemm_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """A plain GEMM: m = pixels per run, n = F, k = C, batch = runs (images in NCHW, 1 in channels_last).

    128-row tiles get 8 warps: with 4, the epilogue (bias, activation, two stores) spills on sm_90
    (`python -m bench.static --kernel pointwise_forward --space full`)."""
    blocks = heuristics.gemm_blocks(problem, interpreter)
    return dispatch.Config.of(num_warps=8 if blocks["BLOCK_M"] >= 128 and not interpreter else 4,
                              num_stages=1 if interpreter else 3, **blocks)


def _gemm_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    return dispatch.product_space(num_warps=(4, 8), num_stages=(2, 3, 4), BLOCK_M=(64, 128),
                                  BLOCK_N=(32, 64, 128), BLOCK_K=(32, 64))


def _input_grad_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """The input gradient (the forward's GEMM with no epilogue): as the forward, but 4 warps (8-warp
    configurations stay out of heuristics until a GPU has checked them)."""
    blocks = heuristics.gemm_blocks(problem, interpreter)
    return dispatch.Config.of(num_warps=4, num_stages=1 if interpreter else 3, **blocks)


def _weight_grad_trips(problem: dispatch.Problem, config: dispatch.Config, args: dict) -> tuple[float, ...]:
    """One split's share of the BLOCK_K-pixel steps, each run's last one ragged."""
    return (cdiv(args["RUNS"] * cdiv(args["ROWS"], config["BLOCK_K"]), config["SPLIT_K"]),)


def _channel_steps(problem: dispatch.Problem, config: dispatch.Config, args: dict) -> tuple[float, ...]:
    return (cdiv(args["C"], config["BLOCK_K"]),)


dispatch.register("pointwise_forward", "pointwise", pointwise_forward_kernel, _gemm_config, _gemm_space,
                  trips=_channel_steps)
dispatch.register("pointwise_input_grad", "pointwise", pointwise_forward_kernel, _input_grad_config, _gemm_space,
                  trips=_channel_steps)
dispatch.register("pointwise_weight_grad", "pointwise", pointwise_weight_grad_kernel, weight_grad_config,
                  weight_grad_space, trips=_weight_grad_trips)


# ---------------------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------------------

def _vector_align(x: torch.Tensor, *values: int) -> int:
    """pointwise_forward_kernel's ALIGN_C or ALIGN_P: the power of two that divides `values`, up to the
    elements of a 16-byte vector of x, and 1 where 16 divides them all, which the compiler sees by itself
    (the kernel's extra integer work would only cost registers)."""
    divides = heuristics.power_of_2_dividing(values, 16)
    return 1 if divides == 16 else min(divides, 16 // x.element_size())


@dispatch.on_inputs_device
def pointwise_forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, geo: ConvGeometry,
                      activation: str = "none", store_pre: bool = False) -> Callable:
    """The launch of y = activation(conv1x1(x, w) + bias) with geo's stride on tensors like these:
    run(x, w, bias) -> (y, z), y in the memory format torch would give, z = conv1x1(x, w) + bias (the
    activation's input) when `store_pre`, else an empty tensor."""
    return _gemm("pointwise_forward", x, w, bias, geo, activation, store_pre, channels_last(x, w))


def _gemm(kernel: str, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, geo: ConvGeometry,
          activation: str, store_pre: bool, cl: bool) -> Callable:
    """`pointwise_forward_kernel`'s launch as the registered kernel `kernel`, y in channels_last when `cl`
    (see pointwise_forward)."""
    n, c, f = geo.batch, geo.in_channels, geo.out_channels
    y = empty_like_layout((n, f, geo.out_height, geo.out_width), cl, x.dtype, "meta")
    alloc = _plans.allocator(y, x.device)
    if y.numel() == 0:
        return lambda x, w, bias: (alloc(), alloc() if store_pre else x.new_empty(0))
    plane = geo.out_height * geo.out_width
    # The input's pixels of one run are evenly spaced (r * sxw) when the 1x1 conv has stride 1 and the
    # input is dense in its plane (and across images, for one run over all of them).
    sxn, _, sxh, sxw = x.stride()
    flat = geo.stride == (1, 1) and sxh == geo.width * sxw and (not cl or n == 1 or sxn == geo.height * sxh)
    parts = int32_batches(n, plane)
    strides = (*x.stride(), w.stride(0), w.stride(1), *y.stride(), bias.stride(0) if bias is not None else 0)
    # ALIGN_P: the plane divides ROWS (plane in NCHW, a part's images * plane in channels_last). ALIGN_C
    # stays 1 in float32, which gains nothing by it in bench.cost and spills more on sm_80 (triton 3.6).
    flags = {"HAS_BIAS": bias is not None, "ACTIVATION": activation, "STORE_PRE": store_pre, "FLAT_INPUT": flat,
             "ALIGN_C": _vector_align(x, c, f, sxn, sxh, sxw, y.stride(0), *y.stride()[2:])
             if x.element_size() == 2 else 1,
             "ALIGN_P": _vector_align(x, plane, sxn, x.stride(1), y.stride(0), y.stride(1)), **dot_flags(x.dtype)}

    def prepare(cfg: dispatch.Config) -> Callable:
        # channels_last: one GEMM over every pixel of a part; NCHW: one per image, whose pixels are contiguous.
        # A part is None when it is the whole batch (almost always), which then needs no slicing.
        launches = []
        for part in parts:
            images = part.stop - part.start
            runs = 1 if cl else images
            rows = images * plane // runs
            kernel = _plans.launcher(pointwise_forward_kernel,
                                     (runs * cdiv(rows, cfg["BLOCK_M"]) * cdiv(f, cfg["BLOCK_N"]),),
                                     **flags, **cfg.launch_kwargs())
            launches.append((None if len(parts) == 1 else part, kernel,
                             (c, f, geo.out_height, geo.out_width, rows, *geo.stride, *strides)))

        def run(x, w, bias):
            y = alloc()
            z = alloc() if store_pre else None
            for part, kernel, args in launches:
                xs, ys, zs = (x, y, z) if part is None else (x[part], y[part], z if z is None else z[part])
                kernel(xs, w, w if bias is None else bias, ys, ys if zs is None else zs, *args)
            return y, x.new_empty(0) if z is None else z
        return run

    runs = 1 if cl else n
    return dispatch.runner(dispatch.Problem(kernel, m=n * plane // runs, n=f, k=c, batch=runs,
                                            dtype=x.dtype, channels_last=cl), prepare, x, w, bias)


@dispatch.on_inputs_device
def pointwise_input_grad(dy: torch.Tensor, w: torch.Tensor, geo: ConvGeometry, like: torch.Tensor) -> Callable:
    """The launch of dL/dx for the 1x1 convolution `geo` on tensors like these: run(dy, w) -> dx, in the
    memory format of `like` (the input).

        dx[n, c, oh*sh, ow*sw] = sum_f dy[n, f, oh, ow] * w[f, c, 0, 0], 0 at the pixels the stride skips

    The forward GEMM on dy with the weight read transposed (w.transpose(0, 1) is the (C, F, 1, 1) view),
    at stride 1 over the sampled pixels; a strided convolution's result is then spread into a zeroed dx.
    """
    cl = channels_last(like)
    sampled = dataclasses.replace(geo, in_channels=geo.out_channels, out_channels=geo.in_channels,
                                  height=geo.out_height, width=geo.out_width, stride=(1, 1))
    gemm = _gemm("pointwise_input_grad", dy, w.transpose(0, 1), None, sampled, "none", False, cl)
    if geo.stride == (1, 1):
        return lambda dy, w: gemm(dy, w.transpose(0, 1), None)[0]
    dx = empty_like_layout((geo.batch, geo.in_channels, geo.height, geo.width), cl, dy.dtype, "meta")

    def run(dy, w):
        full = torch.zeros_like(dx, device=dy.device)
        full[:, :, ::geo.stride[0], ::geo.stride[1]] = gemm(dy, w.transpose(0, 1), None)[0]
        return full
    return run


def _runs(t: torch.Tensor) -> torch.Tensor:
    """`t` (N, C, H, W) as the weight gradient's operand: the pixels of each image evenly spaced, and
    channels starting 16-element aligned unless they are the contiguous axis; else a channels_last copy.
    An NCHW plane of, say, 14x14 pixels starts channels 196 elements apart, which Triton cannot prove
    16-byte aligned, so every load along its pixels would be scalar (`python -m bench.cost --kernel
    pointwise_weight_grad`), costing more than the copy."""
    _, c, h, w = t.shape
    step = t.stride(3) if w > 1 else t.stride(2)
    if (h == 1 or t.stride(2) == w * step) and (c == 1 or t.stride(1) == 1 or t.stride(1) % 16 == 0):
        return t
    return t.contiguous(memory_format=torch.channels_last)


def _sampled(x: torch.Tensor, geo: ConvGeometry) -> torch.Tensor:
    """The input pixels a 1x1 convolution with geo's stride reads, as evenly spaced runs (`_runs`)."""
    return _runs(x[:, :, ::geo.stride[0], ::geo.stride[1]] if geo.stride != (1, 1) else x)


@dispatch.on_inputs_device
def pointwise_weight_grad(x: torch.Tensor, dy: torch.Tensor, geo: ConvGeometry, like: torch.Tensor) -> Callable:
    """The launch of dL/dw for the 1x1 convolution `geo` on tensors like these: run(x, dy) -> dw, accumulated
    in float32 and returned in the dtype and layout of `like` (the weight).

        dw[f, c, 0, 0] = sum_{n, oh, ow} dy[n, f, oh, ow] * x[n, c, oh*sh, ow*sw]

    The pixels are one run when both tensors space all of them evenly (and they number under 2^31),
    else one run per image.
    """
    f, c, n = geo.out_channels, geo.in_channels, geo.batch
    shape = (f, c, 1, 1)
    fmt = torch.channels_last if channels_last(like) else torch.contiguous_format
    plane = geo.out_height * geo.out_width
    if n * plane == 0:
        return lambda x, dy: torch.zeros(shape, dtype=like.dtype, device=x.device).contiguous(memory_format=fmt)
    xs, dys = _sampled(_plans.meta_like(x), geo), _runs(_plans.meta_like(dy))
    merged = n * plane < 2**31 and pixel_stride(xs) is not None and pixel_stride(dys) is not None
    runs, rows = (1, n * plane) if merged else (n, plane)

    def strides(t: torch.Tensor) -> tuple[int, int, int]:
        """Run, pixel and channel strides."""
        step = t.stride(3) if geo.out_width > 1 else t.stride(2) if geo.out_height > 1 else t.stride(0)
        return t.stride(0), step, t.stride(1)
    args = (c, f, runs, rows, *strides(xs), *strides(dys))
    deterministic = torch.are_deterministic_algorithms_enabled()

    def prepare(cfg: dispatch.Config) -> Callable:
        alloc, total, workspace = split_k_partials(shape, cfg["SPLIT_K"], like.dtype, x.device, fmt)
        grid = (cdiv(f, cfg["BLOCK_M"]) * cdiv(c, cfg["BLOCK_N"]) * cfg["SPLIT_K"],)
        kernel = _plans.launcher(pointwise_weight_grad_kernel, grid, WORKSPACE=workspace, **dot_flags(x.dtype),
                                 **cfg.launch_kwargs())

        def run(x, dy):
            dw = alloc()
            kernel(_sampled(x, geo), _runs(dy), dw, *args)
            return total(dw)
        return run

    return dispatch.runner(dispatch.Problem(
        "pointwise_weight_grad", m=f, n=c, k=runs * rows, dtype=x.dtype, channels_last=channels_last(x),
        extra=(("deterministic", True),) if deterministic else ()), prepare, x, dy)


# ---------------------------------------------------------------------------------------------------------
# torch.library op (opaque to torch.compile, with a fake implementation for shapes), its autograd, and the
# public op. tritonconv::pointwise_conv2d is a conv + bias + activation op (see `register_epilogue_op`);
# the linear part's gradients are tritonconv::pointwise_input_grad and _weight_grad, two more GEMMs.
# ---------------------------------------------------------------------------------------------------------

register_gradient_ops("pointwise", pointwise_input_grad, pointwise_weight_grad)
register_epilogue_op("pointwise_conv2d", pointwise_forward, gradients="pointwise")


def _checked(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int | Sequence[int],
             activation: str | None) -> tuple[ConvGeometry, str]:
    """Check a pointwise_conv2d call: its geometry and the kernel's activation name."""
    act = check_activation(activation)
    check_tensor(input, "input")
    check_pointwise_weight(weight, "weight", input.shape[1], input, f"input's {input.shape[1]} channels")
    return conv_geometry(input, weight, bias, stride, 0, 1, 1), act


def _plan(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int | Sequence[int],
          activation: str | None) -> _plans.Plan:
    """Check a call and plan it (see tritonconv._plans)."""
    geo, act = _checked(input, weight, bias, stride, activation)
    if geo.in_channels == 0:
        return _plans.Plan(lambda x, w, b: no_channels_output(x, w, b, geo))
    return epilogue_plan("pointwise_conv2d", input, weight, bias, geo, act,
                         needs_pre_activation(act, input, weight, bias))


@accepts_unbatched
def pointwise_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: int | Sequence[int] = 1, activation: str | None = None) -> torch.Tensor:
    """Pointwise (1x1) convolution with bias and activation fused into the GEMM's epilogue.

    y[n, f, i, j] = act(b[f] + sum_c x[n, c, i*s_h, j*s_w] * w[f, c, 0, 0])

    the same as `act(torch.nn.functional.conv2d(input, weight, bias, stride))`, where act is the identity
    (None), "relu", "relu6", "silu" or "gelu" (the exact erf form, `F.gelu`'s default). Computed as a
    matrix product over channels ([N*H*W, C] x [C, F] in channels_last, [H*W, C] x [C, F] per image in
    NCHW) accumulating in float32; float32 inputs use TF32 only when `torch.backends.cudnn.allow_tf32` is
    set. Autograd computes every gradient with our kernels (see `register_epilogue_op`).

    Args:
        input: (N, C, H, W), NCHW or channels_last; the output takes the same memory format; or (C, H, W).
        weight: (F, C, 1, 1).
        bias: optional (F,).
        stride: int or (h, w) pair, each >= 1: the output keeps every s-th pixel.
        activation: None, "relu", "relu6", "silu" or "gelu".
    """
    eager = _plans.eager(input, weight, bias)
    input, weight, bias = autocast(input, weight, bias)
    if eager:
        grad = _plans.needs_grad(input, weight, bias)
        key = ("pointwise_conv2d", _plans.meta(input), _plans.meta(weight), _plans.meta(bias), stride, activation,
               grad, tf32())
        return _plans.plan(key, lambda: _plan(input, weight, bias, stride, activation))(grad, input, weight, bias)
    geo, act = _checked(input, weight, bias, stride, activation)
    if geo.in_channels == 0:
        return no_channels_output(input, weight, bias, geo)
    return torch.ops.tritonconv.pointwise_conv2d(input, weight, bias, *geometry_args(geo), act,
                                                 needs_pre_activation(act, input, weight, bias))[0]
