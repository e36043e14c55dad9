"""Direct depthwise convolution kernels: forward, input gradient and weight gradient.

Depthwise convolution filters every input channel on its own, with a channel multiplier MULT: output
channel f reads input channel f // MULT only.

    y[n, f, oh, ow] = sum_{kh, kw} x[n, f // MULT, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] * w[f, 0, kh, kw]

There is no reduction over channels, so a matrix product has nothing to multiply: feeding `tl.dot` would
mean padding each channel's reduction up to 16 and doing 16x the work. These kernels compute directly in
float32 registers, one fused multiply-add per tap and output element.

Every kernel works on a 3-D tile of BLOCK_H x BLOCK_W pixels by BLOCK_C channels, and the layout lives only
in the strides, so the configuration chooses the tile's shape per layout:
- channels_last: channels are contiguous, so a wide BLOCK_C vectorises the loads over channels and a few
  pixels per program keep the tile a few thousand elements;
- NCHW: a row is contiguous, so BLOCK_C is small and the tile covers a patch of the spatial plane. The
  patches that the taps read overlap (the input halo); the overlap is re-read from cache, not memory.

Taps that read only padding for every output (large dilations, large kernels on small maps) are cut on the
host by the live tap range [kh_start, kh_end) x [kw_start, kw_end), as in kernels/conv.py.

All offsets are int64, so tensors over 2^31 elements index correctly.
"""

import triton
import triton.language as tl

from tritonconv.kernels.activations import store_epilogue
from tritonconv.kernels.common import plane_tile, sample_channel_blocks


@triton.jit
def inside(i, size):
    """0 <= i < size for a row or column i, as one 32-bit unsigned comparison (a negative i wraps past size;
    coordinates fit in int32 even where they are int64): for padding masks."""
    return i.to(tl.int32).to(tl.uint32, bitcast=True) < size


@triton.jit
def widen(v, BF16_BITS: tl.constexpr):
    """v in float32. BF16_BITS (bfloat16 on a GPU): a bfloat16 is the top half of its float32, so each
    32-bit register of two values widens in one instruction per value (a shift, a mask), where the
    compiler extracts the high value first (two); the interpreter cannot run inline PTX."""
    if BF16_BITS:
        return tl.inline_asm_elementwise("{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000; }", "=r,=r,r", [v],
                                         dtype=tl.float32, is_pure=True, pack=2)
    else:
        return v.to(tl.float32)


@triton.jit
def depthwise_tap(acc, x_base, x_valid, ih0, iw0, w_base, w_valid, H, W, sxh, sxw, swh, sww, dil_h, dil_w, kh, kw):
    """acc + x[ih0 + kh*dh, iw0 + kw*dw] * w[kh, kw] in float32: one tap of `depthwise_taps`."""
    ih = ih0 + kh * dil_h
    iw = iw0 + kw * dil_w
    ok = x_valid & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    # Moving one tap moves every pointer by the same amount: a scalar int64 added to x_base.
    step = tl.cast(kh * dil_h, tl.int64) * sxh + tl.cast(kw * dil_w, tl.int64) * sxw
    xv = tl.load(x_base + step, mask=ok, other=0.0)
    wv = tl.load(w_base + kh * swh + kw * sww, mask=w_valid, other=0.0)
    return acc + xv.to(tl.float32) * wv.to(tl.float32)


@triton.jit
def depthwise_taps(acc, x_base, x_valid, ih0, iw0, w_base, w_valid, H, W, sxh, sxw, swh, sww, dil_h, dil_w,
                   kh_start, kh_end, kw_start, kw_end, TAPS_H: tl.constexpr, TAPS_W: tl.constexpr):
    """acc + sum over the live taps of x[ih0 + kh*dh, iw0 + kw*dw] * w[kh, kw], in float32.

    Shape-agnostic, so the depthwise kernel (3-D pixel x channel tiles) and the fused separable kernel
    (2-D pixel-row x channel tiles) share it: every argument broadcasts against `acc`.
      x_base: pointers to x at (ih0, iw0), image and channel already included (the pointer may lie
              outside x: it is only dereferenced where the tap's pixel is inside the input);
      x_valid: where the pixel/channel exists at all (e.g. channel < C);
      ih0, iw0: input row/column of tap (0, 0), used only in comparisons (int32 is enough);
      w_base, w_valid: pointers to w[f, 0, 0, 0] and their mask; with the tap-major weights the launchers
              pass (swh = KW * F, sww = F), one tap's weights for a channel block are one vector load.
    TAPS_H, TAPS_W: the live tap counts kh_end - kh_start and kw_end - kw_start when the launcher knows
    them to be small, that axis then fully unrolled (the loads of different taps are independent, so the
    compiler issues them ahead of the multiply-adds); 0 for a runtime loop (large kernels; also rows of a
    kernel whose unrolled taps would hold too many loads in flight). TAPS_H > 0 needs TAPS_W > 0.
    Positions outside the H x W input read as zero (the padding).
    """
    if TAPS_H > 0:
        for i in tl.static_range(TAPS_H):
            acc = depthwise_row(acc, x_base, x_valid, ih0, iw0, w_base, w_valid, H, W, sxh, sxw, swh, sww,
                                dil_h, dil_w, kh_start + i, kw_start, kw_end, TAPS_W)
    else:
        for kh in range(kh_start, kh_end):
            acc = depthwise_row(acc, x_base, x_valid, ih0, iw0, w_base, w_valid, H, W, sxh, sxw, swh, sww,
                                dil_h, dil_w, kh, kw_start, kw_end, TAPS_W)
    return acc


