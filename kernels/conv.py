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
    HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    INT64: tl.constexpr,    # 64-bit offsets (see module docstring)
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

    # Row m of the GEMM is output pixel (n, oh, ow); its window starts at (ih0, iw0) in the input.
    offs_m = as_index(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INT64)
    m_valid = offs_m < M
    n_img = offs_m // (OH * OW)
    pix = offs_m % (OH * OW)
    oh = pix // OW
    ow = pix % OW
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    # Where row m's window starts in x; a tap adds one scalar offset to it.
    x_rows = n_img * sxn + as_index(group * C_PER_GROUP, INT64) * sxc + ih0 * sxh + iw0 * sxw

    # Column f of the GEMM is output channel group*F_g + f.
    offs_f = as_index(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INT64)
    f_valid = offs_f < F_PER_GROUP
    w_cols = (group * F_PER_GROUP + offs_f) * swf

    # The taps some row of this tile reads real input with (a superset when the tile spans images): output
    # row oh reads input row oh*sh - ph + kh*dh, which lies in [0, H) for kh*dh in [ph - oh*sh, H-1+ph - oh*sh].
    kh_lo, kh_hi = tile_taps(pad_h - tl.max(oh, axis=0) * stride_h, H - 1 + pad_h - tl.min(oh, axis=0) * stride_h,
                             dil_h, kh_start, kh_end)
    kw_lo, kw_hi = tile_taps(pad_w - tl.max(ow, axis=0) * stride_w, W - 1 + pad_w - tl.min(ow, axis=0) * stride_w,
                             dil_w, kw_start, kw_end)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One pipelined reduction over (tap, channel block), channel blocks fastest, so the loads of the next
    # tap overlap this tap's MMAs; the position advances by increments, with no division per step.
    kh, kw, c0 = kh_lo, kw_lo, tl.zeros((), dtype=tl.int32)
    for _ in range(0, (kh_hi - kh_lo) * (kw_hi - kw_lo) * tl.cdiv(C_PER_GROUP, BLOCK_K)):
        ih = ih0 + kh * dil_h
        iw = iw0 + kw * dil_w
        pixel_valid = m_valid & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        offs_c = as_index(c0 + tl.arange(0, BLOCK_K), INT64)
        c_valid = offs_c < C_PER_GROUP
        a = tl.load(x_ptr + (x_rows + (kh * dil_h * sxh + kw * dil_w * sxw))[:, None] + offs_c[None, :] * sxc,
                    mask=pixel_valid[:, None] & c_valid[None, :], other=0.0)
        b = tl.load(w_ptr + (w_cols + kh * swh + kw * sww)[None, :] + offs_c[:, None] * swc,
                    mask=c_valid[:, None] & f_valid[None, :], other=0.0)
        acc = dot(a, b, acc, DOT_PRECISION, UPCAST)
        kh, kw, c0 = next_step(kh, kw, c0, kw_lo, kw_hi, C_PER_GROUP, BLOCK_K)

    if HAS_BIAS:
        bias = tl.load(bias_ptr + (group * F_PER_GROUP + offs_f) * sb, mask=f_valid, other=0.0)
        acc += bias.to(tl.float32)[None, :]

    y_offs = (n_img * syn + oh * syh + ow * syw)[:, None] + (group * F_PER_GROUP + offs_f)[None, :] * syc
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=m_valid[:, None] & f_valid[None, :])


