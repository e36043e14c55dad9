"""Pointwise (1x1) convolution as a GEMM, with bias and activation in the epilogue, and its weight gradient.

A 1x1 convolution mixes channels pixel by pixel, so it is a matrix product over channels:

    y[n, f, oh, ow] = activation(bias[f] + sum_c x[n, c, oh*sh, ow*sw] * w[f, c, 0, 0])

The output pixels form the GEMM's rows (M), output channels its columns (N) and input channels its
reduction (K). The rows are cut into BATCH equal runs of ROWS pixels:
- channels_last: one GEMM [N*OH*OW, C] x [C, F] (BATCH = 1), pixels are evenly spaced rows of memory;
- NCHW: one GEMM per image, [OH*OW, C] x [C, F] (BATCH = N), whose pixels are contiguous in memory.
Either way, pixel r of run b sits at b*syn + r*syw in the output (the launcher allocates y densely), so
stores along M are provably contiguous in NCHW and vectorise. The input is read the same way (FLAT_INPUT)
when the stride is 1 and its pixels are evenly spaced; otherwise (strided 1x1 conv, views) each pixel's
(n, oh, ow) is decoded and addressed through all four strides.

The backward is two more GEMMs with no im2col arithmetic: the input gradient dx = dy . W is the forward
kernel itself, run on dy with the weight read transposed (its rows become the sampled input pixels);
the weight gradient dw = dy^T . x reduces over pixels (`pointwise_weight_grad_kernel`).

All offsets are int64, so tensors over 2^31 elements index correctly; pixel indices are int32
(kernels/common.py gives the index-width policies and why).
"""

import triton
import triton.language as tl

from tritonconv.kernels.activations import store_epilogue
from tritonconv.kernels.common import dot, known_multiple