@triton.jit
def depthwise_row(acc, x_base, x_valid, ih0, iw0, w_base, w_valid, H, W, sxh, sxw, swh, sww, dil_h, dil_w,
                  kh, kw_start, kw_end, TAPS_W: tl.constexpr):
    """The taps kw_start <= kw < kw_end of kernel row kh (`depthwise_taps`), unrolled when TAPS_W > 0."""
    if TAPS_W > 0:
        for j in tl.static_range(TAPS_W):
            acc = depthwise_tap(acc, x_base, x_valid, ih0, iw0, w_base, w_valid, H, W, sxh, sxw, swh, sww,
                                dil_h, dil_w, kh, kw_start + j)
    else:
        for kw in range(kw_start, kw_end):
            acc = depthwise_tap(acc, x_base, x_valid, ih0, iw0, w_base, w_valid, H, W, sxh, sxw, swh, sww,
                                dil_h, dil_w, kh, kw)
    return acc


@triton.jit
def window_columns(iw, W, COLUMNS: tl.constexpr):
    """Whether each of the COLUMNS input columns iw, iw + 1, ... of a sliding window lies inside the input
    (0 <= iw + q < W as one unsigned comparison: a negative column wraps past W)."""
    col_ok = ()
    for q in tl.static_range(COLUMNS):
        col_ok = col_ok + (inside(iw + q, W),)
    return col_ok


@triton.jit
def window_load(x_row, row_ok, col_ok, sxw, COLUMNS: tl.constexpr, BF16_BITS: tl.constexpr):
    """The COLUMNS input columns x_row[q], q < COLUMNS, of one input row of a sliding window, each loaded
    and converted to float32 once (zero where row_ok & col_ok[q] is false: the padding)."""
    xs = ()
    for q in tl.static_range(COLUMNS):
        xs = xs + (widen(tl.load(x_row + q * sxw, mask=row_ok & col_ok[q], other=0.0), BF16_BITS),)
    return xs


@triton.jit
def depthwise_window_row(accs, xs, w_row, like, sww, stride_w: tl.constexpr, dil_w: tl.constexpr,
                         TAPS_W: tl.constexpr, OUT_W: tl.constexpr, OUT_H: tl.constexpr, ROW: tl.constexpr, taps):
    """accs[ROW * OUT_W + p] + sum_{j < min(TAPS_W, taps)} xs[p*sw + j*dw] * w_row[j] for each of a thread's
    OUT_W neighbouring outputs p along output row ROW (of OUT_H; the other accumulators pass through):
    TAPS_W taps of one kernel row of `depthwise_forward_kernel`'s sliding window, on one input row's
    window columns xs (`window_load`), so each input column serves every (output, tap) pair that reads it
    and one tap's weights (one vector load, through pointers broadcast to `like`, the input tile, so that
    they arrive in its layout; unmasked, as the launcher packs weights for whole channel blocks) serve all
    OUT_W outputs. `taps`: TAPS_W itself (the test then compiles
    away), or the taps left in a kernel row taken in chunks of TAPS_W at runtime, where the last chunk
    skips the taps past the row's end (a branch: a zero weight would still turn an infinite input into
    NaN)."""
    for j in tl.static_range(TAPS_W):
        if j < taps:
            w_ptrs, _ = tl.broadcast(w_row + j * sww, like)
            wv = tl.load(w_ptrs).to(tl.float32)
            stepped = ()
            for q in tl.static_range(OUT_H * OUT_W):
                if q // OUT_W == ROW:
                    stepped = stepped + (accs[q] + xs[q % OUT_W * stride_w + j * dil_w] * wv,)
                else:
                    stepped = stepped + (accs[q],)
            accs = stepped
    return accs