@triton.jit
def conv2d_input_grad_kernel(
    dy_ptr, w_ptr, dx_ptr,
    # Sizes: input (N, C, H, W), weight (F, C_g, KH, KW), output (N, F, OH, OW).
    N, H, W, OH, OW, C_PER_GROUP, F_PER_GROUP,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    kh_start, kh_end, kw_start, kw_end,
    # Element strides of dy, w and dx, in (N/F, C, H, W) order.
    syn, syc, syh, syw,
    swf, swc, swh, sww,
    sxn, sxc, sxh, sxw,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    INT64: tl.constexpr,    # 64-bit offsets (see module docstring)
    BLOCK_M: tl.constexpr,  # input pixels (n, ih, iw) per program
    BLOCK_N: tl.constexpr,  # input channels per program
    BLOCK_K: tl.constexpr,  # output channels per step of the reduction, for one tap
    GROUP_M: tl.constexpr,
):
    """Input gradient as an implicit GEMM: [N*H*W, F_g*KH*KW] x [F_g*KH*KW, C_g] per group.

        dx[n, c, ih, iw] = sum_{f, kh, kw} dy[n, f, oh, ow] * w[f, c, kh, kw]
        where oh = (ih + ph - kh*dh) / sh exactly (likewise ow), and 0 <= oh < OH.

    A tap contributes to input pixel ih only when ih + ph - kh*dh is a non-negative multiple of the
    stride; the others are masked. Grid: (cdiv(N*H*W, BLOCK_M) * cdiv(C_g, BLOCK_N), groups).
    """
    group = tl.program_id(1)
    M = N * H * W
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(C_PER_GROUP, BLOCK_N), GROUP_M)

    offs_m = as_index(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INT64)
    m_valid = offs_m < M
    n_img = offs_m // (H * W)
    pix = offs_m % (H * W)
    ih = pix // W
    iw = pix % W
    dy_rows = n_img * syn + as_index(group * F_PER_GROUP, INT64) * syc

    offs_c = as_index(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INT64)
    c_valid = offs_c < C_PER_GROUP
    w_cols = as_index(group * F_PER_GROUP, INT64) * swf + offs_c * swc

    # The taps that reach an output row from some input row of this tile (a superset when the tile spans
    # images): input row ih is tap kh of output row (ih + ph - kh*dh) / sh, which lies in [0, OH) for
    # kh*dh in [ih + ph - (OH-1)*sh, ih + ph]. Whether the division is exact is masked per row.
    kh_lo, kh_hi = tile_taps(tl.min(ih, axis=0) + pad_h - (OH - 1) * stride_h, tl.max(ih, axis=0) + pad_h,
                             dil_h, kh_start, kh_end)
    kw_lo, kw_hi = tile_taps(tl.min(iw, axis=0) + pad_w - (OW - 1) * stride_w, tl.max(iw, axis=0) + pad_w,
                             dil_w, kw_start, kw_end)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One pipelined reduction over (tap, output-channel block), as in the forward.
    kh, kw, f0 = kh_lo, kw_lo, tl.zeros((), dtype=tl.int32)
    for _ in range(0, (kh_hi - kh_lo) * (kw_hi - kw_lo) * tl.cdiv(F_PER_GROUP, BLOCK_K)):
        oh, oh_valid = inverse_stride(ih + pad_h - kh * dil_h, stride_h, OH)
        ow, ow_valid = inverse_stride(iw + pad_w - kw * dil_w, stride_w, OW)
        pixel_valid = m_valid & oh_valid & ow_valid
        offs_f = as_index(f0 + tl.arange(0, BLOCK_K), INT64)
        f_valid = offs_f < F_PER_GROUP
        a = tl.load(dy_ptr + (dy_rows + oh * syh + ow * syw)[:, None] + offs_f[None, :] * syc,
                    mask=pixel_valid[:, None] & f_valid[None, :], other=0.0)
        b = tl.load(w_ptr + (w_cols + kh * swh + kw * sww)[None, :] + offs_f[:, None] * swf,
                    mask=f_valid[:, None] & c_valid[None, :], other=0.0)
        # Rows this tap does not reach keep acc as it was: their dy reads as 0, but 0 * w is NaN for a
        # non-finite weight, which torch never multiplies there.
        acc = tl.where(pixel_valid[:, None], dot(a, b, acc, DOT_PRECISION, UPCAST), acc)
        kh, kw, f0 = next_step(kh, kw, f0, kw_lo, kw_hi, F_PER_GROUP, BLOCK_K)

    dx_offs = (n_img * sxn + ih * sxh + iw * sxw)[:, None] + (group * C_PER_GROUP + offs_c)[None, :] * sxc
    tl.store(dx_ptr + dx_offs, acc.to(dx_ptr.dtype.element_ty), mask=m_valid[:, None] & c_valid[None, :])


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
    p_end = min(p_begin + steps_per_split * BLOCK_K, P)

    # Output row oh reads input row oh*sh - ph + kh*dh, inside [0, H) for oh in [oh_lo, oh_hi); the
    # same for columns. Computed once, so a step only compares coordinates with bounds: one unsigned
    # comparison of oh - oh_lo with the span tests both ends.
    oh_lo = (max(pad_h - kh * dil_h, 0) + stride_h - 1) // stride_h
    last_h = H - 1 + pad_h - kh * dil_h
    oh_hi = tl.where(last_h >= 0, last_h // stride_h + 1, 0)
    ow_lo = (max(pad_w - kw * dil_w, 0) + stride_w - 1) // stride_w
    last_w = W - 1 + pad_w - kw * dil_w
    ow_hi = tl.where(last_w >= 0, last_w // stride_w + 1, 0)
    oh_span = max(oh_hi - oh_lo, 0).to(tl.uint32)
    ow_span = max(ow_hi - ow_lo, 0).to(tl.uint32)

    # The step's pixels as (n, oh, ow), divided out once here and then advanced by BLOCK_K pixels per
    # step with no division: BLOCK_K = n_step*OH*OW + oh_step*OW + ow_step, and since ow_step < OW and
    # oh_step < OH each coordinate carries at most once into the next. The tap's offset in x is added
    # to the base pointer once. (An x offset advanced by the same carries would save two multiplies per
    # pixel, but a loop-carried sum loses the divisibility of the strides and the loads go scalar.)
    offs_p = as_index(p_begin + tl.arange(0, BLOCK_K), INT64)
    n_img = offs_p // (OH * OW)
    oh = (offs_p % (OH * OW) // OW).to(tl.int32)  # coordinates stay int32 (their products widen)
    ow = (offs_p % OW).to(tl.int32)
    n_step = BLOCK_K // (OH * OW)
    oh_step = BLOCK_K % (OH * OW) // OW
    ow_step = BLOCK_K % OW
    sxr = as_index(stride_h, INT64) * sxh  # x offset from output row to output row
    sxq = as_index(stride_w, INT64) * sxw  # and from output column to output column
    x_tap = x_ptr + as_index(group * C_PER_GROUP, INT64) * sxc + as_index(kh * dil_h - pad_h, INT64) * sxh \
        + as_index(kw * dil_w - pad_w, INT64) * sxw
    x_chan = offs_c * sxc
    dy_chan = (group * F_PER_GROUP + offs_f) * syc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(p_begin, p_end, BLOCK_K):
        p_valid = offs_p < p_end
        x_valid = p_valid & ((oh - oh_lo).to(tl.uint32, bitcast=True) < oh_span) \
            & ((ow - ow_lo).to(tl.uint32, bitcast=True) < ow_span)
        a = tl.load(dy_ptr + dy_chan[:, None] + (offs_p * syp)[None, :], mask=f_valid[:, None] & p_valid[None, :],
                    other=0.0)
        b = tl.load(x_tap + (n_img * sxn + oh * sxr + ow * sxq)[:, None] + x_chan[None, :],
                    mask=x_valid[:, None] & c_valid[None, :], other=0.0)
        acc = dot(a, b, acc, DOT_PRECISION, UPCAST)
        offs_p += BLOCK_K
        ow += ow_step
        ow_carry = ow >= OW
        ow = tl.where(ow_carry, ow - OW, ow)
        oh += oh_step + ow_carry.to(oh.dtype)
        oh_carry = oh >= OH
        oh = tl.where(oh_carry, oh - OH, oh)
        n_img += n_step + oh_carry.to(n_img.dtype)

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
        tl.atomic_add(dw_ptr + dw_offs, acc, mask=mask)
