"""Implicit-GEMM convolution kernels: forward, input gradient and weight gradient.

A 2-D convolution is a matrix product once the input is viewed as im2col rows, but we never build that
matrix: every kernel computes im2col addresses on the fly. Stride, padding and dilation live only in the
address arithmetic, and the layout (NCHW or channels_last) only in the strides passed in, so one kernel
serves every case.

Shared notation (per group g; C_g = C / groups, F_g = F / groups):

    y[n, g*F_g + f, oh, ow] = sum_{c, kh, kw} x[n, g*C_g + c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]
                                               * w[g*F_g + f, c, kh, kw]

Taps whose input row (or column) is padding for *every* output position are cut away on the host by
passing the live tap range [kh_start, kh_end) x [kw_start, kw_end); taps that are padding for one
program's tile only are skipped at run time. At DeepLab's ASPP rates (24, 36) on small maps most taps are
padding, so this is where dilated convolution saves its work.

Offsets are int32 unless INT64 is set: the launcher sets it when any operand reaches 2^30 elements
into its storage, so a tensor over 2^31 elements (or a strided view reaching that far) indexes
correctly (kernels/common.py says why the common case stays 32-bit).

The launchers hand these kernels channels_last operands: the channel (reduction) axis is then
contiguous, so operand tiles load as 16-byte vectors that the compiler can pipeline through shared
memory; in NCHW the gathered pixels have no contiguous axis and every load would be scalar.
"""

import triton
import triton.language as tl

from tritonconv.kernels.common import as_index, dot, grouped_tile, inverse_stride