@triton.jit
def depthwise_forward_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    z_ptr,  # pre-activation output (strides of y), written only when STORE_PRE
    # Sizes: input (N, C, H, W), weight (F, 1, KH, KW) with F = C * MULT, output (N, F, OH, OW); the
    # batch size is implied by the grid.
    H, W, OH, OW, F, MULT,
    # Geometry. kh/kw ranges are the live taps (see module docstring).
    # (Strides and dilations are constexpr: they place the sliding window's taps, see OUT_W and OUT_H.)
    stride_h: tl.constexpr, stride_w: tl.constexpr, pad_h, pad_w, dil_h: tl.constexpr, dil_w: tl.constexpr,
    kh_start, kh_end, kw_start, kw_end,
    # Element strides of x and y in (N, C, H, W) order (any memory format); of w in (F, KH, KW) (the
    # launcher passes tap-major weights for whole channel blocks: 1, KW * F', F' with F' a multiple of BLOCK_C).
    # x's column stride and the weights' tap strides are constexpr (a compile per channel count, which the
    # layers of a network share): each input row's window columns and each tap's weights then load through
    # one pointer with constant offsets, instead of a 64-bit address computed per load.
    sxn, sxc, sxh, sxw: tl.constexpr,
    swf, swh: tl.constexpr, sww: tl.constexpr,
    syn, syc, syh, syw,
    sb,     # element stride of bias
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,  # "none", "relu", "relu6", "silu" or "gelu" (kernels/activations.py)
    STORE_PRE: tl.constexpr,   # also store z = conv + bias, the activation's input, for its backward
    BLOCK_H: tl.constexpr,     # groups of OUT_H output rows per program
    BLOCK_W: tl.constexpr,     # groups of OUT_W output columns per program
    BLOCK_C: tl.constexpr,     # output channels per program
    TAPS_H: tl.constexpr,      # live tap counts, unrolled, or 0 for runtime loops (`depthwise_taps`)
    TAPS_W: tl.constexpr,
    OUT_W: tl.constexpr,       # neighbouring output columns per thread (and taps per chunk of a runtime row)
    OUT_H: tl.constexpr,       # neighbouring output rows per thread, > 1 only with TAPS_H > 0 and OUT_W > 1
    BF16_BITS: tl.constexpr,   # widen bfloat16 inputs by bit operations (`widen`): bfloat16 on a GPU
    GRID_NC: tl.constexpr,     # the grid is (tiles, channel blocks, samples), else one flat axis (below)
):
    """y = activation(depthwise_conv(x, w) + bias), computed directly in float32.

    With OUT_W > 1, each thread computes OUT_W neighbouring outputs of a row, as OUT_W accumulator tiles
    (a tuple), and reads each input row once for all of them (`depthwise_window_row`): a KW-tap row costs
    (OUT_W - 1) * sw + (KW - 1) * dw + 1 loads and conversions per thread instead of OUT_W * KW. Rows too
    wide to unroll (TAPS_W == 0) slide the window over chunks of OUT_W taps. With OUT_H > 1 as well, each
    thread computes OUT_H x OUT_W outputs and each input row's window serves every output row whose taps
    reach it: (OUT_H - 1) * sh + (KH - 1) * dh + 1 row windows instead of OUT_H * KH.

    Grid (GRID_NC): (cdiv(OH, BLOCK_H * OUT_H) * cdiv(OW, BLOCK_W * OUT_W), cdiv(F, BLOCK_C), N), each
    program's sample and channel block read off its ids (the divisions that split a flat id are about 30
    instructions of a program's ~2500). The launcher falls back to one flat axis of their product,
    samples slowest, where N or the channel blocks exceed the 65535 limit of grid axes 1 and 2. Either way
    neighbouring programs take neighbouring spatial tiles of one channel block, so the halo they share is
    still in cache.
    """
    if GRID_NC:
        tile = tl.program_id(0)
        pid_f = tl.program_id(1)
        n = tl.program_id(2).to(tl.int64)
    else:
        n, pid_f, tile = sample_channel_blocks(tl.program_id(0), tl.cdiv(F, BLOCK_C),
                                               tl.cdiv(OH, BLOCK_H * OUT_H) * tl.cdiv(OW, BLOCK_W * OUT_W))
    oh, ow = plane_tile(tile, tl.cdiv(OH, OUT_H), tl.cdiv(OW, OUT_W), BLOCK_H, BLOCK_W)
    oh = oh * OUT_H  # each thread's first output row and column
    ow = ow * OUT_W
    f = pid_f * BLOCK_C + tl.arange(0, BLOCK_C)[None, None, :]
    f_valid = f < F

    # Output pixel (oh, ow) of channel f reads input channel f // MULT from row oh*sh - ph + kh*dh.
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_chan = x_ptr + n * sxn + (f // MULT).to(tl.int64) * sxc
    w_chan = w_ptr + f.to(tl.int64) * swf
    if OUT_W == 1:
        acc = tl.zeros((BLOCK_H, BLOCK_W, BLOCK_C), dtype=tl.float32)
        accs = (depthwise_taps(acc, x_chan + ih0 * sxh + iw0 * sxw, f_valid, ih0, iw0, w_chan, f_valid, H, W, sxh,
                               sxw, swh, sww, dil_h, dil_w, kh_start, kh_end, kw_start, kw_end, TAPS_H, TAPS_W),)
    else:
        # The window's input columns start at the first live tap's.
        iw_first = iw0 + kw_start * dil_w
        iw_cols = iw_first.to(tl.int32)  # compared with W only: int32 comparisons are half the instructions
        accs = ()
        for q in tl.static_range(OUT_H * OUT_W):
            accs = accs + (tl.zeros((BLOCK_H, BLOCK_W, BLOCK_C), dtype=tl.float32),)
        x_first = x_chan + ih0 * sxh + iw_first * sxw
        w_first = w_chan + kw_start * sww
        if TAPS_W > 0:
            # Whether each window column exists is the same for every kernel row.
            col_ok = window_columns(iw_cols, W, (OUT_W - 1) * stride_w + (TAPS_W - 1) * dil_w + 1)
            if TAPS_H > 0:
                # Input row r (from the first live tap's) is tap row i = (r - ph*sh) / dh of output row ph.
                for r in tl.static_range((OUT_H - 1) * stride_h + (TAPS_H - 1) * dil_h + 1):
                    ih = ih0 + kh_start * dil_h + r
                    x_row = x_first + tl.cast(kh_start * dil_h + r, tl.int64) * sxh
                    xs = window_load(x_row, f_valid & inside(ih, H), col_ok, sxw,
                                     (OUT_W - 1) * stride_w + (TAPS_W - 1) * dil_w + 1, BF16_BITS)
                    for ph in tl.static_range(OUT_H):
                        if r >= ph * stride_h:
                            if (r - ph * stride_h) % dil_h == 0:
                                if (r - ph * stride_h) // dil_h < TAPS_H:
                                    accs = depthwise_window_row(
                                        accs, xs, w_first + (kh_start + (r - ph * stride_h) // dil_h) * swh, x_row,
                                        sww, stride_w, dil_w, TAPS_W, OUT_W, OUT_H, ph, TAPS_W)
            else:
                for kh in range(kh_start, kh_end):
                    ih = ih0 + kh * dil_h
                    x_row = x_first + tl.cast(kh * dil_h, tl.int64) * sxh
                    xs = window_load(x_row, f_valid & inside(ih, H), col_ok, sxw,
                                     (OUT_W - 1) * stride_w + (TAPS_W - 1) * dil_w + 1, BF16_BITS)
                    accs = depthwise_window_row(accs, xs, w_first + kh * swh, x_row, sww, stride_w, dil_w,
                                                TAPS_W, OUT_W, OUT_H, 0, TAPS_W)
        else:
            # Rows too wide to unroll (large kernels): each kernel row's taps in runtime chunks of OUT_W, a
            # window of (OUT_W - 1) * sw + (OUT_W - 1) * dw + 1 columns per chunk.
            for kh in range(kh_start, kh_end):
                ih = ih0 + kh * dil_h
                row_ok = f_valid & inside(ih, H)
                for t in range(0, kw_end - kw_start, OUT_W):
                    col_ok = window_columns(iw_cols + t * dil_w, W, (OUT_W - 1) * (stride_w + dil_w) + 1)
                    x_row = x_first + tl.cast(kh * dil_h, tl.int64) * sxh + tl.cast(t * dil_w, tl.int64) * sxw
                    xs = window_load(x_row, row_ok, col_ok, sxw, (OUT_W - 1) * (stride_w + dil_w) + 1, BF16_BITS)
                    accs = depthwise_window_row(accs, xs, w_first + kh * swh + t * sww, x_row, sww, stride_w,
                                                dil_w, OUT_W, OUT_W, OUT_H, 0, kw_end - kw_start - t)

    if HAS_BIAS:
        # Loaded and widened once for all of a thread's outputs (store_epilogue, given HAS_BIAS, would load it
        # again for each of them).
        bias = tl.load(bias_ptr + f * sb, mask=f_valid, other=0.0).to(tl.float32)
    for q in tl.static_range(OUT_H * OUT_W):
        # Accumulator q is output (oh + q // OUT_W, ow + q % OUT_W).
        y_offs = n * syn + f.to(tl.int64) * syc + (oh + q // OUT_W) * syh + (ow + q % OUT_W) * syw
        store_epilogue(accs[q] + bias if HAS_BIAS else accs[q], bias_ptr, sb, f, f_valid, y_ptr + y_offs,
                       z_ptr + y_offs, (oh + q // OUT_W < OH) & (ow + q % OUT_W < OW) & f_valid, False, ACTIVATION,
                       STORE_PRE)


@triton.jit
def input_grad_tap(acc, dy_chan, w_chan, c_valid, oh, row_ok, j, rw, OW, syh, syw, swh, sww,
                   stride_w: tl.constexpr, pad_w: tl.constexpr, dil_w: tl.constexpr, kh, kw):
    """acc + dy[oh, ow] * w[kh, kw] for the columns rw + stride_w * j of one stride phase, where tap kw
    reaches them (`depthwise_input_grad_kernel`); a tap that reaches no column of the phase is skipped."""
    tw = rw + pad_w - kw * dil_w
    # Constexpr for unrolled taps (the test then costs nothing), a uniform scalar branch in a runtime loop.
    if tw % stride_w == 0:
        ow = j + tw // stride_w
        ok = row_ok & (ow >= 0) & (ow < OW)
        g = tl.load(dy_chan + oh * syh + ow * syw, mask=ok, other=0.0)
        wv = tl.load(w_chan + kh * swh + kw * sww, mask=c_valid, other=0.0)
        # Not g * w where the tap misses: 0 * w is NaN for a non-finite weight (torch adds nothing).
        acc += tl.where(ok, g.to(tl.float32) * wv.to(tl.float32), 0.0)
    return acc


@triton.jit
def input_grad_row(acc, dy_chan, w_chan, c_valid, i, j, rh, rw, OH, OW, syh, syw, swh, sww,
                   stride_h: tl.constexpr, stride_w: tl.constexpr, pad_h: tl.constexpr, pad_w: tl.constexpr,
                   dil_h: tl.constexpr, dil_w: tl.constexpr, kh, kw_start: tl.constexpr, kw_end,
                   TAPS_W: tl.constexpr):
    """The taps (kh, kw_start <= kw < kw_end) of one stride phase (rh, rw) of the input gradient, unrolled
    when TAPS_W > 0; kernel row kh reaches the phase's rows only when rh + ph - kh*dh is a multiple of sh."""
    th = rh + pad_h - kh * dil_h
    if th % stride_h == 0:
        oh = i + th // stride_h
        row_ok = c_valid & (oh >= 0) & (oh < OH)
        if TAPS_W > 0:
            for t in tl.static_range(TAPS_W):
                acc = input_grad_tap(acc, dy_chan, w_chan, c_valid, oh, row_ok, j, rw, OW, syh, syw, swh, sww,
                                     stride_w, pad_w, dil_w, kh, kw_start + t)
        else:
            for kw in range(kw_start, kw_end):
                acc = input_grad_tap(acc, dy_chan, w_chan, c_valid, oh, row_ok, j, rw, OW, syh, syw, swh, sww,
                                     stride_w, pad_w, dil_w, kh, kw)
    return acc


@triton.jit
def depthwise_input_grad_kernel(
    dy_ptr, w_ptr, dx_ptr,
    # Sizes: input (N, C, H, W), weight (C * MULT, 1, KH, KW), output (N, C * MULT, OH, OW); the batch
    # size is implied by the grid.
    H, W, OH, OW, C, MULT,
    kh_end, kw_end,  # ends of the live tap ranges (see kh_start below), used only by runtime tap loops
    # Element strides of dy and dx in (N, C, H, W) order; of w in (F, KH, KW) (the launcher passes
    # tap-major weights: 1, KW * F, F).
    syn, syc, syh, syw,
    swf, swh, sww,
    sxn, sxc, sxh, sxw,
    # The geometry is constexpr, so which taps reach a stride phase is decided when compiling (layers
    # repeat few geometries); the live taps start at kh_start, kw_start.
    stride_h: tl.constexpr, stride_w: tl.constexpr, pad_h: tl.constexpr, pad_w: tl.constexpr,
    dil_h: tl.constexpr, dil_w: tl.constexpr, kh_start: tl.constexpr, kw_start: tl.constexpr,
    BLOCK_H: tl.constexpr,  # rows per program of each stride phase
    BLOCK_W: tl.constexpr,  # columns per program of each stride phase
    BLOCK_C: tl.constexpr,  # input channels per program
    TAPS_H: tl.constexpr,   # live tap counts, unrolled, or 0 for runtime loops (as the forward's)
    TAPS_W: tl.constexpr,
):
    """Input gradient, gathered per input pixel (no atomics), one stride phase at a time:

        dx[n, c, ih, iw] = sum_{j < MULT} sum_{kh, kw} dy[n, c*MULT + j, oh, ow] * w[c*MULT + j, 0, kh, kw]
        where oh = (ih + ph - kh*dh) / sh exactly (likewise ow), and 0 <= oh < OH.

    Input row ih = rh + sh * i is in stride phase rh < sh; tap kh reaches it when t = rh + ph - kh*dh is a
    multiple of sh, from output row oh = i + t / sh, whatever i is. So each program takes the tile
    (i, j) of the cdiv(H, sh) x cdiv(W, sw) phase grid and, for every phase (rh, rw) in turn, gathers only
    the taps that reach that phase: no masked-away taps, no division by the stride per element (with
    stride s, a gather over every tap would mask 1 - 1/s^2 of them). Grid: as the forward kernel's, over
    phase-grid pixels and input channels.
    """
    rows = tl.cdiv(H, stride_h)
    cols = tl.cdiv(W, stride_w)
    n, pid_c, tile = sample_channel_blocks(tl.program_id(0), tl.cdiv(C, BLOCK_C),
                                           tl.cdiv(rows, BLOCK_H) * tl.cdiv(cols, BLOCK_W))
    i, j = plane_tile(tile, rows, cols, BLOCK_H, BLOCK_W)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)[None, None, :]
    c_valid = c < C

    for rh in tl.static_range(stride_h):
        for rw in tl.static_range(stride_w):
            acc = tl.zeros((BLOCK_H, BLOCK_W, BLOCK_C), dtype=tl.float32)
            for m in range(MULT):
                # Output channel f = c*MULT + m is the m-th filter applied to input channel c.
                f = (c * MULT + m).to(tl.int64)
                dy_chan = dy_ptr + n * syn + f * syc
                w_chan = w_ptr + f * swf
                if TAPS_H > 0:
                    for t in tl.static_range(TAPS_H):
                        acc = input_grad_row(acc, dy_chan, w_chan, c_valid, i, j, rh, rw, OH, OW, syh, syw, swh,
                                             sww, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh_start + t,
                                             kw_start, kw_end, TAPS_W)
                else:
                    for kh in range(kh_start, kh_end):
                        acc = input_grad_row(acc, dy_chan, w_chan, c_valid, i, j, rh, rw, OH, OW, syh, syw, swh,
                                             sww, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh,
                                             kw_start, kw_end, TAPS_W)
            ih = rh + stride_h * i
            iw = rw + stride_w * j
            dx_offs = n * sxn + c.to(tl.int64) * sxc + ih * sxh + iw * sxw
            tl.store(dx_ptr + dx_offs, acc.to(dx_ptr.dtype.element_ty), mask=(ih < H) & (iw < W) & c_valid)


@triton.jit
def weight_grad_row(accs, xs, gs, outs_ok, stride_w: tl.constexpr, dil_w: tl.constexpr, ROW: tl.constexpr,
                    TAPS_W: tl.constexpr, OUT_W: tl.constexpr, TAPS: tl.constexpr, EVEN_W: tl.constexpr):
    """accs[ROW * TAPS_W + j] + sum_{p < OUT_W} xs[p*sw + j*dw] * gs[p] for each tap j of kernel row ROW of
    `depthwise_weight_grad_kernel`'s tap group (the other accumulators pass through): one input row's window
    columns xs serve every (output, tap) pair that reads them. Without EVEN_W a thread's last outputs may lie
    past the output's edge: their products are dropped (their dy is zero, but an infinite input pixel that
    only they read would make 0 * inf = NaN), by outs_ok[p]."""
    stepped = ()
    for t in tl.static_range(TAPS):
        if t // TAPS_W == ROW:
            acc = accs[t]
            for p in tl.static_range(OUT_W):
                xv = xs[p * stride_w + t % TAPS_W * dil_w]
                if not EVEN_W and p > 0:
                    xv = tl.where(outs_ok[p], xv, 0.0)
                acc += xv * gs[p]
            stepped = stepped + (acc,)
        else:
            stepped = stepped + (accs[t],)
    return stepped


@triton.jit
def depthwise_weight_grad_kernel(
    x_ptr, dy_ptr,
    dw_ptr,  # contiguous float32: (F, KH * KW) zero-filled when ATOMIC, else (SPLIT_K * column tiles, F, KH * KW)
    # Sizes: input (N, C, H, W), weight (F, 1, KH, KW) with F = C * MULT, output (N, F, OH, OW).
    N, H, W, OH, OW, F, MULT, KH, KW,
    stride_h, pad_h, pad_w, dil_h,
    # Element strides of x and dy in (N, C, H, W) order.
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    # Column stride and dilation are constexpr: they place the sliding window's taps (see OUT_W).
    stride_w: tl.constexpr, dil_w: tl.constexpr,
    SPLIT_K: tl.constexpr,  # programs sharing one (tap group, channel block, column tile)'s reduction
    ATOMIC: tl.constexpr,   # add the partial sums with atomics, or store each in its own slice
    TAPS_H: tl.constexpr,   # kernel rows per tap group
    TAPS_W: tl.constexpr,   # kernel columns per tap group (the whole kernel for small kernels, else a chunk)
    OUT_W: tl.constexpr,    # neighbouring output columns per thread (the sliding window)
    EVEN_W: tl.constexpr,   # OUT_W divides OW: a thread's outputs all exist or none does
    BLOCK_H: tl.constexpr,  # output rows per reduction step, at most OH (one wrap per step, see below)
    BLOCK_W: tl.constexpr,  # groups of OUT_W output columns per program
    BLOCK_C: tl.constexpr,  # channels per program
    BF16_BITS: tl.constexpr,  # widen bfloat16 inputs by bit operations (`widen`): bfloat16 on a GPU
):
    """Weight gradient, a reduction over every output pixel of every image:

        dw[f, 0, kh, kw] = sum_{n, oh, ow} dy[n, f, oh, ow] * x[n, f // MULT, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]

    Each program owns a tap group (TAPS_H x TAPS_W taps from (kh0, kw0); the last groups may run past the
    kernel: their taps are computed on padding and never stored), a channel block and a column tile of
    BLOCK_W * OUT_W output columns, and walks a contiguous run of the N * OH output rows, BLOCK_H rows per
    step, keeping one float32 accumulator tile per tap. Each thread takes OUT_W neighbouring outputs of a
    row: it loads their dy once, and each input row of the group once as a window of
    (OUT_W - 1) * sw + (TAPS_W - 1) * dw + 1 columns that serves every (output, tap) pair reading it
    (`weight_grad_row`), so a step costs OUT_W + TAPS_H * window loads per thread for
    OUT_W * TAPS_H * TAPS_W multiply-adds. The columns are fixed for the whole run, so their masks and
    offsets are found once; rows move by carried offsets (no division in the loop).

    SPLIT_K programs share the rows. Their float32 partial sums, like those of the column tiles, are added
    with atomics (ATOMIC: in no fixed order), or each stored in its own slice of dw, split * column tiles +
    column tile, for the caller to add in a fixed order (bitwise reproducible, for
    torch.use_deterministic_algorithms; with one split and one column tile that slice is the result).
    Grid: (groups * cdiv(F, BLOCK_C) * column tiles * SPLIT_K,), the tap group varying fastest, so the
    groups of one run are neighbours and share its dy and x from L2.
    """
    pid = tl.program_id(0)
    groups_w = tl.cdiv(KW, TAPS_W)
    groups = tl.cdiv(KH, TAPS_H) * groups_w
    kh0 = pid % groups // groups_w * TAPS_H
    kw0 = pid % groups % groups_w * TAPS_W
    tiles_c = tl.cdiv(F, BLOCK_C)
    col_tiles = tl.cdiv(OW, BLOCK_W * OUT_W)
    f_vec = pid // groups % tiles_c * BLOCK_C + tl.arange(0, BLOCK_C)
    col_tile = pid // groups // tiles_c % col_tiles
    split = pid // groups // tiles_c // col_tiles
    f = f_vec[None, None, :]
    f_valid = f < F

    # The thread's columns: outputs ow + p (p < OUT_W), window columns iw + q from the group's first tap.
    ow = col_tile * (BLOCK_W * OUT_W) + tl.arange(0, BLOCK_W)[None, :, None] * OUT_W
    iw = ow * stride_w - pad_w + kw0 * dil_w
    lane_ok = f_valid & (ow < OW)
    WINDOW: tl.constexpr = (OUT_W - 1) * stride_w + (TAPS_W - 1) * dil_w + 1
    cols_ok = ()
    for q in tl.static_range(WINDOW):
        cols_ok = cols_ok + (lane_ok & inside(iw + q, W),)
    outs_ok = ()
    for p in tl.static_range(OUT_W):
        outs_ok = outs_ok + (lane_ok & (ow + p < OW),)
    x_cols = x_ptr + (f // MULT).to(tl.int64) * sxc + iw.to(tl.int64) * sxw
    dy_cols = dy_ptr + f.to(tl.int64) * syc + ow.to(tl.int64) * syw

    # The split's rows: row tiles [t_begin, t_end) of the flattened N * OH rows. Lane h of a step holds row
    # r = t * BLOCK_H + h of image n = r // OH, row oh = r % OH; divided once here, then carried: a step adds
    # BLOCK_H rows, and as BLOCK_H <= OH a row wraps into the next image at most once. The carried values
    # are 1-D indices, broadcast and multiplied by the strides in each step: the compiler knows nothing of
    # a loop-carried value, so a carried 3-D offset would lose the vector loads (constant along channels)
    # and a carried offset their alignment (a multiple of the strides).
    rows = N * OH
    tiles = tl.cdiv(rows, BLOCK_H)
    tiles_per_split = tl.cdiv(tiles, SPLIT_K)
    t_begin = split * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, tiles)
    r = t_begin * BLOCK_H + tl.arange(0, BLOCK_H)
    oh = r % OH
    n = (r // OH).to(tl.int64)
    ih = oh * stride_h - pad_h + kh0 * dil_h  # input row of the group's first tap row

    accs = ()
    for t in tl.static_range(TAPS_H * TAPS_W):
        accs = accs + (tl.zeros((BLOCK_H, BLOCK_W, BLOCK_C), dtype=tl.float32),)
    for _ in range(t_begin, t_end):
        row_ok = (r < rows)[:, None, None]
        dy_rows = dy_cols + (n * syn + oh.to(tl.int64) * syh)[:, None, None]
        gs = ()
        for p in tl.static_range(OUT_W):
            g = tl.load(dy_rows + p * syw, mask=row_ok & outs_ok[p], other=0.0)
            gs = gs + (widen(g, BF16_BITS),)
        x_rows = x_cols + (n * sxn + ih.to(tl.int64) * sxh)[:, None, None]
        for i in tl.static_range(TAPS_H):
            # x is read only under rows that exist: a lane past the last row may reach real input pixels no
            # output reads, and an inf there times its zero dy would be NaN.
            ok = row_ok & inside(ih + i * dil_h, H)[:, None, None]
            x_tap_row = x_rows + tl.cast(i * dil_h, tl.int64) * sxh
            xs = ()
            for q in tl.static_range(WINDOW):
                xs = xs + (widen(tl.load(x_tap_row + q * sxw, mask=ok & cols_ok[q], other=0.0), BF16_BITS),)
            accs = weight_grad_row(accs, xs, gs, outs_ok, stride_w, dil_w, i, TAPS_W, OUT_W, TAPS_H * TAPS_W,
                                   EVEN_W)
        r += BLOCK_H
        oh += BLOCK_H
        wrap = oh >= OH
        oh = tl.where(wrap, oh - OH, oh)
        ih = tl.where(wrap, ih + (BLOCK_H - OH) * stride_h, ih + BLOCK_H * stride_h)
        n += wrap.to(tl.int64)

    taps = KH * KW
    for t in tl.static_range(TAPS_H * TAPS_W):
        kh = kh0 + t // TAPS_W
        kw = kw0 + t % TAPS_W
        partial = tl.sum(tl.sum(accs[t], axis=0), axis=0)
        dw_offs = f_vec.to(tl.int64) * taps + kh * KW + kw
        ok = f_vec < tl.where((kh < KH) & (kw < KW), F, 0)  # no channel of a tap past the kernel
        if ATOMIC:
            # Relaxed: the sum is read only after the kernel ends (acq_rel would fence every atomic).
            tl.atomic_add(dw_ptr + dw_offs, partial, mask=ok, sem="relaxed")
        else:
            tl.store(dw_ptr + (split * col_tiles + col_tile).to(tl.int64) * F * taps + dw_offs, partial, mask=ok)
