"""pointwise_conv2d: the 1x1 convolution GEMM with a bias + activation epilogue, its torch.library op and
autograd, the public op."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from tritonconv import _plans, dispatch, heuristics
from tritonconv._checks import (accepts_unbatched, autocast, channels_last, check_activation, check_tensor,
                                empty_like_layout, int32_batches)
from tritonconv._shared import (ConvGeometry, check_pointwise_weight, conv_geometry, dot_flags, epilogue_plan,
                                geometry_args, needs_pre_activation, no_channels_output, register_epilogue_op, tf32)
from tritonconv.heuristics import cdiv
from tritonconv.kernels.pointwise import pointwise_forward_kernel

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


dispatch.register("pointwise_forward", "pointwise", pointwise_forward_kernel, _gemm_config, _gemm_space,
                  trips=lambda problem, config, args: (cdiv(args["C"], config["BLOCK_K"]),))  # channel steps


# ---------------------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------------------

@dispatch.on_inputs_device
def pointwise_forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, geo: ConvGeometry,
                      activation: str = "none", store_pre: bool = False) -> Callable:
    """The launch of y = activation(conv1x1(x, w) + bias) with geo's stride on tensors like these:
    run(x, w, bias) -> (y, z), y in the memory format torch would give, z = conv1x1(x, w) + bias (the
    activation's input) when `store_pre`, else an empty tensor."""
    cl = channels_last(x, w)
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
    flags = {"HAS_BIAS": bias is not None, "ACTIVATION": activation, "STORE_PRE": store_pre, "FLAT_INPUT": flat,
             **dot_flags(x.dtype)}

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
    return dispatch.runner(dispatch.Problem("pointwise_forward", m=n * plane // runs, n=f, k=c, batch=runs,
                                            dtype=x.dtype, channels_last=cl), prepare, x, w, bias)


# ---------------------------------------------------------------------------------------------------------
# torch.library op (opaque to torch.compile, with a fake implementation for shapes), its autograd, and the
# public op. tritonconv::pointwise_conv2d is a conv + bias + activation op (see `register_epilogue_op`);
# the linear part's gradients are conv2d's implicit-GEMM input and weight gradients for a 1x1 kernel.
# ---------------------------------------------------------------------------------------------------------

register_epilogue_op("pointwise_conv2d", pointwise_forward, gradients="conv2d")


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