@triton.jit
def tile_taps(lo, hi, dil, k_start, k_end):
    """The taps [k_lo, k_hi) of the live range [k_start, k_end) with k*dil in [lo, hi]: those that some
    position of a tile reaches inside the tensor, given the bounds' union over the tile's positions.
    Every other tap reads only padding for the tile, so its loop steps are not run at all."""
    k_lo = max(k_start, (max(lo, 0) + dil - 1) // dil)
    k_hi = min(k_end, tl.where(hi >= 0, hi // dil + 1, 0))
    return k_lo, max(k_hi, k_lo)


@triton.jit
def next_step(kh, kw, c0, kw_lo, kw_hi, C, BLOCK_K: tl.constexpr):
    """The (kh, kw, channel block) after (kh, kw, c0) in a reduction that walks the channel blocks of a
    tap, then the taps of a row kw_lo..kw_hi-1, then the rows: increments and selects, no division."""
    c0 += BLOCK_K
    next_tap = c0 >= C
    c0 = tl.where(next_tap, 0, c0)
    kw = tl.where(next_tap, kw + 1, kw)
    next_row = kw >= kw_hi
    return tl.where(next_row, kh + 1, kh), tl.where(next_row, kw_lo, kw), c0


@triton.jit
def inside(coord, size):
    """coord in [0, size), as one unsigned comparison: a negative coord wraps above any int32 size."""
    return coord.to(tl.uint32) < size.to(tl.uint32)


@triton.jit
def row_tap_bits(a_h, a_w, A_H, A_W, taps, TAPS_H: tl.constexpr, TAPS_W: tl.constexpr):
    """Each row's word for `tap_reduction` (when TAPS_H, TAPS_W are not 0): bit ti*TAPS_W + tj says the
    row reads inside the A_H x A_W plane at tap (i_lo + ti, j_lo + tj) of `taps` (as there), for the
    TAPS_H x TAPS_W <= 32 taps from there on (a superset of those visited). Unrolled, with no loop: the
    words stay elementwise functions of the rows, which the compiler lays out as the loads' masks need
    (a loop-carried word would be moved through shared memory at every step)."""
    i_lo, i_hi, j_lo, j_hi, kh0, kh_step, oh0, oh_step, kw0, kw_step, ow0, ow_step = taps
    w_bits = tl.zeros_like(a_w)
    for tj in tl.static_range(TAPS_W):
        w_bits |= tl.where(inside(a_w + ow0 + (j_lo + tj) * ow_step, A_W), 1, 0) << tj
    row_taps = tl.zeros_like(a_h)
    for ti in tl.static_range(TAPS_H):
        row_taps |= tl.where(inside(a_h + oh0 + (i_lo + ti) * oh_step, A_H), w_bits, 0) << (ti * TAPS_W)
    return row_taps


@triton.jit
def tap_reduction(acc, a_ptr, a_offs, a_h, a_w, row_taps, A_H, A_W, sah, saw, sak,
                  b_ptr, b_offs, b_n_in, sbh, sbw, sbk, K, taps, b_desc, b_row,
                  EXACT: tl.constexpr, EVEN_K: tl.constexpr, TAPS_H: tl.constexpr, TAPS_W: tl.constexpr,
                  DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, INT64: tl.constexpr,
                  B_DESCRIPTOR: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + the implicit GEMM of one tile: one pipelined loop over (tap, K block), K blocks fastest.

    taps = (i_lo, i_hi, j_lo, j_hi, kh0, kh_step, oh0, oh_step, kw0, kw_step, ow0, ow_step): the loop visits
    taps (i, j) in [i_lo, i_hi) x [j_lo, j_hi); tap (i, j) is kernel tap (kh0 + i*kh_step, kw0 + j*kw_step)
    and moves the gathered operand A by (oh0 + i*oh_step, ow0 + j*ow_step) positions. Row m of A reads position (a_h[m] + that, a_w[m] + that)
    of an A_H x A_W plane, at a_ptr + a_offs[m, k] + the position's offset (strides sah, saw, sak): a_offs
    holds each row's offset and each column's channel, so a step adds one scalar to it. Rows outside the
    plane read 0. B reads b_ptr + b_offs[k, n] + the tap's and K block's offset (strides sbh, sbw, sbk),
    its columns masked by b_n_in (a constant True, which compiles away, where a caller needs no mask).
    With B_DESCRIPTOR, B is instead the transpose of the (BLOCK_N, BLOCK_K) box of the tensor descriptor
    b_desc (a TMA load on sm_90) at row b_row and column the tap's and K block's offset: the forward's
    weight as one K-major (F, KH*KW*C_g) matrix, whose strides sbh, sbw, sbk then are KW*C_g, C_g, 1.

    Every position and offset but the scalar one is loop-invariant, so a step costs one address add per
    16-byte vector and, per row, one bit test of its row_taps word (`row_tap_bits`) when TAPS_H, TAPS_W
    are set, else two unsigned comparisons; K blocks need no mask when EVEN_K (K is a multiple of BLOCK_K).
    With EXACT, rows outside the plane also keep acc unchanged instead of adding 0 * B (NaN for a non-finite
    B): that waits for every MMA, so only a rare recomputation uses it.
    """
    i_lo, i_hi, j_lo, j_hi, kh0, kh_step, oh0, oh_step, kw0, kw_step, ow0, ow_step = taps
    i, j, k0 = i_lo, j_lo, tl.zeros((), dtype=tl.int32)
    for _ in tl.range(0, (i_hi - i_lo) * (j_hi - j_lo) * tl.cdiv(K, BLOCK_K), num_stages=1 if EXACT else None):
        dh = oh0 + i * oh_step
        dw = ow0 + j * ow_step
        if TAPS_H * TAPS_W:
            rows_in = ((row_taps & (1 << ((i - i_lo) * TAPS_W + j - j_lo))) != 0)[:, None]
        else:
            rows_in = (inside(a_h + dh, A_H) & inside(a_w + dw, A_W))[:, None]
        a_at = a_ptr + (as_index(dh, INT64) * sah + as_index(dw, INT64) * saw + as_index(k0, INT64) * sak)
        b_step = (as_index(kh0 + i * kh_step, INT64) * sbh + as_index(kw0 + j * kw_step, INT64) * sbw
                  + as_index(k0, INT64) * sbk)
        b_at = b_ptr + b_step
        k_in = (k0 + tl.arange(0, BLOCK_K) < K) | EVEN_K  # constant True when EVEN_K: no mask is compiled
        a = tl.load(a_at + a_offs, mask=rows_in & k_in[None, :], other=0.0)
        if B_DESCRIPTOR:
            b = tl.trans(b_desc.load([b_row, b_step.to(tl.int32)]))
            if not EVEN_K:
                # The box reads the next tap's channels past K (zeros past the matrix): A is 0 there, but 0
                # times a non-finite weight is not, so a ragged K block selects 0 instead.
                b = tl.where(k_in[:, None], b, tl.zeros_like(b))
        else:
            b = tl.load(b_at + b_offs, mask=k_in[:, None] & b_n_in[None, :], other=0.0)
        if EXACT:
            acc = tl.where(rows_in, dot(a, b, acc, DOT_PRECISION, UPCAST), acc)
        else:
            acc = dot(a, b, acc, DOT_PRECISION, UPCAST)
        i, j, k0 = next_step(i, j, k0, j_lo, j_hi, K, BLOCK_K)
    return acc


@triton.jit
def conv2d_forward_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    # Sizes: input (N, C, H, W), weight (F, C_g, KH, KW), output (N, F, OH, OW).
    N, H, W, OH, OW, C_PER_GROUP, F_PER_GROUP,
    # Geometry. kh/kw ranges are the live taps (see module docstring).
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    kh_start, kh_end, kw_start, kw_end,
    # Element strides of x, w and y, in (N/F, C, H, W) order; any memory format.
    sxn, sxc, sxh, sxw,
    swf, swc, swh, sww,
    syn, syc, syh, syw,
    sb,     # element stride of bias (a slice or an expanded view need not be contiguous)
    # With B_DESCRIPTOR: a host tensor descriptor of w as a K-major (F, KH*KW*C_g) matrix with boxes of
    # (BLOCK_N, BLOCK_K), whose B tiles then load through it (TMA on sm_90; see tap_reduction), else None.
    w_desc,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,   # C_g is a multiple of BLOCK_K: no channel masks
    TAPS_H: tl.constexpr,   # live tap rows and columns when at most 32 taps (row masks are bit tests,
    TAPS_W: tl.constexpr,   # see tap_reduction), else 0
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    INT64: tl.constexpr,    # 64-bit offsets (see module docstring)
    B_DESCRIPTOR: tl.constexpr,  # load the weight tiles through w_desc
    BLOCK_M: tl.constexpr,  # output pixels (n, oh, ow) per program: the GEMM's M
    BLOCK_N: tl.constexpr,  # output channels per program: the GEMM's N
    BLOCK_K: tl.constexpr,  # input channels per step of the reduction, for one tap
    GROUP_M: tl.constexpr,  # M-tiles that share a column of weights, for L2 reuse
):
    """Forward convolution as an implicit GEMM: [N*OH*OW, C_g*KH*KW] x [C_g*KH*KW, F_g] per group.

    Grid: (cdiv(N*OH*OW, BLOCK_M) * cdiv(F_g, BLOCK_N), groups).
    """
    group = tl.program_id(1)
    M = N * OH * OW
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(F_PER_GROUP, BLOCK_N), GROUP_M)

    # Row m of the GEMM is output pixel (n, oh, ow); its window starts at (ih0, iw0) in the input. Rows past
    # the end repeat the last pixel (and columns the last channel), so loads need no row or column mask:
    # what they compute is never stored.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m = as_index(tl.minimum(offs_m, M - 1), INT64)
    n_img = m // (OH * OW)
    oh = m % (OH * OW) // OW
    ow = m % OW
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    offs_f = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    f = as_index(group * F_PER_GROUP + tl.minimum(offs_f, F_PER_GROUP - 1), INT64)
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = n_img * sxn + as_index(group * C_PER_GROUP, INT64) * sxc + ih0 * sxh + iw0 * sxw
    a_offs = x_rows[:, None] + offs_k[None, :] * sxc
    b_offs = (f * swf)[None, :] + offs_k[:, None] * swc

    # The taps some row of this tile reads real input with (a superset when the tile spans images): output
    # row oh reads input row oh*sh - ph + kh*dh, which lies in [0, H) for kh*dh in [ph - oh*sh, H-1+ph - oh*sh].
    kh_lo, kh_hi = tile_taps(-tl.max(ih0, axis=0), H - 1 - tl.min(ih0, axis=0), dil_h, kh_start, kh_end)
    kw_lo, kw_hi = tile_taps(-tl.max(iw0, axis=0), W - 1 - tl.min(iw0, axis=0), dil_w, kw_start, kw_end)
    taps = (kh_lo, kh_hi, kw_lo, kw_hi, 0, 1, 0, dil_h, 0, 1, 0, dil_w)
    acc = tap_reduction(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), x_ptr, a_offs, ih0, iw0,
                        row_tap_bits(ih0, iw0, H, W, taps, TAPS_H, TAPS_W), H, W, sxh, sxw, sxc,
                        w_ptr, b_offs, tl.full((BLOCK_N,), True, tl.int1), swh, sww, swc, C_PER_GROUP, taps,
                        w_desc, group * F_PER_GROUP + pid_n * BLOCK_N,
                        False, EVEN_K, TAPS_H, TAPS_W, DOT_PRECISION, UPCAST, INT64, B_DESCRIPTOR, BLOCK_K)

    offs_f = as_index(offs_f, INT64)
    f_valid = offs_f < F_PER_GROUP
    if HAS_BIAS:
        bias = tl.load(bias_ptr + (group * F_PER_GROUP + offs_f) * sb, mask=f_valid, other=0.0)
        acc += bias.to(tl.float32)[None, :]

    y_offs = (n_img * syn + oh * syh + ow * syw)[:, None] + (group * F_PER_GROUP + offs_f)[None, :] * syc
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & f_valid[None, :])


@triton.jit
def phase_taps(r, pad, dil, stride, gcd, inv, k_start, k_end):
    """The live taps k in [k_start, k_end) that reach input rows ih = r (mod stride), from the last down:
    (k_last, count, step, o_last, o_step): tap k_last - i*step (i < count) reaches output row
    ih // stride + o_last + i*o_step.

    Input row ih is tap k of output row (ih + pad - k*dil) / stride when the division is exact, so k
    qualifies when k*dil = r + pad (mod stride): with g = gcd(dil, stride), exactly when g divides r + pad
    and then k = (r + pad)/g * inv (mod stride/g), inv being dil/g's inverse modulo stride/g (host
    arithmetic). Such taps are stride/g apart, and each moves the output row by dil/g.
    """
    step = stride // gcd
    k_any = ((r + pad) // gcd * inv) % step
    k_last = k_end - 1 - ((k_end - 1 - k_any) % step + step) % step
    count = tl.where(((r + pad) % gcd == 0) & (k_last >= k_start), (k_last - k_start) // step + 1, 0)
    return k_last, count, step, (r + pad - k_last * dil) // stride, dil // gcd


@triton.jit
def conv2d_input_grad_kernel(
    dy_ptr, w_ptr, dx_ptr,
    # Sizes: input (N, C, H, W), weight (F, C_g, KH, KW), output (N, F, OH, OW).
    N, H, W, OH, OW, C_PER_GROUP, F_PER_GROUP,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    kh_start, kh_end, kw_start, kw_end,
    # gcd(dilation, stride) and (dilation/gcd)^-1 mod stride/gcd, per axis (see phase_taps).
    gcd_h, gcd_w, inv_h, inv_w,
    # Element strides of dy, w and dx, in (N/F, C, H, W) order.
    syn, syc, syh, syw,
    swf, swc, swh, sww,
    sxn, sxc, sxh, sxw,
    EVEN_K: tl.constexpr,   # F_g is a multiple of BLOCK_K: no output-channel masks
    EVEN_N: tl.constexpr,   # C_g is a multiple of BLOCK_N: no input-channel masks on w
    TAPS_H: tl.constexpr,   # live tap rows and columns when at most 32 taps (row masks are bit tests,
    TAPS_W: tl.constexpr,   # see tap_reduction), else 0
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    INT64: tl.constexpr,    # 64-bit offsets (see module docstring)
    BLOCK_M: tl.constexpr,  # input pixels (n, ih, iw) of one phase per program
    BLOCK_N: tl.constexpr,  # input channels per program
    BLOCK_K: tl.constexpr,  # output channels per step of the reduction, for one tap
    GROUP_M: tl.constexpr,
):
    """Input gradient as an implicit GEMM per phase: [N*H*W / (sh*sw), F_g*taps] x [F_g*taps, C_g] per group.

        dx[n, c, ih, iw] = sum_{f, kh, kw} dy[n, f, oh, ow] * w[f, c, kh, kw]
        where oh = (ih + ph - kh*dh) / sh exactly (likewise ow), and 0 <= oh < OH.

    Whether the division is exact depends only on ih's phase ih mod sh (as in CUTLASS's strided dgrad),
    so each program takes the pixels of one phase (rh, rw) and visits only the taps that reach them
    (phase_taps): a dense GEMM with no MMA work masked away. Within a phase, input row ih = q*sh + rh
    gets output row q + o for a tap that moves it by o.

    Rows whose output row lies outside dy read 0 there; torch adds nothing for them, where 0 * w would be
    NaN for a non-finite weight. A tile whose result holds a NaN is therefore computed once more with
    those rows left out exactly (`tap_reduction`'s EXACT), which costs every MMA a wait, but only there.

    Grid: (cdiv(N*cdiv(H, sh)*cdiv(W, sw), BLOCK_M) * cdiv(C_g, BLOCK_N), groups, sh*sw); programs past
    their phase's smaller tile count return at once.
    """
    group = tl.program_id(1)
    rh = tl.program_id(2) // stride_w
    rw = tl.program_id(2) % stride_w
    HQ = tl.cdiv(H - rh, stride_h)
    WQ = tl.cdiv(W - rw, stride_w)
    M = N * HQ * WQ
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(C_PER_GROUP, BLOCK_N)
    if tl.program_id(0) >= num_m * num_n:
        return
    pid_m, pid_n = grouped_tile(tl.program_id(0), num_m, num_n, GROUP_M)

    # Row m is pixel (n, q_h*sh + rh, q_w*sw + rw) of the phase; rows past the end repeat the last one, so
    # loads need no row mask (those rows are never stored).
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m = as_index(tl.minimum(offs_m, M - 1), INT64)
    n_img = m // (HQ * WQ)
    q_h = m % (HQ * WQ) // WQ
    q_w = m % WQ
    dy_rows = n_img * syn + as_index(group * F_PER_GROUP, INT64) * syc + q_h * syh + q_w * syw
    a_offs = dy_rows[:, None] + tl.arange(0, BLOCK_K)[None, :] * syc
    dx_rows = n_img * sxn + (q_h * stride_h + rh) * sxh + (q_w * stride_w + rw) * sxw

    kh_last, count_h, step_h, oh_last, oh_step = phase_taps(rh, pad_h, dil_h, stride_h, gcd_h, inv_h, kh_start, kh_end)
    kw_last, count_w, step_w, ow_last, ow_step = phase_taps(rw, pad_w, dil_w, stride_w, gcd_w, inv_w, kw_start, kw_end)
    # The phase's taps that reach dy from some row of this tile (a superset when the tile spans images):
    # row q reads output row q + o_last + i*o_step, inside [0, OH) for i*o_step in [-o_last - q, OH-1 - o_last - q].
    i_lo, i_hi = tile_taps(-oh_last - tl.max(q_h, axis=0), OH - 1 - oh_last - tl.min(q_h, axis=0), oh_step, 0, count_h)
    j_lo, j_hi = tile_taps(-ow_last - tl.max(q_w, axis=0), OW - 1 - ow_last - tl.min(q_w, axis=0), ow_step, 0, count_w)
    taps = (i_lo, i_hi, j_lo, j_hi, kh_last, -step_h, oh_last, oh_step, kw_last, -step_w, ow_last, ow_step)
    row_taps = row_tap_bits(q_h, q_w, OH, OW, taps, TAPS_H, TAPS_W)
    tile = (dy_ptr, a_offs, q_h, q_w, row_taps, w_ptr, dx_ptr, dx_rows, offs_m < M, group)
    sizes = (OH, OW, C_PER_GROUP, F_PER_GROUP)
    strides = (syh, syw, syc, swf, swc, swh, sww, sxc)
    total = input_grad_columns(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), tile, sizes, strides, taps,
                               False, EVEN_K, EVEN_N, TAPS_H, TAPS_W, DOT_PRECISION, UPCAST, INT64, BLOCK_K)
    if total != total:
        # A NaN (or inf - inf) in the tile: computed again exactly, over it (after a barrier, so that each
        # element's last store is the exact one), in parts of the columns, so that the accumulator and the
        # copy that EXACT keeps fit the registers of the whole tile's.
        tl.debug_barrier()
        EXACT_N: tl.constexpr = BLOCK_N // 4 if BLOCK_N >= 64 else BLOCK_N
        for part in tl.range(0, BLOCK_N // EXACT_N):
            input_grad_columns(pid_n * BLOCK_N + part * EXACT_N + tl.arange(0, EXACT_N), tile, sizes, strides, taps,
                               True, EVEN_K, EVEN_N, TAPS_H, TAPS_W, DOT_PRECISION, UPCAST, INT64, BLOCK_K)


@triton.jit
def input_grad_columns(offs_c, tile, sizes, strides, taps, EXACT: tl.constexpr, EVEN_K: tl.constexpr,
                       EVEN_N: tl.constexpr, TAPS_H: tl.constexpr, TAPS_W: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       UPCAST: tl.constexpr, INT64: tl.constexpr, BLOCK_K: tl.constexpr):
    """Store the input gradient of one tile's rows at input channels offs_c (conv2d_input_grad_kernel's
    tuples of arguments) and return the sum of the float32 results. Channels are w's contiguous axis:
    clamping them would cost the vector loads, so they are masked, unless C_g is a multiple of BLOCK_N."""
    dy_ptr, a_offs, q_h, q_w, row_taps, w_ptr, dx_ptr, dx_rows, rows_in, group = tile
    OH, OW, C_PER_GROUP, F_PER_GROUP = sizes
    syh, syw, syc, swf, swc, swh, sww, sxc = strides
    offs_c = as_index(offs_c, INT64)
    c_in = (offs_c < C_PER_GROUP) | EVEN_N  # constant True when EVEN_N: no mask is compiled
    b_offs = (as_index(group * F_PER_GROUP, INT64) * swf + offs_c * swc)[None, :] + tl.arange(0, BLOCK_K)[:, None] * swf
    acc = tl.zeros((a_offs.shape[0], offs_c.shape[0]), dtype=tl.float32)
    acc = tap_reduction(acc, dy_ptr, a_offs, q_h, q_w, row_taps, OH, OW, syh, syw, syc, w_ptr, b_offs, c_in, swh, sww,
                        swf, F_PER_GROUP, taps, None, 0, EXACT, EVEN_K, TAPS_H, TAPS_W, DOT_PRECISION, UPCAST, INT64,
                        False, BLOCK_K)
    dx_offs = dx_rows[:, None] + (group * C_PER_GROUP + offs_c)[None, :] * sxc
    tl.store(dx_ptr + dx_offs, acc.to(dx_ptr.dtype.element_ty), mask=rows_in[:, None] & (offs_c < C_PER_GROUP)[None, :])
    return tl.sum(tl.sum(acc, axis=1), axis=0)


@triton.jit
def conv2d_weight_grad_kernel(
    x_ptr, dy_ptr, dw_ptr,
    # Sizes: input (N, C, H, W), weight (F, C_g, KH, KW), output (N, F, OH, OW).
    N, H, W, OH, OW, C_PER_GROUP, F_PER_GROUP, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # Element strides of x in (N, C, H, W) order. dy's pixels (n, oh, ow) are evenly spaced (the launcher
    # makes them so): channel stride syc, pixel stride syp. dw is a contiguous float32 (F, C_g, KH, KW),
    # or SPLIT_K of them one after another when WORKSPACE.
    sxn, sxc, sxh, sxw,
    syc, syp,
    SPLIT_K: tl.constexpr,    # programs that share one dw tile's reduction
    WORKSPACE: tl.constexpr,  # each split stores its partial sums in its own dw, which common.split_sum_kernel
                              # adds in a fixed order (reproducible), rather than adding them with atomics
    EVEN_M: tl.constexpr,     # F_g is a multiple of BLOCK_M: no output-channel masks on dy
    EVEN_N: tl.constexpr,     # C_g is a multiple of BLOCK_N: no input-channel masks on x
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    INT64: tl.constexpr,    # 64-bit offsets (see module docstring)
    BLOCK_M: tl.constexpr,  # output channels per program
    BLOCK_N: tl.constexpr,  # input channels per program
    BLOCK_K: tl.constexpr,  # output pixels (n, oh, ow) per step of the reduction
):
    """Weight gradient, one GEMM per tap: [F_g, N*OH*OW] x [N*OH*OW, C_g].

        dw[f, c, kh, kw] = sum_{n, oh, ow} dy[n, f, oh, ow] * x[n, c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]

    The reduction runs over every output pixel, which is long (N*OH*OW) while the result is small, so
    SPLIT_K programs each reduce one slice: with atomics they add into the float32 result (which the
    caller zero-fills), with WORKSPACE each stores its own; with SPLIT_K == 1 the result is stored
    directly. Grid: (tiles * SPLIT_K, KH*KW, groups).
    """
    pid = tl.program_id(0)
    tap = tl.program_id(1)
    group = tl.program_id(2)
    kh = tap // KW
    kw = tap % KW
    split = pid % SPLIT_K
    tile = pid // SPLIT_K
    num_n = tl.cdiv(C_PER_GROUP, BLOCK_N)
    pid_m = tile // num_n
    pid_n = tile % num_n

    offs_f = as_index(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INT64)
    f_valid = offs_f < F_PER_GROUP
    offs_c = as_index(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INT64)
    c_valid = offs_c < C_PER_GROUP

    P = N * OH * OW
    # Each split reduces a contiguous run of whole BLOCK_K steps.
    steps = tl.cdiv(P, BLOCK_K)
    steps_per_split = tl.cdiv(steps, SPLIT_K)
    p_begin = split * steps_per_split * BLOCK_K
    pixels = max(min(steps_per_split * BLOCK_K, P - p_begin), 0)  # none for a split past the end

    # Output row oh reads input row oh*sh - ph + kh*dh, inside [0, H) for oh in [oh_lo, oh_hi); the
    # same for columns. Computed once, so a step only compares coordinates with bounds: the coordinates
    # are kept relative to oh_lo (ow_lo), and one unsigned comparison with the span tests both ends.
    oh_lo = (max(pad_h - kh * dil_h, 0) + stride_h - 1) // stride_h
    last_h = H - 1 + pad_h - kh * dil_h
    oh_hi = tl.where(last_h >= 0, last_h // stride_h + 1, 0)
    ow_lo = (max(pad_w - kw * dil_w, 0) + stride_w - 1) // stride_w
    last_w = W - 1 + pad_w - kw * dil_w
    ow_hi = tl.where(last_w >= 0, last_w // stride_w + 1, 0)
    oh_span = max(oh_hi - oh_lo, 0).to(tl.uint32)
    ow_span = max(ow_hi - ow_lo, 0).to(tl.uint32)

    # The step's pixels as (oh, ow) and their offset in x, divided out once here and then advanced by
    # BLOCK_K pixels per step with no division: BLOCK_K = n_step*OH*OW + oh_step*OW + ow_step, and since
    # ow_step < OW and oh_step < OH each coordinate carries at most once into the next; a carry moves the
    # offset by a fixed jump. The tap's offset in x is added to the base pointer once.
    offs_p = as_index(p_begin + tl.arange(0, BLOCK_K), INT64)
    n_img = offs_p // (OH * OW)
    # Relative to oh_lo and ow_lo (whose offsets x_tap holds), int32 (their products widen).
    oh = (offs_p % (OH * OW) // OW).to(tl.int32) - oh_lo
    ow = (offs_p % OW).to(tl.int32) - ow_lo
    n_step = BLOCK_K // (OH * OW)
    oh_step = BLOCK_K % (OH * OW) // OW
    ow_step = BLOCK_K % OW
    sxr = as_index(stride_h, INT64) * sxh  # x offset from output row to output row
    sxq = as_index(stride_w, INT64) * sxw  # and from output column to output column
    x_tap = x_ptr + as_index(group * C_PER_GROUP, INT64) * sxc + as_index(kh * dil_h - pad_h, INT64) * sxh \
        + as_index(kw * dil_w - pad_w, INT64) * sxw + oh_lo * sxr + ow_lo * sxq
    x_pix = n_img * sxn + oh * sxr + ow * sxq
    # dy's pixels are evenly spaced: a step's tile is a scalar offset from one loop-invariant tile of offsets.
    # Only the last step of the last split can be ragged: the first loop runs the whole steps with no pixel
    # mask, the second that one step, if any, masked (unpipelined: it runs in one program of SPLIT_K).
    # Channel masks are constant True (compiled away) when the channels fill whole blocks.
    x_at = (x_tap, offs_c * sxc, c_valid | EVEN_N)
    dy_at = (dy_ptr + ((group * F_PER_GROUP + offs_f) * syc)[:, None] + (tl.arange(0, BLOCK_K) * syp)[None, :],
             f_valid | EVEN_M, as_index(syp, INT64))
    bounds = (oh_span, ow_span, OH, OW, OH - oh_lo, OW - ow_lo)
    # x offset moved by a step, and by a carry into the next row or image (sxr, sxq are wide when INT64).
    moves = (oh_step, ow_step, as_index(n_step, INT64) * sxn + oh_step * sxr + ow_step * sxq, sxr - OW * sxq,
             sxn - OH * sxr)
    pixel = (p_begin, x_pix, oh, ow)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, pixels // BLOCK_K):
        acc, pixel = weight_grad_step(acc, dy_at, x_at, pixel, tl.full((BLOCK_K,), True, tl.int1), bounds, moves,
                                      DOT_PRECISION, UPCAST, BLOCK_K)
    for _ in tl.range(pixels // BLOCK_K, tl.cdiv(pixels, BLOCK_K), num_stages=1):
        acc, pixel = weight_grad_step(acc, dy_at, x_at, pixel, tl.arange(0, BLOCK_K) < pixels % BLOCK_K, bounds,
                                      moves, DOT_PRECISION, UPCAST, BLOCK_K)

    # dw is contiguous (F, C_g, KH, KW): element (f, c, kh, kw) sits at ((f*C_g + c)*KH*KW + tap).
    KHKW = tl.num_programs(1)
    dw_offs = ((group * F_PER_GROUP + offs_f)[:, None] * C_PER_GROUP + offs_c[None, :]) * KHKW + tap
    mask = f_valid[:, None] & c_valid[None, :]
    if SPLIT_K == 1:
        tl.store(dw_ptr + dw_offs, acc, mask=mask)
    elif WORKSPACE:
        # int64: SPLIT_K copies of dw may pass 2^31 elements although one does not.
        dw_size = tl.num_programs(2).to(tl.int64) * F_PER_GROUP * C_PER_GROUP * KHKW
        tl.store(dw_ptr + split * dw_size + dw_offs, acc, mask=mask)
    else:
        # Relaxed: the sum is read only after the kernel ends (acq_rel would fence every atomic).
        tl.atomic_add(dw_ptr + dw_offs, acc, mask=mask, sem="relaxed")


@triton.jit
def weight_grad_step(acc, dy_at, x_at, pixel, p_in, bounds, moves, DOT_PRECISION: tl.constexpr,
                     UPCAST: tl.constexpr, BLOCK_K: tl.constexpr):
    """One BLOCK_K-pixel step of conv2d_weight_grad_kernel (its tuples of arguments): acc + dy tile @ x tile
    over the pixels p_in (a constant True, which compiles away, for a whole step), and the pixels (first p,
    then each one's x offset, oh, ow) moved on by BLOCK_K with no division: BLOCK_K = n_step*OH*OW +
    oh_step*OW + ow_step, with ow_step < OW and oh_step < OH, so each coordinate carries at most once."""
    dy_tile, f_valid, syp = dy_at
    x_tap, x_chan, c_valid = x_at
    p0, x_pix, oh, ow = pixel
    oh_span, ow_span, OH, OW, oh_end, ow_end = bounds
    oh_step, ow_step, x_step, x_row, x_img = moves
    x_valid = p_in & (oh.to(tl.uint32, bitcast=True) < oh_span) & (ow.to(tl.uint32, bitcast=True) < ow_span)
    a = tl.load(dy_tile + p0 * syp, mask=f_valid[:, None] & p_in[None, :], other=0.0)
    b = tl.load(x_tap + x_pix[:, None] + x_chan[None, :], mask=x_valid[:, None] & c_valid[None, :], other=0.0)
    acc = dot(a, b, acc, DOT_PRECISION, UPCAST)
    # A carry is tested on the old coordinate (against a loop-invariant bound) and picks between two
    # loop-invariant moves: one select and one add per coordinate.
    ow_carry = ow >= ow_end - ow_step
    ow += tl.where(ow_carry, ow_step - OW, ow_step)
    oh += tl.where(ow_carry, oh_step + 1, oh_step)
    oh_carry = oh >= oh_end
    oh -= tl.where(oh_carry, OH, 0)
    # Products, not tl.where: the compiler keeps the strides' divisibility through them (not through a
    # select), so the loop-carried offsets still load as 16-byte vectors.
    x_pix += x_step + ow_carry.to(x_pix.dtype) * x_row + oh_carry.to(x_pix.dtype) * x_img
    return acc, (p0 + BLOCK_K, x_pix, oh, ow)
