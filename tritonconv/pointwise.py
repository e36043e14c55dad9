"""pointwise_conv2d: the 1x1 convolution GEMM with a bias + activation epilogue, its torch.library op and
autograd, the public op."""

from __future__ import annotations

from typing import Sequence

import torch
import triton

from tritonconv import dispatch, heuristics
from tritonconv._checks import autocast, channels_last, check_activation, check_tensor, empty_like_layout, int32_batches
from tritonconv._shared import (ConvGeometry, check_pointwise_weight, conv_geometry, dot_flags, geometry_args,
                                needs_pre_activation, register_epilogue_op)
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


dispatch.register("pointwise_forward", "pointwise", pointwise_forward_kernel, _gemm_config, _gemm_space)


# ---------------------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------------------

def pointwise_forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, geo: ConvGeometry,
                      activation: str = "none", store_pre: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """y = activation(conv1x1(x, w) + bias) with geo's stride, in the memory format torch would give.

    Returns (y, z) where z = conv1x1(x, w) + bias, the activation's input, when `store_pre` (else None).
    """
    cl = channels_last(x, w)
    n, c, f = geo.batch, geo.in_channels, geo.out_channels
    y = empty_like_layout((n, f, geo.out_height, geo.out_width), cl, x.dtype, x.device)
    z = torch.empty_like(y) if store_pre else None
    if y.numel() == 0:
        return y, z
    plane = geo.out_height * geo.out_width
    # channels_last: one GEMM over every pixel; NCHW: one per image, whose pixels are contiguous.
    runs = 1 if cl else n
    # The input's pixels of one run are evenly spaced (r * sxw) when the 1x1 conv has stride 1 and the
    # input is dense in its plane (and across images, for one run over all of them).
    sxn, _, sxh, sxw = x.stride()
    flat = geo.stride == (1, 1) and sxh == geo.width * sxw and (not cl or n == 1 or sxn == geo.height * sxh)

    def launch(cfg: dispatch.Config) -> torch.Tensor:
        for part in int32_batches(n, plane):
            ys = y[part]
            part_runs = 1 if cl else ys.shape[0]
            rows = ys.shape[0] * plane // part_runs
            grid = (part_runs * triton.cdiv(rows, cfg["BLOCK_M"]) * triton.cdiv(f, cfg["BLOCK_N"]),)
            pointwise_forward_kernel[grid](
                x[part], w, bias if bias is not None else w, ys, ys if z is None else z[part],
                c, f, geo.out_height, geo.out_width, rows, *geo.stride,
                *x.stride(), w.stride(0), w.stride(1), *y.stride(),
                HAS_BIAS=bias is not None, ACTIVATION=activation, STORE_PRE=store_pre, FLAT_INPUT=flat,
                **dot_flags(x.dtype), **cfg.launch_kwargs())
        return y

    launch(dispatch.config_for(dispatch.Problem("pointwise_forward", m=n * plane // runs, n=f, k=c, batch=runs,
                                                dtype=x.dtype, channels_last=cl), launch))
    return y, z


# ---------------------------------------------------------------------------------------------------------
# torch.library op (opaque to torch.compile, with a fake implementation for shapes), its autograd, and the
# public op. tritonconv::pointwise_conv2d is a conv + bias + activation op (see `register_epilogue_op`);
# the linear part's gradients are conv2d's implicit-GEMM input and weight gradients for a 1x1 kernel.
# ---------------------------------------------------------------------------------------------------------

register_epilogue_op("pointwise_conv2d", pointwise_forward, gradients="conv2d")


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
        input: (N, C, H, W), NCHW or channels_last; the output takes the same memory format.
        weight: (F, C, 1, 1).
        bias: optional (F,).
        stride: int or (h, w) pair, each >= 1: the output keeps every s-th pixel.
        activation: None, "relu", "relu6", "silu" or "gelu".
    """
    act = check_activation(activation)
    input, weight, bias = autocast(input, weight, bias)
    check_tensor(input, "input")
    check_pointwise_weight(weight, "weight", input.shape[1], input, f"input's {input.shape[1]} channels")
    geo = conv_geometry(input, weight, bias, stride, 0, 1, 1)
    return torch.ops.tritonconv.pointwise_conv2d(input, weight, bias, *geometry_args(geo), act,
                                                 needs_pre_activation(act, input, weight, bias))[0]