@triton.jit
def pointwise_forward_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    z_ptr,  # pre-activation output (strides of y), written only when STORE_PRE
    # Sizes: input (N, C, H, W), weight (F, C, 1, 1), output (N, F, OH, OW).
    C, F, OH, OW,
    ROWS,  # output pixels per GEMM: OH*OW (NCHW, one GEMM per image) or N*OH*OW (channels_last)
    stride_h, stride_w,
    # Element strides of x and y in (N, C, H, W) order (any memory format; y dense); of w in (F, C).
    sxn, sxc, sxh, sxw,
    swf, swc,
    syn, syc, syh, syw,
    sb,     # element stride of bias
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,  # "none", "relu", "relu6", "silu" or "gelu" (kernels/activations.py)
    STORE_PRE: tl.constexpr,   # also store z = x @ w + bias, the activation's input, for its backward
    FLAT_INPUT: tl.constexpr,  # pixel r of run b of the input sits at b*sxn + r*sxw (stride 1, dense)
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,  # output pixels per program
    BLOCK_N: tl.constexpr,  # output channels per program
    BLOCK_K: tl.constexpr,  # input channels per step of the reduction
    # Powers of two (common.known_multiple) that divide what starts a vector along a contiguous axis:
    ALIGN_C: tl.constexpr,  # channels_last: C, F and the pixel strides sxn, sxh, sxw, syn, syh, syw
    ALIGN_P: tl.constexpr,  # NCHW: ROWS and the image and channel strides sxn, sxc, syn, syc (the plane)
):
    """y = activation(x @ w + bias) per pixel. Grid: (BATCH * cdiv(ROWS, BLOCK_M) * cdiv(F, BLOCK_N),).

    The N-tiles of one M-tile are neighbouring programs, so the input tile they all read comes from
    memory once and from L2 after that (the weights are small and stay in L2).
    """
    # Vector loads and stores: channels_last rows of, say, 24 channels start 16-byte aligned and their
    # channel masks hold over 8 neighbours; NCHW planes of, say, 14x14 = 196 pixels start 8-byte aligned.
    C, F = known_multiple(C, ALIGN_C), known_multiple(F, ALIGN_C)
    sxh, sxw = known_multiple(sxh, ALIGN_C), known_multiple(sxw, ALIGN_C)
    syh, syw = known_multiple(syh, ALIGN_C), known_multiple(syw, ALIGN_C)
    sxn = known_multiple(known_multiple(sxn, ALIGN_C), ALIGN_P)
    syn = known_multiple(known_multiple(syn, ALIGN_C), ALIGN_P)
    ROWS = known_multiple(ROWS, ALIGN_P)
    sxc, syc = known_multiple(sxc, ALIGN_P), known_multiple(syc, ALIGN_P)
    pid = tl.program_id(0)
    num_n = tl.cdiv(F, BLOCK_N)
    num_m = tl.cdiv(ROWS, BLOCK_M)
    pid_n = pid % num_n
    pid_m = pid // num_n % num_m
    run = pid // num_n // num_m

    # Pixel indices are int32 (the launcher keeps BATCH * ROWS below 2^31): int64 division is a branchy
    # subroutine that costs about 100 registers on sm_90. Offsets are int64.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < ROWS
    if FLAT_INPUT:
        x_rows = x_ptr + run.to(tl.int64) * sxn + offs_m.to(tl.int64) * sxw
    else:
        # Pixel q of the whole output (all runs) is (n, oh, ow); it reads input pixel (oh*sh, ow*sw).
        q = run * ROWS + offs_m
        n_img = q // (OH * OW)
        pix = q % (OH * OW)
        x_rows = x_ptr + n_img.to(tl.int64) * sxn + ((pix // OW) * stride_h).to(tl.int64) * sxh \
            + ((pix % OW) * stride_w).to(tl.int64) * sxw

    offs_f = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    f_valid = offs_f < F
    w_cols = w_ptr + offs_f.to(tl.int64) * swf

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_K):
        offs_c = c0 + tl.arange(0, BLOCK_K)
        c_valid = offs_c < C
        a = tl.load(x_rows[:, None] + offs_c.to(tl.int64)[None, :] * sxc,
                    mask=m_valid[:, None] & c_valid[None, :], other=0.0)
        b = tl.load(w_cols[None, :] + offs_c.to(tl.int64)[:, None] * swc,
                    mask=c_valid[:, None] & f_valid[None, :], other=0.0)
        acc = dot(a, b, acc, DOT_PRECISION, UPCAST)

    y_offs = (run.to(tl.int64) * syn + offs_m.to(tl.int64) * syw)[:, None] + offs_f.to(tl.int64)[None, :] * syc
    store_epilogue(acc, bias_ptr, sb, offs_f[None, :], f_valid[None, :], y_ptr + y_offs, z_ptr + y_offs,
                   m_valid[:, None] & f_valid[None, :], HAS_BIAS, ACTIVATION, STORE_PRE)


@triton.jit
def pointwise_weight_grad_kernel(
    x_ptr, dy_ptr, dw_ptr,
    C, F,
    RUNS, ROWS,  # the pixels: RUNS runs of ROWS evenly spaced pixels (one run over every pixel, or one per image)
    # Element strides: from run to run, from pixel to pixel within a run, from channel to channel.
    sxr, sxp, sxc,
    syr, syp, syc,
    SPLIT_K: tl.constexpr,    # programs that share one dw tile's reduction
    WORKSPACE: tl.constexpr,  # each split stores its partial sums in its own dw, which common.split_sum_kernel
                              # adds in a fixed order (reproducible), rather than adding them with atomics
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,  # output channels per program
    BLOCK_N: tl.constexpr,  # input channels per program
    BLOCK_K: tl.constexpr,  # pixels of one run per step of the reduction
):
    """Weight gradient of a 1x1 convolution, a plain GEMM over pixels: [F, pixels] x [pixels, C].

        dw[f, c] = sum over pixels q of dy[q, f] * x[q, c]

    where x holds the input pixels the stride samples (the launcher passes that view). The reduction
    walks each run in BLOCK_K-pixel steps that never cross into the next run, so a step's pixels are
    one contiguous range of r: offsets run*s_run + r*s_pixel, no division and no im2col arithmetic
    (a run's last step is ragged). SPLIT_K programs each reduce a slice of the steps: with atomics they
    add into the float32 dw (zero-filled by the caller), with WORKSPACE each stores its own; with
    SPLIT_K == 1 dw is stored directly. dw is a contiguous float32 (F, C). Grid: (tiles * SPLIT_K,).
    """
    pid = tl.program_id(0)
    split = pid % SPLIT_K
    tile = pid // SPLIT_K
    num_n = tl.cdiv(C, BLOCK_N)
    offs_f = (tile // num_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    f_valid = offs_f < F
    offs_c = (tile % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    c_valid = offs_c < C

    steps_per_run = tl.cdiv(ROWS, BLOCK_K)
    steps = RUNS * steps_per_run
    steps_per_split = tl.cdiv(steps, SPLIT_K)
    s_begin = split * steps_per_split
    # The first step's run and first pixel; later steps advance them with scalar increments.
    run = (s_begin // steps_per_run).to(tl.int64)
    r0 = s_begin % steps_per_run * BLOCK_K
    dy_tile = dy_ptr + offs_f.to(tl.int64)[:, None] * syc
    x_tile = x_ptr + offs_c.to(tl.int64)[None, :] * sxc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(s_begin, min(s_begin + steps_per_split, steps)):
        # r0 is a multiple of BLOCK_K, which the compiler cannot see through the loop: said here, so that
        # a contiguous pixel axis (NCHW) loads as vectors.
        r = tl.multiple_of(r0, BLOCK_K) + tl.arange(0, BLOCK_K)
        r_valid = r < ROWS
        a = tl.load(dy_tile + run * syr + r.to(tl.int64)[None, :] * syp, mask=f_valid[:, None] & r_valid[None, :],
                    other=0.0)
        b = tl.load(x_tile + run * sxr + r.to(tl.int64)[:, None] * sxp, mask=r_valid[:, None] & c_valid[None, :],
                    other=0.0)
        acc = dot(a, b, acc, DOT_PRECISION, UPCAST)
        r0 += BLOCK_K
        next_run = r0 >= ROWS
        run += next_run.to(tl.int64)
        r0 = tl.where(next_run, 0, r0)

    dw_offs = offs_f[:, None] * C + offs_c[None, :]
    mask = f_valid[:, None] & c_valid[None, :]
    if SPLIT_K == 1:
        tl.store(dw_ptr + dw_offs, acc, mask=mask)
    elif WORKSPACE:
        tl.store(dw_ptr + split.to(tl.int64) * F * C + dw_offs, acc, mask=mask)
    else:
        # Relaxed: the sum is read only after the kernel ends (acq_rel would fence every atomic).
        tl.atomic_add(dw_ptr + dw_offs, acc, mask=mask, sem="relaxed")
