"""Fused depthwise-separable convolution: depthwise, activation, then pointwise, in one kernel.

    t[n, k, oh, ow] = bd[k] + sum_{kh, kw} x[n, k // MULT, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] * wd[k, 0, kh, kw]
    y[n, f, oh, ow] = bp[f] + sum_k activation(t[n, k, oh, ow]) * wp[f, k, 0, 0]

Unfused, the intermediate t makes a round trip through memory (written by the depthwise kernel, read
back by the pointwise GEMM) that costs as much traffic as the input itself. Here each program owns a
tile of output pixels (the GEMM's M) and every output channel (N: the op fuses only F <= 64, one tile),
and walks the intermediate channels (K) in steps of BLOCK_K: it computes the depthwise outputs of that
[BLOCK_M pixels, BLOCK_K channels] block in float32 registers, applies bias and activation, rounds to the
input dtype as the unfused pair would store it, and feeds the block straight to `tl.dot` against the
[BLOCK_K, BLOCK_N] pointwise weights. The intermediate reaches memory only when a backward will need it
(STORE_MID: one more store of the intermediate, instead of the backward recomputing it from x).

The depthwise block is computed as kernels/depthwise.py's forward computes it, with its helpers: each
thread takes OUT_W neighbouring outputs of an output row, and each kernel row's input columns are loaded
and converted once for all of them (a sliding window: `window_load`, `depthwise_window_row`), with
tap-major weights for whole channel blocks. The OUT_W outputs are OUT_W tiles (a tuple) of BLOCK_M // OUT_W
pixels each, and each goes to its own `tl.dot` with its own accumulator: pixel g * OUT_W + q of the
program is row g of tile q, so no tile is interleaved with another (a layout shuffle through shared
memory per K-step).

Offsets are int32, or int64 with INT64 (a tensor over 2^30 elements); pixel indices are int32
(kernels/common.py gives the index-width policies and why).
"""

import triton
import triton.language as tl

from tritonconv.kernels.activations import activate
from tritonconv.kernels.common import as_index, dot
from tritonconv.kernels.depthwise import depthwise_taps, depthwise_window_row, inside, window_columns, window_load


@triton.jit
def one_layout(v, OPAQUE: tl.constexpr):
    """v; with OPAQUE (on a GPU), through a copy the compiler may not duplicate (an impure inline PTX move),
    so that v is computed once, in one layout, and converted for a consumer that wants another. Without
    it, a tile both stored (in a coalescing layout) and fed to `tl.dot` (in its operand layout) had its
    whole depthwise computation, every tap's multiply-add, compiled twice, once per layout."""
    if OPAQUE:
        return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [v], dtype=v.dtype, is_pure=False,
                                         pack=32 // v.dtype.primitive_bitwidth)
    else:
        return v


