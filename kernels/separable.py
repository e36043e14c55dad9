"""Fused depthwise-separable convolution: depthwise, activation, then pointwise, in one kernel.

    t[n, k, oh, ow] = bd[k] + sum_{kh, kw} x[n, k // MULT, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] * wd[k, 0, kh, kw]
    y[n, f, oh, ow] = bp[f] + sum_k activation(t[n, k, oh, ow]) * wp[f, k, 0, 0]

Unfused, the intermediate t makes a round trip through memory (written by the depthwise kernel, read
back by the pointwise GEMM) that costs as much traffic as the input itself. Here each program owns a
tile of output pixels (the GEMM's M) and output channels (N), and walks the intermediate channels (K) in
steps of BLOCK_K: it computes the depthwise outputs of that [BLOCK_M pixels, BLOCK_K channels] block in
float32 registers (kernels/depthwise.py's `depthwise_taps`), applies bias and activation, rounds to the
input dtype as the unfused pair would store it, and feeds the block straight to `tl.dot` against the
[BLOCK_K, BLOCK_N] pointwise weights. The intermediate never reaches memory.

When F needs more than one N-tile, each N-tile recomputes the depthwise block (K*KH*KW multiply-adds
per pixel against K*BLOCK_N for its share of the GEMM); the N-tiles of one M-tile are neighbouring
programs, so they re-read x from L2 rather than memory.

All offsets are int64, so tensors over 2^31 elements index correctly; pixel indices are int32
(kernels/common.py gives the index-width policies and why).
"""

import triton
import triton.language as tl

from tritonconv.kernels.activations import activate
from tritonconv.kernels.common import dot
from tritonconv.kernels.depthwise import depthwise_taps


@triton.jit
def separable_forward_kernel(
    x_ptr, wd_ptr, bd_ptr, wp_ptr, bp_ptr, y_ptr,
    # Sizes: input (N, C, H, W), depthwise weight (K, 1, KH, KW) with K = C * MULT, pointwise weight
    # (F, K, 1, 1), output (N, F, OH, OW).
    N, H, W, OH, OW, K, F, MULT,
    # Depthwise geometry. kh/kw ranges are the live taps (kernels/conv.py's module docstring).
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    kh_start, kh_end, kw_start, kw_end,
    # Element strides: x and y in (N, C, H, W) order (any memory format), wd in (K, KH, KW) (the launcher
    # passes tap-major float32 weights: 1, KW * K, K, so no tap converts them), wp in (F, K).
    sxn, sxc, sxh, sxw,
    swdk, swdh, swdw,
    swpf, swpk,
    syn, syc, syh, syw,
    sbd, sbp,   # element strides of bd and bp
    HAS_DW_BIAS: tl.constexpr,
    HAS_PW_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,  # between the two convolutions: "none", "relu", "relu6", "silu", "gelu"
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,  # output pixels (n, oh, ow) per program
    BLOCK_N: tl.constexpr,  # output channels per program
    BLOCK_K: tl.constexpr,  # intermediate (depthwise output) channels per step
    TAPS_H: tl.constexpr,   # live tap counts, unrolled, or 0 for runtime loops (`depthwise_taps`)
    TAPS_W: tl.constexpr,
):
    """y = pointwise(activation(depthwise(x))). Grid: (cdiv(N*OH*OW, BLOCK_M) * cdiv(F, BLOCK_N),)."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(F, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n

    # Row m of the GEMM is output pixel (n, oh, ow); its depthwise window starts at input (ih0, iw0).
    # Pixel indices are int32 (the launcher keeps N*OH*OW below 2^31): int64 division is a branchy
    # subroutine that, rematerialised in the epilogue's layout, spilled registers. Offsets are int64.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < N * OH * OW
    n_img = (offs_m // (OH * OW)).to(tl.int64)
    pix = offs_m % (OH * OW)
    oh = pix // OW
    ow = pix % OW
    ih0 = (oh * stride_h - pad_h)[:, None]
    iw0 = (ow * stride_w - pad_w)[:, None]
    x_rows = x_ptr + n_img[:, None] * sxn + ih0.to(tl.int64) * sxh + iw0.to(tl.int64) * sxw

    offs_f = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    f_valid = offs_f < F
    wp_cols = wp_ptr + offs_f.to(tl.int64)[None, :] * swpf

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_valid = offs_k < K
        # Intermediate channel k is the (k % MULT)-th filter of input channel k // MULT.
        x_base = x_rows + (offs_k // MULT).to(tl.int64)[None, :] * sxc
        t = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        t = depthwise_taps(t, x_base, m_valid[:, None] & k_valid[None, :], ih0, iw0,
                           wd_ptr + offs_k.to(tl.int64)[None, :] * swdk, k_valid[None, :],
                           H, W, sxh, sxw, swdh, swdw, dil_h, dil_w, kh_start, kh_end, kw_start, kw_end, TAPS_H, TAPS_W)
        if HAS_DW_BIAS:
            t += tl.load(bd_ptr + offs_k * sbd, mask=k_valid, other=0.0).to(tl.float32)[None, :]
        # Channels k >= K hold activation(0) = 0 for every supported activation, and meet zero weights.
        a = activate(t, ACTIVATION).to(x_ptr.dtype.element_ty)
        b = tl.load(wp_cols + offs_k.to(tl.int64)[:, None] * swpk,
                    mask=k_valid[:, None] & f_valid[None, :], other=0.0)
        acc = dot(a, b, acc, DOT_PRECISION, UPCAST)

    if HAS_PW_BIAS:
        acc += tl.load(bp_ptr + offs_f * sbp, mask=f_valid, other=0.0).to(tl.float32)[None, :]
    y_offs = (n_img * syn + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw)[:, None] \
        + offs_f.to(tl.int64)[None, :] * syc
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=m_valid[:, None] & f_valid[None, :])
