"""Fused depthwise-separable convolution: depthwise, activation, then pointwise, in one kernel.

    t[n, k, oh, ow] = bd[k] + sum_{kh, kw} x[n, k // MULT, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] * wd[k, 0, kh, kw]
    y[n, f, oh, ow] = bp[f] + sum_k activation(t[n, k, oh, ow]) * wp[f, k, 0, 0]

Unfused, the intermediate t makes a round trip through memory (written by the depthwise kernel, read
back by the pointwise GEMM) that costs as much traffic as the input itself. Here each program owns a
tile of output pixels (the GEMM's M) and output channels (N), and walks the intermediate channels (K) in
steps of BLOCK_K: it computes the depthwise outputs of that [BLOCK_M pixels, BLOCK_K channels] block in
float32 registers (kernels/depthwise.py's `depthwise_taps`), applies bias and activation, rounds to the
input dtype as the unfused pair would store it, and feeds the block straight to `tl.dot` against the
[BLOCK_K, BLOCK_N] pointwise weights. The intermediate reaches memory only when a backward will need it
(STORE_MID: one more store of the intermediate, instead of the backward recomputing it from x).

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
def pair_row(t0, t1, x_row, row_valid, iw0, w_row, w_valid, W, sxw, sww, kw_start, TAPS_W: tl.constexpr):
    """One kernel row of two horizontally adjacent outputs, at stride 1 and dilation 1 along W: input
    column iw0 + kw_start + j (0 <= j <= TAPS_W) is tap j of the left output (t0) and tap j - 1 of the
    right one (t1), so the row's TAPS_W + 1 columns are loaded and converted once for 2 * TAPS_W taps.
    x_row points at column iw0 of the row; the weights are float32."""
    for j in tl.static_range(TAPS_W + 1):
        kw = kw_start + j
        iw = iw0 + kw
        xv = tl.load(x_row + kw.to(tl.int64) * sxw, mask=row_valid & (iw >= 0) & (iw < W), other=0.0).to(tl.float32)
        if j < TAPS_W:
            t0 += xv * tl.load(w_row + kw * sww, mask=w_valid, other=0.0)
        if j > 0:
            t1 += xv * tl.load(w_row + (kw - 1) * sww, mask=w_valid, other=0.0)
    return t0, t1


@triton.jit
def pair_taps(t0, t1, x_base, x_valid, ih0, iw0, w_base, w_valid, H, W, sxh, sxw, swh, sww, dil_h,
              kh_start, kh_end, kw_start, TAPS_H: tl.constexpr, TAPS_W: tl.constexpr):
    """`depthwise_taps` (kernels/depthwise.py, same arguments) for two horizontally adjacent outputs at
    once, whose windows start at (ih0, iw0) and (ih0, iw0 + 1): every kernel row through `pair_row`.
    Needs TAPS_W > 0; rows unrolled when TAPS_H > 0, else a runtime loop."""
    if TAPS_H > 0:
        for i in tl.static_range(TAPS_H):
            ih = ih0 + (kh_start + i) * dil_h
            t0, t1 = pair_row(t0, t1, x_base + ((kh_start + i) * dil_h).to(tl.int64) * sxh,
                              x_valid & (ih >= 0) & (ih < H), iw0, w_base + (kh_start + i) * swh, w_valid, W, sxw,
                              sww, kw_start, TAPS_W)
    else:
        for kh in range(kh_start, kh_end):
            ih = ih0 + kh * dil_h
            t0, t1 = pair_row(t0, t1, x_base + (kh * dil_h).to(tl.int64) * sxh, x_valid & (ih >= 0) & (ih < H),
                              iw0, w_base + kh * swh, w_valid, W, sxw, sww, kw_start, TAPS_W)
    return t0, t1


@triton.jit
def bias_rows(bd_ptr, offs_k, k_valid, sbd, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, HAS_DW_BIAS: tl.constexpr):
    """[ROWS, BLOCK_K] float32 rows of the depthwise bias bd[k] (zeros without one): the taps' sums start
    from it, one add fewer per output than adding it after them."""
    if HAS_DW_BIAS:
        t = tl.broadcast_to(tl.load(bd_ptr + offs_k * sbd, mask=k_valid, other=0.0).to(tl.float32)[None, :],
                            (ROWS, BLOCK_K))
    else:
        t = tl.zeros((ROWS, BLOCK_K), dtype=tl.float32)
    return t


@triton.jit
def pairs_to_rows(v0, v1, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """The [BLOCK_M, BLOCK_K] tile whose rows 2g and 2g + 1 are row g of v0 (pair g's left outputs) and of
    v1 (its right ones)."""
    return tl.reshape(tl.permute(tl.join(v0, v1), (0, 2, 1)), (BLOCK_M, BLOCK_K))


@triton.jit
def separable_forward_kernel(
    x_ptr, wd_ptr, bd_ptr, wp_ptr, bp_ptr, y_ptr,
    a_ptr, z_ptr,  # with STORE_MID: the intermediate activation(t) and (STORE_Z) t, (N, K, OH, OW), else unused
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
    smn, smc, smh, smw,  # a and z (one layout), in (N, K, OH, OW) order
    sbd, sbp,   # element strides of bd and bp
    HAS_DW_BIAS: tl.constexpr,
    HAS_PW_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,  # between the two convolutions: "none", "relu", "relu6", "silu", "gelu"
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,  # GEMM rows (output pixels) per program
    BLOCK_N: tl.constexpr,  # output channels per program
    BLOCK_K: tl.constexpr,  # intermediate (depthwise output) channels per step
    EVEN_K: tl.constexpr,   # K % BLOCK_K == 0: every step's channels exist
    TAPS_H: tl.constexpr,   # live tap counts, unrolled, or 0 for runtime loops (`depthwise_taps`)
    TAPS_W: tl.constexpr,
    PAIRED: tl.constexpr,   # stride and dilation 1 along W, TAPS_W > 1: outputs computed in pairs (`pair_row`)
    STORE_MID: tl.constexpr,  # also store a = activation(t) rounded, for the backward
    STORE_Z: tl.constexpr,    # ... and t itself (an activation whose derivative is not a function of a)
    DENSE_ROWS: tl.constexpr,  # OWR == OW, and y (a, z) channels_last and dense: pixel m at m * syw (smw)
):
    """y = pointwise(activation(depthwise(x))).

    Grid: (cdiv(N*OH*OWR, BLOCK_M) * cdiv(F, BLOCK_N),): the GEMM's rows are the output pixels, OWR per
    output row: OW, or with PAIRED OW rounded up to even, so that rows 2g and 2g + 1 are the two outputs
    of pair g (the last pair of an odd row has a right output past the edge, computed and not stored).
    """
    pid = tl.program_id(0)
    num_n = tl.cdiv(F, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    if PAIRED:
        OWR = tl.cdiv(OW, 2) * 2
    else:
        OWR = OW

    # Row m of the GEMM is output pixel (n, oh, ow). Pixel indices are int32 (the launcher keeps N*OH*OWR
    # below 2^31): int64 division is a branchy subroutine that, rematerialised in the epilogue's layout,
    # spilled registers. Offsets are int64.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_img = (offs_m // (OH * OWR)).to(tl.int64)
    pix = offs_m % (OH * OWR)
    oh = pix // OWR
    ow = pix % OWR
    if DENSE_ROWS:
        # Row m is the m-th pixel of y (and a, z): its offset needs no division, whose per-element code in
        # the accumulator's layout was a quarter of the kernel's instructions.
        m_valid = offs_m < N * OH * OW
        y_rows = offs_m.to(tl.int64) * syw
        mid_rows = offs_m.to(tl.int64) * smw
    else:
        m_valid = (offs_m < N * OH * OWR) & (ow < OW)
        y_rows = n_img * syn + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw
        mid_rows = n_img * smn + oh.to(tl.int64) * smh + ow.to(tl.int64) * smw
    # The depthwise windows: one per row, or with PAIRED one per pair of rows (its left output's), each
    # starting at input (ih0, iw0).
    if PAIRED:
        offs_p = pid_m * (BLOCK_M // 2) + tl.arange(0, BLOCK_M // 2)
        p_valid = offs_p < N * OH * (OWR // 2)
        p_img = (offs_p // (OH * (OWR // 2))).to(tl.int64)
        p_pix = offs_p % (OH * (OWR // 2))
        ih0 = (p_pix // (OWR // 2) * stride_h - pad_h)[:, None]
        iw0 = (p_pix % (OWR // 2) * 2 - pad_w)[:, None]
    else:
        p_valid = m_valid
        p_img = n_img
        ih0 = (oh * stride_h - pad_h)[:, None]
        iw0 = (ow * stride_w - pad_w)[:, None]
    x_rows = x_ptr + p_img[:, None] * sxn + ih0.to(tl.int64) * sxh + iw0.to(tl.int64) * sxw

    offs_f = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    f_valid = offs_f < F
    wp_cols = wp_ptr + offs_f.to(tl.int64)[None, :] * swpf


    # The intermediate as the unfused pair would store it: activation(t + bd) rounded to x's dtype. Channels
    # k >= K hold activation(0) = 0 for every supported activation, and meet zero pointwise weights.
    dtype = x_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:
            # A constant mask folds away: no channel compare per element and tap.
            k_valid = tl.full((BLOCK_K,), True, tl.int1)
        else:
            k_valid = offs_k < K
        # Intermediate channel k is the (k % MULT)-th filter of input channel k // MULT.
        x_base = x_rows + (offs_k // MULT).to(tl.int64)[None, :] * sxc
        wd_cols = wd_ptr + offs_k.to(tl.int64)[None, :] * swdk
        x_valid = p_valid[:, None] & k_valid[None, :]
        if PAIRED:
            t0 = bias_rows(bd_ptr, offs_k, k_valid, sbd, BLOCK_M // 2, BLOCK_K, HAS_DW_BIAS)
            t0, t1 = pair_taps(t0, t0, x_base, x_valid, ih0, iw0, wd_cols, k_valid[None, :], H, W, sxh, sxw,
                               swdh, swdw, dil_h, kh_start, kh_end, kw_start, TAPS_H, TAPS_W)
            a = pairs_to_rows(activate(t0, ACTIVATION).to(dtype), activate(t1, ACTIVATION).to(dtype), BLOCK_M,
                              BLOCK_K)
            if STORE_Z:
                z = pairs_to_rows(t0.to(dtype), t1.to(dtype), BLOCK_M, BLOCK_K)
        else:
            t = bias_rows(bd_ptr, offs_k, k_valid, sbd, BLOCK_M, BLOCK_K, HAS_DW_BIAS)
            t = depthwise_taps(t, x_base, x_valid, ih0, iw0, wd_cols, k_valid[None, :], H, W, sxh, sxw, swdh, swdw,
                               dil_h, dil_w, kh_start, kh_end, kw_start, kw_end, TAPS_H, TAPS_W)
            a = activate(t, ACTIVATION).to(dtype)
            if STORE_Z:
                z = t.to(dtype)
        # Only the first column of programs stores the intermediate; the others computed the same values.
        if STORE_MID:
            if pid_n == 0:
                mid_offs = mid_rows[:, None] + offs_k.to(tl.int64)[None, :] * smc
                mid_mask = m_valid[:, None] & k_valid[None, :]
                tl.store(a_ptr + mid_offs, a, mask=mid_mask)
                if STORE_Z:
                    tl.store(z_ptr + mid_offs, z, mask=mid_mask)
        b = tl.load(wp_cols + offs_k.to(tl.int64)[:, None] * swpk,
                    mask=k_valid[:, None] & f_valid[None, :], other=0.0)
        acc = dot(a, b, acc, DOT_PRECISION, UPCAST)

    if HAS_PW_BIAS:
        acc += tl.load(bp_ptr + offs_f * sbp, mask=f_valid, other=0.0).to(tl.float32)[None, :]
    y_offs = y_rows[:, None] + offs_f.to(tl.int64)[None, :] * syc
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=m_valid[:, None] & f_valid[None, :])