@triton.jit
def separable_forward_kernel(
    x_ptr, wd_ptr, bd_ptr, wp_ptr, bp_ptr, y_ptr,
    a_ptr, z_ptr,  # with STORE_MID: the intermediate activation(t) and (STORE_Z) t, (N, K, OH, OW), else unused
    # Sizes: input (N, C, H, W), depthwise weight (K, 1, KH, KW) with K = C * MULT, pointwise weight
    # (F, K, 1, 1), output (N, F, OH, OW). F <= BLOCK_N is constexpr: the output channels' masks are then
    # constants, so the epilogue's stores keep no per-element compare and pair up neighbouring channels.
    N, H, W, OH, OW, K, F: tl.constexpr, MULT,
    # Depthwise geometry. kh/kw ranges are the live taps (kernels/conv.py's module docstring). Strides and
    # dilations are constexpr: they place the sliding window's taps.
    stride_h: tl.constexpr, stride_w: tl.constexpr, pad_h, pad_w, dil_h: tl.constexpr, dil_w: tl.constexpr,
    kh_start, kh_end, kw_start, kw_end,
    # Element strides: x and y in (N, C, H, W) order (any memory format), wd in (K, KH, KW) (the launcher
    # passes tap-major float32 weights for whole channel blocks: 1, KW * K', K' with K' a multiple of
    # BLOCK_K, so no tap converts or masks them), wp in (F, K).
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
    BLOCK_N: tl.constexpr,  # output channels: all of them (F <= BLOCK_N)
    BLOCK_K: tl.constexpr,  # intermediate (depthwise output) channels per step
    EVEN_K: tl.constexpr,   # K % BLOCK_K == 0: every step's channels exist
    TAPS_H: tl.constexpr,   # live tap counts, unrolled, or 0 for runtime loops (`depthwise_taps`)
    TAPS_W: tl.constexpr,
    OUT_W: tl.constexpr,    # neighbouring outputs per thread along a row (> 1: the sliding window, needs TAPS_W > 0)
    STORE_MID: tl.constexpr,  # also store a = activation(t) rounded, for the backward
    STORE_Z: tl.constexpr,    # ... and t itself (an activation whose derivative is not a function of a)
    DENSE_ROWS: tl.constexpr,  # OWR == OW, and y (a, z) channels_last and dense: pixel m at m * syw (smw)
    BF16_BITS: tl.constexpr,   # widen bfloat16 inputs by bit operations (kernels/depthwise.py's `widen`)
    INT64: tl.constexpr,       # 64-bit offsets (a tensor reaches 2^30 elements), else 32-bit (kernels/common.py)
    OPAQUE_MID: tl.constexpr,  # on a GPU: the stored intermediate computed once (`one_layout`)
):
    """y = pointwise(activation(depthwise(x))).

    Grid: (cdiv(N*OH*OWR, BLOCK_M),): the GEMM's rows are the output pixels, OWR per output row: OW
    rounded up to a multiple of OUT_W, so that a thread's OUT_W outputs lie in one row (those past its end
    are computed and not stored).
    """
    GROUPS: tl.constexpr = BLOCK_M // OUT_W
    OWR = tl.cdiv(OW, OUT_W) * OUT_W
    # Group g (OUT_W pixels, the first at output (n, oh, ow)) is row g of every tile q. Pixel indices are
    # int32 (the launcher keeps N*OH*OWR below 2^31): int64 division is a branchy subroutine that,
    # rematerialised in the epilogue's layout, spilled registers.
    offs_g = tl.program_id(0) * GROUPS + tl.arange(0, GROUPS)
    g_valid = offs_g < N * OH * (OWR // OUT_W)
    n_img = as_index(offs_g // (OH * (OWR // OUT_W)), INT64)
    pix = offs_g % (OH * (OWR // OUT_W))
    oh = pix // (OWR // OUT_W)
    ow = pix % (OWR // OUT_W) * OUT_W
    # Where each tile's outputs exist: output column ow + q < OW.
    if DENSE_ROWS:
        # Group g's first pixel is the (g * OUT_W)-th pixel of y (and a, z), and OW is a multiple of OUT_W:
        # offsets and masks need no division, whose per-element code in the accumulator's layout was a
        # quarter to a half of the kernel's instructions.
        # (syw is F then: written as the constant, it tells the compiler which stores may pair up.)
        y_rows = as_index(offs_g * OUT_W, INT64) * F
        mid_rows = as_index(offs_g * OUT_W, INT64) * smw
        out_ok = ()
        for q in tl.static_range(OUT_W):
            out_ok = out_ok + (g_valid,)
    else:
        y_rows = n_img * syn + as_index(oh, INT64) * syh + as_index(ow, INT64) * syw
        mid_rows = n_img * smn + as_index(oh, INT64) * smh + as_index(ow, INT64) * smw
        out_ok = ()
        for q in tl.static_range(OUT_W):
            out_ok = out_ok + (g_valid & (ow + q < OW),)
    # The depthwise window of each group starts at input (ih0, iw0).
    ih0 = (oh * stride_h - pad_h)[:, None]
    iw0 = (ow * stride_w - pad_w)[:, None]
    x_rows = x_ptr + n_img[:, None] * sxn + as_index(ih0, INT64) * sxh + as_index(iw0, INT64) * sxw
    if OUT_W > 1:
        # The window's input columns start at the first live tap's; whether each exists is the same for
        # every kernel row and channel step.
        COLUMNS: tl.constexpr = (OUT_W - 1) * stride_w + (TAPS_W - 1) * dil_w + 1
        col_ok = window_columns(iw0 + kw_start * dil_w, W, COLUMNS)
        x_rows += as_index(kw_start * dil_w, INT64) * sxw

    offs_f = tl.arange(0, BLOCK_N)
    f_valid = offs_f < F
    wp_cols = wp_ptr + as_index(offs_f, INT64)[None, :] * swpf

    # The intermediate as the unfused pair would store it: activation(t + bd) rounded to x's dtype.
    dtype = x_ptr.dtype.element_ty
    accs = ()
    for q in tl.static_range(OUT_W):
        accs = accs + (tl.zeros((GROUPS, BLOCK_N), dtype=tl.float32),)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:
            # A constant mask folds away: no channel compare per element and tap.
            k_valid = tl.full((BLOCK_K,), True, tl.int1)
        else:
            k_valid = offs_k < K
        # Intermediate channel k is the (k % MULT)-th filter of input channel k // MULT. The depthwise sums
        # start from the bias, one add fewer per output than adding it after the taps.
        x_base = x_rows + as_index(offs_k // MULT, INT64)[None, :] * sxc
        wd_cols = wd_ptr + as_index(offs_k, INT64)[None, :] * swdk
        x_valid = g_valid[:, None] & k_valid[None, :]
        if HAS_DW_BIAS:
            t = tl.broadcast_to(tl.load(bd_ptr + offs_k * sbd, mask=k_valid, other=0.0).to(tl.float32)[None, :],
                                (GROUPS, BLOCK_K))
        else:
            t = tl.zeros((GROUPS, BLOCK_K), dtype=tl.float32)
        if OUT_W > 1:
            ts = ()
            for q in tl.static_range(OUT_W):
                ts = ts + (t,)
            # One tap's weights are loaded as one [1, BLOCK_K] row (`like` = wd_cols), broadcast over the
            # pixels in registers: the K-loop's pipeline copies loads to shared memory as they are, and a
            # row broadcast to the input tile's shape was a whole tile per tap (half the copies, and the
            # shared memory that kept float32 from three stages).
            if TAPS_H > 0:
                for i in tl.static_range(TAPS_H):
                    x_row = x_base + as_index((kh_start + i) * dil_h, INT64) * sxh
                    xs = window_load(x_row, x_valid & inside(ih0 + (kh_start + i) * dil_h, H), col_ok, sxw, COLUMNS,
                                     BF16_BITS)
                    ts = depthwise_window_row(ts, xs, wd_cols + (kh_start + i) * swdh + kw_start * swdw, wd_cols,
                                              swdw, stride_w, dil_w, TAPS_W, OUT_W, 1, 0, TAPS_W)
            else:
                for kh in range(kh_start, kh_end):
                    x_row = x_base + as_index(kh * dil_h, INT64) * sxh
                    xs = window_load(x_row, x_valid & inside(ih0 + kh * dil_h, H), col_ok, sxw, COLUMNS, BF16_BITS)
                    ts = depthwise_window_row(ts, xs, wd_cols + kh * swdh + kw_start * swdw, wd_cols, swdw, stride_w,
                                              dil_w, TAPS_W, OUT_W, 1, 0, TAPS_W)
        else:
            ts = (depthwise_taps(t, x_base, x_valid, ih0, iw0, wd_cols, k_valid[None, :], H, W, sxh, sxw, swdh,
                                 swdw, dil_h, dil_w, kh_start, kh_end, kw_start, kw_end, TAPS_H, TAPS_W),)
        b = tl.load(wp_cols + as_index(offs_k, INT64)[:, None] * swpk, mask=k_valid[:, None] & f_valid[None, :],
                    other=0.0)
        stepped = ()
        for q in tl.static_range(OUT_W):
            a = activate(ts[q], ACTIVATION).to(dtype)
            if not EVEN_K:
                # Channels k >= K met unset weights (the window's loads are unmasked): zero, not NaN, for
                # their zero pointwise weights.
                a = tl.where(k_valid[None, :], a, 0.0)
            a = one_layout(a, STORE_MID and OPAQUE_MID)
            if STORE_MID:
                mid_offs = mid_rows[:, None] + q * smw + as_index(offs_k, INT64)[None, :] * smc
                mid_mask = out_ok[q][:, None] & k_valid[None, :]
                tl.store(a_ptr + mid_offs, a, mask=mid_mask)
                if STORE_Z:
                    tl.store(z_ptr + mid_offs, ts[q].to(dtype), mask=mid_mask)
            stepped = stepped + (dot(a, b, accs[q], DOT_PRECISION, UPCAST),)
        accs = stepped

    if HAS_PW_BIAS:
        bias = tl.load(bp_ptr + offs_f * sbp, mask=f_valid, other=0.0).to(tl.float32)[None, :]
    for q in tl.static_range(OUT_W):
        acc = accs[q]
        if HAS_PW_BIAS:
            acc += bias
        # On dense rows syw == F, written as the constant: tile q then starts q * F elements on at a known
        # alignment, so neighbouring channels' stores pair up (a runtime syw not a multiple of 16, as F = 24,
        # left the tiles past the first with one store per element).
        y_offs = y_rows[:, None] + q * (F if DENSE_ROWS else syw) + as_index(offs_f, INT64)[None, :] * syc
        tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty),
                 mask=out_ok[q][:, None] & f_valid[None, :])
