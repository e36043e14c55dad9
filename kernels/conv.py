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
    x_rows = n_img * sxn + as_index(group * C_PER_GROUP, INT64) * sxc

    # Column f of the GEMM is output channel group*F_g + f.
    offs_f = as_index(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INT64)
    f_valid = offs_f < F_PER_GROUP
    w_cols = (group * F_PER_GROUP + offs_f) * swf

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in range(kh_start, kh_end):
        ih = ih0 + kh * dil_h
        row_valid = m_valid & (ih >= 0) & (ih < H)
        for kw in range(kw_start, kw_end):
            iw = iw0 + kw * dil_w
            pixel_valid = row_valid & (iw >= 0) & (iw < W)
            # A tap that reads only padding for this whole tile adds nothing: skip its loads and dots.
            if tl.max(pixel_valid.to(tl.int32), axis=0) > 0:
                x_tap = x_rows + ih * sxh + iw * sxw
                w_tap = w_cols + kh * swh + kw * sww
                for c0 in range(0, C_PER_GROUP, BLOCK_K):
                    offs_c = as_index(c0 + tl.arange(0, BLOCK_K), INT64)
                    c_valid = offs_c < C_PER_GROUP
                    a = tl.load(x_ptr + x_tap[:, None] + offs_c[None, :] * sxc,
                                mask=pixel_valid[:, None] & c_valid[None, :], other=0.0)
                    b = tl.load(w_ptr + w_tap[None, :] + offs_c[:, None] * swc,
                                mask=c_valid[:, None] & f_valid[None, :], other=0.0)
                    acc = dot(a, b, acc, DOT_PRECISION, UPCAST)

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

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in range(kh_start, kh_end):
        oh, oh_valid = inverse_stride(ih + pad_h - kh * dil_h, stride_h, OH)
        row_valid = m_valid & oh_valid
        for kw in range(kw_start, kw_end):
            ow, ow_valid = inverse_stride(iw + pad_w - kw * dil_w, stride_w, OW)
            pixel_valid = row_valid & ow_valid
            if tl.max(pixel_valid.to(tl.int32), axis=0) > 0:
                dy_tap = dy_rows + oh * syh + ow * syw
                w_tap = w_cols + kh * swh + kw * sww
                for f0 in range(0, F_PER_GROUP, BLOCK_K):
                    offs_f = as_index(f0 + tl.arange(0, BLOCK_K), INT64)
                    f_valid = offs_f < F_PER_GROUP
                    a = tl.load(dy_ptr + dy_tap[:, None] + offs_f[None, :] * syc,
                                mask=pixel_valid[:, None] & f_valid[None, :], other=0.0)
                    b = tl.load(w_ptr + w_tap[None, :] + offs_f[:, None] * swf,
                                mask=f_valid[:, None] & c_valid[None, :], other=0.0)
                    # Rows this tap does not reach keep acc as it was: their dy reads as 0, but 0 * w is
                    # NaN for a non-finite weight, which torch never multiplies there.
                    acc = tl.where(pixel_valid[:, None], dot(a, b, acc, DOT_PRECISION, UPCAST), acc)

    dx_offs = (n_img * sxn + ih * sxh + iw * sxw)[:, None] + (group * C_PER_GROUP + offs_c)[None, :] * sxc
    tl.store(dx_ptr + dx_offs, acc.to(dx_ptr.dtype.element_ty), mask=m_valid[:, None] & c_valid[None, :])


@triton.jit
def conv2d_weight_grad_kernel(
    x_ptr, dy_ptr, dw_ptr,
    # Sizes: input (N, C, H, W), weight (F, C_g, KH, KW), output (N, F, OH, OW).
    N, H, W, OH, OW, C_PER_GROUP, F_PER_GROUP, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # Element strides of x and dy in (N, C, H, W) order; dw is a contiguous float32 (F, C_g, KH, KW).
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    SPLIT_K: tl.constexpr,  # programs that share one dw tile's reduction, summed with atomics
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
    SPLIT_K programs each reduce one slice and add into the float32 result with atomics; with
    SPLIT_K == 1 the result is stored directly. Grid: (tiles * SPLIT_K, KH*KW, groups), the caller
    zero-fills dw when SPLIT_K > 1.
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
    dy_chan = (group * F_PER_GROUP + offs_f) * syc
    x_chan = (group * C_PER_GROUP + offs_c) * sxc

    P = N * OH * OW
    # Each split reduces a contiguous run of whole BLOCK_K steps.
    steps = tl.cdiv(P, BLOCK_K)
    steps_per_split = tl.cdiv(steps, SPLIT_K)
    p_begin = split * steps_per_split * BLOCK_K
    p_end = min(p_begin + steps_per_split * BLOCK_K, P)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for p0 in range(p_begin, p_end, BLOCK_K):
        offs_p = as_index(p0 + tl.arange(0, BLOCK_K), INT64)
        p_valid = offs_p < p_end
        n_img = offs_p // (OH * OW)
        pix = offs_p % (OH * OW)
        oh = pix // OW
        ow = pix % OW
        ih = oh * stride_h - pad_h + kh * dil_h
        iw = ow * stride_w - pad_w + kw * dil_w
        x_valid = p_valid & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(dy_ptr + dy_chan[:, None] + (n_img * syn + oh * syh + ow * syw)[None, :],
                    mask=f_valid[:, None] & p_valid[None, :], other=0.0)
        b = tl.load(x_ptr + x_chan[None, :] + (n_img * sxn + ih * sxh + iw * sxw)[:, None],
                    mask=x_valid[:, None] & c_valid[None, :], other=0.0)
        acc = dot(a, b, acc, DOT_PRECISION, UPCAST)

    # dw is contiguous (F, C_g, KH, KW): element (f, c, kh, kw) sits at ((f*C_g + c)*KH*KW + tap).
    KHKW = tl.num_programs(1)
    dw_offs = ((group * F_PER_GROUP + offs_f)[:, None] * C_PER_GROUP + offs_c[None, :]) * KHKW + tap
    mask = f_valid[:, None] & c_valid[None, :]
    if SPLIT_K == 1:
        tl.store(dw_ptr + dw_offs, acc, mask=mask)
    else:
        tl.atomic_add(dw_ptr + dw_offs, acc, mask=mask)
