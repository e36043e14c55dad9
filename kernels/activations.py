"""Activation functions for kernel epilogues, their derivatives, and the elementwise backward kernel.

ACTIVATION is a compile-time string, one of "none", "relu", "relu6", "silu", "gelu", so a kernel compiled
for one activation carries no branch for the others. Every function takes and returns float32 values.

    relu(z)  = max(z, 0)                         relu'(z)  = [z > 0]
    relu6(z) = min(max(z, 0), 6)                 relu6'(z) = [0 < z < 6]
    silu(z)  = z * s,  s = 1 / (1 + exp(-z))     silu'(z)  = s * (1 + z * (1 - s))
    gelu(z)  = z * Phi(z)                        gelu'(z)  = Phi(z) + z * phi(z)
               Phi(z) = (1 + erf(z / sqrt 2)) / 2,  phi(z) = exp(-z^2 / 2) / sqrt(2 pi)

gelu is the exact (erf) form, torch.nn.functional.gelu's default. The derivatives are 0 where PyTorch's
are at the kinks (relu at 0, relu6 at 0 and 6).
"""

import triton
import triton.language as tl

# Globals read inside @triton.jit code must be constexpr.
_INV_SQRT2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def activate(z, ACTIVATION: tl.constexpr):
    """The activation of float32 `z`, elementwise."""
    if ACTIVATION == "relu":
        z = tl.maximum(z, 0.0)
    elif ACTIVATION == "relu6":
        z = tl.minimum(tl.maximum(z, 0.0), 6.0)
    elif ACTIVATION == "silu":
        z = z * tl.sigmoid(z)
    elif ACTIVATION == "gelu":
        z = 0.5 * z * (1.0 + tl.erf(z * _INV_SQRT2))
    return z


@triton.jit
def activation_derivative(z, ACTIVATION: tl.constexpr):
    """d activation / dz at float32 `z`, elementwise ("none" gives 1)."""
    if ACTIVATION == "relu":
        d = tl.where(z > 0.0, 1.0, 0.0)
    elif ACTIVATION == "relu6":
        d = tl.where((z > 0.0) & (z < 6.0), 1.0, 0.0)
    elif ACTIVATION == "silu":
        s = tl.sigmoid(z)
        d = s * (1.0 + z * (1.0 - s))
    elif ACTIVATION == "gelu":
        d = 0.5 * (1.0 + tl.erf(z * _INV_SQRT2)) + z * _INV_SQRT_2PI * tl.exp(-0.5 * z * z)
    else:
        d = tl.full(z.shape, 1.0, tl.float32)
    return d


@triton.jit
def activation_backward_kernel(
    dy_ptr,    # gradient with respect to the activation's output
    z_ptr,     # the activation's input (pre-activation), saved by the forward pass
    dz_ptr,    # result: gradient with respect to z
    numel,     # elements in each of the three tensors, which share one dense memory layout
    ACTIVATION: tl.constexpr,
    BLOCK: tl.constexpr,  # elements per program
):
    """dz = dy * activation'(z), elementwise over the flat storage. Grid: (cdiv(numel, BLOCK),)."""
    # int64 offsets: the tensors may hold more than 2^31 elements.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(dz_ptr + offs, (dy * activation_derivative(z, ACTIVATION)).to(dz_ptr.dtype.element_ty), mask=mask)


@triton.jit
def store_epilogue(acc, bias_ptr, sb, chan, chan_valid, y_ptrs, z_ptrs, mask, HAS_BIAS: tl.constexpr,
                   ACTIVATION: tl.constexpr, STORE_PRE: tl.constexpr):
    """Store y = activation(acc + bias[chan]) at `y_ptrs`, and z = acc + bias[chan] at `z_ptrs` when
    STORE_PRE (the activation's backward needs z). `chan` and `chan_valid` broadcast against acc; `sb` is
    the bias's element stride."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + chan * sb, mask=chan_valid, other=0.0).to(tl.float32)
    if STORE_PRE:
        tl.store(z_ptrs, acc.to(z_ptrs.dtype.element_ty), mask=mask)
    tl.store(y_ptrs, activate(acc, ACTIVATION).to(y_ptrs.dtype.element_ty), mask=mask)
