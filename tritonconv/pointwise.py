"""pointwise_conv2d: the 1x1 convolution GEMM with a bias + activation epilogue, its torch.library op and
autograd, the public op; and the activation-backward op and epilogue autograd that depthwise ops share."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import triton

from tritonconv import dispatch
from tritonconv._checks import (accepts_unbatched, autocast, channels_last, check_activation, check_same,
                                check_tensor, empty_like_layout)
from tritonconv.conv import (_GEOMETRY_SCHEMA, ConvGeometry, _dot_flags, _geometry, _geometry_args, channel_sum,
                             conv_geometry, no_channels_output)
from tritonconv.kernels.activations import activation_backward_kernel
from tritonconv.kernels.pointwise import pointwise_forward_kernel

# ---------------------------------------------------------------------------------------------------------
# Configurations (see tritonconv.dispatch).
# ---------------------------------------------------------------------------------------------------------


def _gemm_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """A plain GEMM: m = pixels per run, n = F, k = C, batch = runs (images in NCHW, 1 in channels_last).

    128-row tiles get 8 warps: with 4, the epilogue (bias, activation, two stores) spills on sm_90."""
    blocks = dispatch.gemm_blocks(problem, interpreter)
    return dispatch.Config.of(num_warps=8 if blocks["BLOCK_M"] >= 128 and not interpreter else 4,
                              num_stages=1 if interpreter else 3, **blocks)


def _gemm_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    return dispatch.product_space(num_warps=(4, 8), num_stages=(2, 3, 4), BLOCK_M=(64, 128),
                                  BLOCK_N=(32, 64, 128), BLOCK_K=(32, 64))


def _elementwise_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """m elements: 1024 per program on a GPU (8 per thread), the whole tiny test tensor in the interpreter."""
    block = dispatch.pow2_clamp(problem.m, 16, 4096) if interpreter else 1024
    return dispatch.Config.of(num_warps=4, num_stages=1, BLOCK=block)


def _elementwise_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    return dispatch.product_space(num_warps=(4, 8), num_stages=(1,), BLOCK=(512, 1024, 2048, 4096))


dispatch.register("pointwise_forward", "pointwise", pointwise_forward_kernel, _gemm_config, _gemm_space)
dispatch.register("activation_backward", "elementwise", activation_backward_kernel, _elementwise_config,
                  _elementwise_space)


# ---------------------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------------------

@dispatch.on_inputs_device
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
                *x.stride(), w.stride(0), w.stride(1), *y.stride(), bias.stride(0) if bias is not None else 0,
                HAS_BIAS=bias is not None, ACTIVATION=activation, STORE_PRE=store_pre, FLAT_INPUT=flat,
                **_dot_flags(x.dtype), **cfg.launch_kwargs())
        return y

    launch(dispatch.config_for(dispatch.Problem("pointwise_forward", m=n * plane // runs, n=f, k=c, batch=runs,
                                                dtype=x.dtype, channels_last=cl), launch))
    return y, z


def int32_batches(batch: int, per_image: int) -> list[slice]:
    """Consecutive slices of a batch, each with fewer than 2^31 output pixels in all (`per_image` each):
    kernels that number pixels in int32 launch once per slice (in practice, once)."""
    step = max(1, (2**31 - 1) // max(per_image, 1))
    return [slice(n0, min(n0 + step, batch)) for n0 in range(0, batch, step)]


@dispatch.on_inputs_device
def activation_backward(dy: torch.Tensor, z: torch.Tensor, activation: str) -> torch.Tensor:
    """dz = dy * activation'(z), elementwise, in z's memory format."""
    if dy.stride() != z.stride():
        # The kernel walks flat storage, so dy must share z's layout (autograd may hand in any strides).
        dy = torch.empty_like(z).copy_(dy)
    dz = torch.empty_like(z)
    if dz.numel() == 0:
        return dz

    def launch(cfg: dispatch.Config) -> torch.Tensor:
        activation_backward_kernel[(triton.cdiv(dz.numel(), cfg["BLOCK"]),)](
            dy, z, dz, dz.numel(), ACTIVATION=activation, **cfg.launch_kwargs())
        return dz

    return launch(dispatch.config_for(dispatch.Problem("activation_backward", m=dz.numel(), dtype=dz.dtype,
                                                       extra=(("activation", activation),)), launch))


# ---------------------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile, with fake implementations for shapes), their autograd, and
# the public op. "conv + bias + activation" ops (this one and tritonconv::depthwise_conv2d) return
# (y, z): z is the pre-activation when `store_pre`, else an empty tensor.
# ---------------------------------------------------------------------------------------------------------

@torch.library.custom_op("tritonconv::activation_backward", mutates_args=(),
                         schema="(Tensor dy, Tensor z, str activation) -> Tensor")
def _activation_backward_op(dy, z, activation):
    return activation_backward(dy, z, activation)


@_activation_backward_op.register_fake
def _(dy, z, activation):
    return torch.empty_like(z)


def register_epilogue_op(name: str, forward: Callable, input_grad: Callable, weight_grad: Callable):
    """Register "tritonconv::{name}": a conv + bias + activation op
    (x, w, bias, *geometry, activation, store_pre) -> (y, z), computed by
    `forward(x, w, bias, geo, activation, store_pre) -> (y, z or None)`, with its fake and its autograd.

    The activation's backward needs its input z. Recomputing z would cost a second convolution as large as
    the forward; instead the forward writes z beside y (one more output-sized store) when the public op
    says a backward will follow (`needs_pre_activation`). Then dz = dy * activation'(z) (our elementwise
    kernel), `input_grad(dz, w, x, *geometry)` and `weight_grad(x, dz, w, *geometry)` give dx and dw, and
    db is dz summed over (n, h, w). z itself is an internal output, never differentiated.
    """
    def compute(x, w, bias, stride, padding, dilation, groups, output_size, activation, store_pre):
        geo = _geometry(x.shape, w.shape, stride, padding, dilation, groups, output_size)
        y, z = forward(x, w, bias, geo, activation, store_pre)
        return y, z if z is not None else x.new_empty(0)

    def fake(x, w, bias, stride, padding, dilation, groups, output_size, activation, store_pre):
        y = empty_like_layout((x.shape[0], w.shape[0], *output_size), channels_last(x, w), x.dtype, x.device)
        return y, torch.empty_like(y) if store_pre else x.new_empty(0)

    def setup_context(ctx, inputs, output):
        x, w, _bias, *geometry, activation, _store_pre = inputs
        ctx.save_for_backward(x, w, output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.geometry = geometry
        ctx.activation = activation

    def backward(ctx, dy, _dz):
        x, w, z = ctx.saved_tensors
        dz = dy if ctx.activation == "none" else torch.ops.tritonconv.activation_backward(dy, z, ctx.activation)
        dx = input_grad(dz, w, x, *ctx.geometry) if ctx.needs_input_grad[0] else None
        dw = weight_grad(x, dz, w, *ctx.geometry) if ctx.needs_input_grad[1] else None
        db = channel_sum(dz) if ctx.needs_input_grad[2] else None
        return (dx, dw, db) + (None,) * (len(ctx.needs_input_grad) - 3)

    op = torch.library.custom_op(f"tritonconv::{name}", compute, mutates_args=(),
                                 schema=f"(Tensor x, Tensor w, Tensor? bias, {_GEOMETRY_SCHEMA}, str activation, "
                                        "bool store_pre) -> (Tensor, Tensor)")
    op.register_fake(fake)
    op.register_autograd(backward, setup_context=setup_context)
    return op


# The linear part's gradients are conv2d's implicit-GEMM input and weight gradients for a 1x1 kernel.
register_epilogue_op("pointwise_conv2d", pointwise_forward, torch.ops.tritonconv.conv2d_input_grad,
                     torch.ops.tritonconv.conv2d_weight_grad)


def needs_pre_activation(activation: str, *tensors: torch.Tensor | None) -> bool:
    """Whether a forward must keep the activation's input: an activation is applied and autograd will
    differentiate through it."""
    return activation != "none" and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def check_pointwise_weight(weight: object, name: str, in_channels: int, ref: torch.Tensor, source: str) -> torch.Tensor:
    """Check that `weight` is a 1x1 filter bank (F, in_channels, 1, 1) like `ref` (the input); `source`
    says where the in_channels come from, for the message."""
    check_tensor(weight, name)
    check_same(weight, name, ref, "input")
    if tuple(weight.shape[1:]) != (in_channels, 1, 1) or weight.shape[0] < 1:
        raise ValueError(f"{name} must have shape (F, {in_channels}, 1, 1) to take {source}, "
                         f"got {tuple(weight.shape)}")
    return weight


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
    act = check_activation(activation)
    input, weight, bias = autocast(input, weight, bias)
    check_tensor(input, "input")
    check_pointwise_weight(weight, "weight", input.shape[1], input, f"input's {input.shape[1]} channels")
    geo = conv_geometry(input, weight, bias, stride, 0, 1, 1)
    if geo.in_channels == 0:
        return no_channels_output(input, weight, bias, geo)
    return torch.ops.tritonconv.pointwise_conv2d(input, weight, bias, *_geometry_args(geo), act,
                                                 needs_pre_activation(act, input, weight, bias))[0]
